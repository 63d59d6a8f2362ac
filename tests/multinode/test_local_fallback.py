"""The fallback itself, on machines where netns mode is what test_hosts.py runs: Ray nodes on
127.0.0.1 and 127.0.0.2, groups forced to TCP, so the fallback cannot rot unnoticed."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from mn_helpers import drive

from sideband.testbed import LOCAL, Testbed, netns_unavailable

pytestmark = pytest.mark.multinode


@pytest.fixture(scope="module")
def local_bed() -> Iterator[Testbed]:
    if not sys.platform.startswith("linux"):
        pytest.skip("the multi-host test bed needs Linux (/proc, ray start)")
    if netns_unavailable() is not None:
        pytest.skip("netns mode is unavailable here, so test_hosts.py already ran in local mode")
    with Testbed(2, mode=LOCAL, quiet=True) as tb:
        yield tb
    assert not tb.leftovers()


def test_local_mode_forces_tcp_and_gives_correct_results(local_bed: Testbed) -> None:
    assert local_bed.mode == LOCAL and local_bed.backend == "tcp"
    assert "requested" in (local_bed.fallback_reason or "")
    assert [h.ip for h in local_bed.hosts] == ["127.0.0.1", "127.0.0.2"]
    out = drive(local_bed, "ops", hier=None, sizes=[7, 262_147])
    assert out["mode"] == LOCAL
    for r in out["ops"]:
        assert r["bad"] == [], f"rank {r['rank']}: wrong results in {r['bad']}"
    where = sorted(out["where"], key=lambda w: w["rank"])
    nodes = [w["topology"]["members"][w["rank"]]["node_id"] for w in where]
    assert nodes[0] == nodes[1] != nodes[2] == nodes[3]
    for w in where:
        assert set(w["topology"]["peers"].values()) == {"tcp"}


def test_link_faults_need_namespaces(local_bed: Testbed) -> None:
    from sideband.testbed import TestbedError

    with pytest.raises(TestbedError, match="netns mode"):
        local_bed.delay(1, 30)
    with pytest.raises(TestbedError, match="netns mode"):
        local_bed.cut(1, "link")
