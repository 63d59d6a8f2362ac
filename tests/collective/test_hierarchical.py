"""Host-aware algorithms, on one machine split into "hosts" by SIDEBAND_HOST_KEY.

Ranks with different keys never share memory, so they talk over TCP exactly as ranks on
different machines do; the multi-host test bed (tests/multinode) runs the same code across
network namespaces.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import ray
from collective_helpers import Member, on_all

import sideband

LAYOUTS = {
    "2x2": ["a", "a", "b", "b"],
    "2x2-pipelined": ["a", "a", "b", "b"],
    "interleaved": ["a", "b", "a", "b"],
    "uneven": ["a", "a", "a", "b"],
}
# Pipelining is on by default only where each rank has cores to spare: force it here, in small
# pieces, so that the test runs it on any machine.
EXTRA_ENV = {"2x2-pipelined": {"SIDEBAND_HIER_PIPELINE_BYTES": str(1 << 20)}}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def hosts(request: Any, ray_session: None) -> Any:
    keys = LAYOUTS[request.param]
    actors = [
        Member.options(
            runtime_env={"env_vars": {"SIDEBAND_HOST_KEY": k, **EXTRA_ENV.get(request.param, {})}}
        ).remote()
        for k in keys
    ]
    name = f"hier-{request.param}"
    handle = sideband.create_group(actors, name=name)
    yield request.param, keys, actors, name
    handle.destroy()
    for a in actors:
        ray.kill(a)


def _topology(_self: Any, name: str) -> dict:
    g = sideband.get_group(name)
    t = g.topology()
    return {**t, "hier": t["hierarchical"]}


def _ops(_self: Any, name: str, count: int, dtype: str) -> dict:
    g = sideband.get_group(name)
    r, n = g.rank, g.world_size
    base = np.arange(count, dtype=dtype) % 97
    out: dict[str, Any] = {}
    x = base + r
    g.allreduce(x)
    out["allreduce"] = x
    y = base + 5 if r == 2 else np.zeros(count, dtype)
    g.broadcast(y, src=2)
    out["broadcast"] = y
    out["allgather"] = g.allgather(base + r)
    rows = np.stack([base[: max(1, count // n)] + r * 10 + k for k in range(n)])
    out["reduce_scatter"] = g.reduce_scatter(rows)
    z = base * 0 + 3 if r == 0 else base * 0 + 1
    g.allreduce(z, op="max")
    out["max"] = z
    g.barrier()
    out["pipelined"] = g._plan.pipelined
    return out


def test_topology_groups_ranks_by_shared_memory(hosts: Any) -> None:
    layout, keys, actors, name = hosts
    topo = on_all(actors, _topology, name)
    expected = sorted([[r for r, k in enumerate(keys) if k == key] for key in sorted(set(keys))])
    for r, t in enumerate(topo):
        assert t["hosts"] == expected
        assert t["hier"]
        for p, kind in t["peers"].items():
            assert kind == ("shm" if keys[int(p)] == keys[r] else "tcp")


@pytest.mark.parametrize("count", [3, 1000, 300_000, 2_100_001, 5_000_001])
def test_hierarchical_ops_match_numpy(hosts: Any, count: int) -> None:
    layout, keys, actors, name = hosts
    n = len(actors)
    dtype = "float64" if count < 1_000_000 else "float32"
    res = on_all(actors, _ops, name, count, dtype)
    base = np.arange(count, dtype=dtype) % 97
    m = max(1, count // n)
    for r, got in enumerate(res):
        if count > 1_000_000:
            assert got["pipelined"] == (layout == "2x2-pipelined")
        np.testing.assert_array_equal(got["allreduce"], base * n + sum(range(n)))
        np.testing.assert_array_equal(got["broadcast"], base + 5)
        np.testing.assert_array_equal(got["allgather"], np.stack([base + p for p in range(n)]))
        want = sum(base[:m] + p * 10 + r for p in range(n))
        np.testing.assert_array_equal(got["reduce_scatter"], want)
        np.testing.assert_array_equal(got["max"], np.full(count, 3, dtype))
    # Every rank ends with the same bits.
    for got in res[1:]:
        assert got["allreduce"].tobytes() == res[0]["allreduce"].tobytes()


def test_flat_and_hierarchical_agree(hosts: Any) -> None:
    """SIDEBAND_HIERARCHICAL=0 in the same layout gives the same results."""
    layout, keys, actors, name = hosts
    flat = [
        Member.options(
            runtime_env={"env_vars": {"SIDEBAND_HOST_KEY": k, "SIDEBAND_HIERARCHICAL": "0"}}
        ).remote()
        for k in keys
    ]
    try:
        with sideband.create_group(flat, name=f"flat-{layout}"):
            assert not any(t["hier"] for t in on_all(flat, _topology, f"flat-{layout}"))
            a = on_all(flat, _ops, f"flat-{layout}", 300_000, "float64")
        b = on_all(actors, _ops, name, 300_000, "float64")
        for x, y in zip(a, b):
            for k in x:
                if k != "pipelined":
                    np.testing.assert_array_equal(x[k], y[k])
    finally:
        for f in flat:
            ray.kill(f)


def test_settings_follow_rank_0(ray_session: None) -> None:
    """Ranks whose environments disagree still agree on one plan: rank 0's."""
    envs = [
        {"SIDEBAND_HOST_KEY": "a"},
        {"SIDEBAND_HOST_KEY": "a", "SIDEBAND_HIERARCHICAL": "0"},
        {"SIDEBAND_HOST_KEY": "b", "SIDEBAND_HIER_PIPELINE_BYTES": str(1 << 20)},
        {"SIDEBAND_HOST_KEY": "b", "SIDEBAND_HIERARCHICAL": "0"},
    ]
    actors = [Member.options(runtime_env={"env_vars": e}).remote() for e in envs]
    try:
        with sideband.create_group(actors, name="hier-mixed"):
            assert all(t["hier"] for t in on_all(actors, _topology, "hier-mixed"))
            res = on_all(actors, _ops, "hier-mixed", 5_000_001, "float32")
        base = np.arange(5_000_001, dtype="float32") % 97
        # Rank 0 set no piece size: the default, from core counts, not rank 2's 1 MiB.
        spare = 2 * 2 <= (os.cpu_count() or 1)
        for got in res:
            assert got["pipelined"] == spare
            np.testing.assert_array_equal(got["allreduce"], base * 4 + 6)
    finally:
        for a in actors:
            ray.kill(a)
