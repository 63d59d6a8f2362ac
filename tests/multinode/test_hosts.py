"""Two namespaced hosts x two actors: topology, every sized op, a slow link, host failures.

Ranks 0 and 1 run on host 0, ranks 2 and 3 on host 1. In netns mode the hosts have their own
addresses and their own /dev/shm; in the fallback (local mode) they are Ray nodes on 127.0.0.x
sharing /dev/shm, and groups are forced to TCP.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import pytest
from mn_helpers import HERE, drive, needs_netns

from sideband.testbed import NETNS, Testbed

pytestmark = pytest.mark.multinode

# Sizes in elements: single, odd, small, ~1 MiB (odd) and ~10 MiB (pipelined paths).
SIZES = [1, 7, 1000, 262_147, 2_500_001]
_runs: dict[Any, dict[str, Any]] = {}


def _ops_run(bed: Testbed, hier: str | None) -> dict[str, Any]:
    """One driver per SIDEBAND_HIERARCHICAL setting, shared by the tests that read it."""
    if hier not in _runs:
        bed.ensure_healthy()
        _runs[hier] = drive(bed, "ops", hier=hier, sizes=SIZES)
    return _runs[hier]


def test_mode_is_reported(bed: Testbed) -> None:
    assert bed.mode in ("netns", "local")
    assert (bed.mode == NETNS) == (bed.fallback_reason is None)
    assert bed.mode in bed.describe()


def test_topology_two_hosts(bed: Testbed) -> None:
    where = sorted(_ops_run(bed, None)["where"], key=lambda w: w["rank"])
    nodes = [w["topology"]["members"][w["rank"]]["node_id"] for w in where]
    assert nodes[0] == nodes[1] != nodes[2] == nodes[3]
    for w in where:
        assert [m["rank"] for m in w["topology"]["members"]] == [0, 1, 2, 3]
        peers = {int(p): kind for p, kind in w["topology"]["peers"].items()}
        if bed.mode == NETNS:
            same = {0: 1, 1: 0, 2: 3, 3: 2}[w["rank"]]
            assert peers == {p: "shm" if p == same else "tcp" for p in range(4) if p != w["rank"]}
            if "hosts" in w["topology"]:
                assert sorted(map(sorted, w["topology"]["hosts"])) == [[0, 1], [2, 3]]
        else:
            assert set(peers.values()) == {"tcp"}
    if bed.mode == NETNS:
        shm = [w["shm"] for w in where]
        assert shm[0] == shm[1] != shm[2] == shm[3]  # a private /dev/shm per host


@pytest.mark.parametrize("hier", [None, "0", "1"], ids=["auto", "flat", "hierarchical"])
def test_ops_across_hosts(bed: Testbed, hier: str | None) -> None:
    out = _ops_run(bed, hier)
    for r in out["ops"]:
        assert r["bad"] == [], f"rank {r['rank']}: wrong results in {r['bad']}"
    assert len({r["digest"] for r in out["ops"]}) == 1, "ranks got different allreduce bytes"
    for w in out["where"]:
        assert w["hier_env"] == hier
        if w["hier"] is not None and bed.mode == NETNS:
            # Unset means automatic: 2 hosts x 2 ranks is where the host-aware plan pays.
            assert w["hier"] is (hier != "0"), w


@pytest.mark.parametrize("how", ["delay", "throttle"])
def test_slow_link_still_correct(healthy: Testbed, how: str) -> None:
    """Host 1's link delayed by 30 ms each way (tc netem, or the userspace wire where the kernel
    lacks netem), or limited to 20 Mbit/s (tc tbf)."""
    needs_netns(healthy)
    if how == "delay":
        healthy.delay(1, 30)
    else:
        healthy.throttle(1, 20)
    try:
        out = drive(healthy, "ops", hier=None, sizes=[7, 262_147])
    finally:
        healthy.clear_delay(1)
    for r in out["ops"]:
        assert r["bad"] == [], f"rank {r['rank']}: wrong results in {r['bad']}"
    assert len({r["digest"] for r in out["ops"]}) == 1
    if how == "delay":
        # Forming the group needs round trips over the delayed link: the delay was there.
        assert out["create_s"] > 0.06, (healthy.delay_method, out["create_s"])


def test_bench_multinode_smoke(healthy: Testbed) -> None:
    """`sideband bench multinode`'s driver on this test bed: every implementation, two sizes."""
    from sideband.bench import multinode

    res = multinode.measure(healthy, [8, 64 << 10], list(multinode.IMPLS), 3, 120)
    assert res["failures"] == []
    assert {(r["impl"], r["nbytes"]) for r in res["records"]} == {
        (i, n) for i in multinode.IMPLS for n in (8, 64 << 10)
    }
    for r in res["records"]:
        assert r["iters"] == 3 and 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
    rats = multinode.ratios(res["records"])
    assert {(x["impl"], x["baseline"]) for x in rats} == {
        ("hierarchical", "flat"),
        ("hierarchical", "torch_gloo"),
        ("flat", "torch_gloo"),
    }


def _cut_during_allreduce(bed: Testbed, how: str) -> list[dict[str, Any]]:
    """Cut host 1 while all four ranks loop on allreduce; the survivors' outcomes."""
    script = os.path.join(HERE, "mn_drivers.py")
    d = bed.start_driver(
        [sys.executable, script, "fault", json.dumps({"nbytes": 256 << 10, "max_s": 60})]
    )
    d.wait_event("looping", 120)
    cut_at = time.time()
    bed.cut(1, how)
    out = d.result(120)
    assert "early" not in out, f"a loop ended before the cut: {out}"
    for s in out["survivors"]:
        s["detect_s"] = s["t"] - cut_at
        print(f"cut by {how}: rank {s['rank']} raised {s['error']} after {s['detect_s']:.3f} s")
    return out["survivors"]


def test_host_crash_gives_peer_lost_within_5s(healthy: Testbed) -> None:
    """All of host 1's processes SIGKILLed: its sockets close, survivors learn it at once."""
    survivors = _cut_during_allreduce(healthy, "kill")
    assert len(survivors) == 2
    for s in survivors:
        assert s["peer_lost"], s
        assert s["iters"] > 0
        assert s["detect_s"] < 5.0, s


def test_partition_gives_peer_lost_within_5s(healthy: Testbed) -> None:
    """Host 1's veth deleted: no FIN, no RST; the link must be noticed as dead."""
    needs_netns(healthy)
    survivors = _cut_during_allreduce(healthy, "link")
    assert len(survivors) == 2
    for s in survivors:
        assert s["peer_lost"], s
        assert s["detect_s"] < 5.0, s
