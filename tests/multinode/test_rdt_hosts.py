"""Tensors by ref (``tensor_transport="sideband"``) between two test-bed hosts: the consumer
pulls over authenticated TCP, and a producer that dies mid-fetch gives a clear error in seconds.

The producer runs on host 1, the consumer and the driver on host 0. In netns mode the hosts have
their own /dev/shm (and addresses): the transport must see two hosts and pull; in local mode
they are one machine, so the consumers are told to pull (``SIDEBAND_RDT_SAME_HOST=0``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import pytest
from mn_helpers import HERE, needs_netns

from sideband.testbed import Testbed

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(400)]

MIB = 1 << 20
SIZES = [3, 1 << 16, 16 * MIB // 4]  # elements: inline, one block, 16 MiB


def _drive(bed: Testbed, scenario: str, **args: Any) -> Any:
    script = os.path.join(HERE, "rdt_drivers.py")
    return bed.start_driver([sys.executable, script, scenario, json.dumps(args)])


def test_pull_across_hosts_and_producer_killed_mid_fetch(healthy: Testbed) -> None:
    killing = healthy.mode == "netns"
    if killing:
        # 64 MiB at 40 Mbit/s streams for ~13 s: the kill lands in the middle of it.
        healthy.throttle(1, 40)
    try:
        out = _drive(healthy, "pull", sizes=SIZES, kill=64 * MIB if killing else 0).result(300)
    finally:
        if killing:
            healthy.clear_delay(1)
    prod, cons = out["where"]
    assert prod["ip"] == healthy.hosts[1].ip
    if killing:  # in local mode host 0's workers may report the machine's address
        assert cons["ip"] == healthy.hosts[0].ip
    assert out["totals"] == [2.0 * n for n in SIZES]
    assert out["mixed"]["e"] == [[5, 4], "torch.float32", 190.0]
    assert out["mixed"]["big"][2] == (1 << 18) * ((1 << 18) - 1) / 2
    assert out["mixed"]["note"] == "not a tensor"
    st = out["consumer"]
    # Everything above the inline limit came over the socket; nothing of host 1 was mapped.
    assert st["fetched"]["tcp"] == 3 and st["fetched"]["local"] == 0, st
    assert st["peer_mappings"] == 0
    if killing:
        k = out["killed"]
        print(f"producer actor killed mid-fetch: after {k['after_s']:.2f} s: {k['error'][-300:]}")
        assert k["error"] is not None, k
        assert "PeerLostError" in k["error"] or "ActorDiedError" in k["error"], k["error"]
        assert k["after_s"] < 10, k
        assert out["after"] == 3.0 * MIB


@pytest.mark.parametrize("how", ["kill", "link"])
def test_producer_host_lost_mid_fetch(healthy: Testbed, how: str) -> None:
    """Host 1 killed (its kernel resets the socket) or cut off (no FIN, no RST: the keepalive
    and TCP_USER_TIMEOUT of the link end the fetch, SIDEBAND_LINK_TIMEOUT_S, 3 s)."""
    needs_netns(healthy)
    healthy.throttle(1, 40)
    d = _drive(healthy, "host", nbytes=64 * MIB)
    try:
        d.wait_event("fetching", 180)
        cut_at = time.time()
        healthy.cut(1, how)
        out = d.result(120)
    finally:
        healthy.ensure_healthy()
    after = out["t"] - cut_at
    print(f"producer host lost ({how}) mid-fetch: after {after:.2f} s: {out['error'][-300:]}")
    assert out["error"] is not None, out
    assert "PeerLostError" in out["error"] or "ActorDiedError" in out["error"], out["error"]
    assert after < 10, out
    assert out["consumer_alive"]


def test_bench_rdt_across_hosts_smoke(healthy: Testbed) -> None:
    """`sideband bench rdt --hosts 2`'s driver on this test bed: records, never timing."""
    from sideband.bench import rdt

    records = rdt.measure(healthy, (8, 1 << 16), rdt.HOSTS_IMPLS, True)
    assert {(r["impl"], r["nbytes"]) for r in records} == {
        (i, n) for i in rdt.HOSTS_IMPLS for n in (8, 1 << 16)
    }
    for r in records:
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
