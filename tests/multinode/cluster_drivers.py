"""Drivers that start their own ``ray.cluster_utils.Cluster`` (several Ray nodes, one machine,
no namespaces): ``python cluster_drivers.py SCENARIO``. Run as a subprocess in a session of its
own, so the test session's Ray is untouched and every node it starts dies with it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import sideband
from sideband import testbed as tb
from sideband.gang import Gang, context


@ray.remote(num_cpus=0)
class Member:
    def ready(self) -> int:
        return os.getpid()


def _gang_fn() -> dict[str, Any]:
    ctx = context()
    return {
        "rank": ctx.rank,
        "node_id": ray.get_runtime_context().get_node_id(),
        "node_rank": ctx.node_rank,
        "local_world_size": ctx.local_world_size,
        "master": f"{ctx.master_addr}:{ctx.master_port}",
    }


def _a_allreduce(self: Any, name: str) -> dict[str, Any]:
    g = sideband.get_group(name)
    x = np.arange(100_003, dtype=np.float64) + g.rank
    g.allreduce(x)
    n = g.world_size
    ok = np.array_equal(x, np.arange(100_003, dtype=np.float64) * n + n * (n - 1) / 2)
    return {"rank": g.rank, "ok": bool(ok), "topology": g.topology()}


def _group(actors: list, backend: str) -> list[dict[str, Any]]:
    name = f"cluster-{backend}"
    h = sideband.create_group(actors, name=name, backend=backend, timeout_s=60)
    try:
        return ray.get([a.__ray_call__.remote(_a_allreduce, name) for a in actors], timeout=120)
    finally:
        h.destroy()


def main() -> dict[str, Any]:
    # Ray's own address choice for the nodes (an explicit 127.0.0.1 head is not reachable through
    # the address Cluster advertises); sideband stays on loopback through SIDEBAND_HOST.
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        out: dict[str, Any] = {"nodes": nodes}
        with Gang(2, resources_per_worker={"CPU": 1}, strategy="STRICT_SPREAD") as gang:
            out["gang"] = gang.run(_gang_fn)
        try:
            Gang(3, resources_per_worker={"CPU": 1}, strategy="STRICT_SPREAD", timeout_s=10)
            out["infeasible"] = "formed"
        except sideband.GangSetupError as e:
            out["infeasible"] = str(e)
        actors = [
            Member.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[i], soft=False)
            ).remote()
            for i in (0, 0, 1, 1)
        ]
        ray.get([a.ready.remote() for a in actors], timeout=120)
        out["tcp"] = _group(actors, "tcp")
        out["auto"] = _group(actors, "auto")
        return out
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    tb.emit(main())
    sys.stdout.flush()
