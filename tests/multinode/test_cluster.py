"""Several Ray nodes on one machine (``ray.cluster_utils.Cluster``): gangs spread across nodes,
and groups whose ranks sit on different nodes of one host.

The driver runs in a subprocess with a Cluster of its own: the session's Ray stays untouched.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from sideband.testbed import run_process

pytestmark = pytest.mark.multinode


@pytest.fixture(scope="module")
def cluster_run() -> dict[str, Any]:
    if not sys.platform.startswith("linux"):
        pytest.skip("process cleanup of the Cluster driver reads /proc (Linux)")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster_drivers.py")
    # Loopback only, as in the rest of the suite; no test bed is involved.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["SIDEBAND_HOST"] = "127.0.0.1"
    result, left = run_process([sys.executable, script], env=env, timeout_s=150)
    assert not left, f"the Cluster driver left processes behind: {sorted(left)}"
    return result


def test_gang_strict_spread_places_one_member_per_node(cluster_run: dict[str, Any]) -> None:
    gang = cluster_run["gang"]
    assert len({m["node_id"] for m in gang}) == 2
    assert {m["node_id"] for m in gang} <= set(cluster_run["nodes"])
    assert sorted(m["node_rank"] for m in gang) == [0, 1]
    assert all(m["local_world_size"] == 1 for m in gang)
    assert len({m["master"] for m in gang}) == 1


def test_gang_strict_spread_beyond_the_nodes_is_refused(cluster_run: dict[str, Any]) -> None:
    assert "infeasible" in cluster_run["infeasible"]
    assert "3 distinct nodes" in cluster_run["infeasible"]


def test_tcp_group_across_nodes(cluster_run: dict[str, Any]) -> None:
    ranks = sorted(cluster_run["tcp"], key=lambda r: r["rank"])
    assert all(r["ok"] for r in ranks)
    members = ranks[0]["topology"]["members"]
    assert members[0]["node_id"] == members[1]["node_id"] != members[2]["node_id"]
    for r in ranks:
        assert set(r["topology"]["peers"].values()) == {"tcp"}


def test_nodes_of_one_machine_share_memory(cluster_run: dict[str, Any]) -> None:
    """Two Ray nodes on one machine are one host: shm between all ranks, whatever the node."""
    for r in cluster_run["auto"]:
        assert r["ok"]
        assert set(r["topology"]["peers"].values()) == {"shm"}
        if "hosts" in r["topology"]:
            assert sorted(map(sorted, r["topology"]["hosts"])) == [[0, 1, 2, 3]]
