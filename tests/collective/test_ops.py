"""Every op x dtypes x world sizes 1-4 x shm and tcp, checked against numpy on the driver."""

from __future__ import annotations

import numpy as np
import pytest
import ray
from collective_helpers import Member, on_all

import sideband
from sideband import ReduceOp

DTYPES = [
    "int8",
    "uint8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float16",
    "float32",
    "float64",
    "bool",
]
# 1 and 5: direct exchanges; 70_001: rings and chains; 600_000 float32 (2.4 MB): multi-piece rings.
SIZES = [1, 5, 70_001]
WORLDS = [1, 2, 3, 4]
BACKENDS = ["shm", "tcp"]


def data(rank: int, size: int, dtype: str) -> np.ndarray:
    """Small integers: sums and products are exact in every dtype, in any order."""
    if dtype == "bool":
        return (np.arange(size) + rank) % 3 == 0
    return ((np.arange(size) + rank) % 3 + 1).astype(dtype)


@pytest.fixture(scope="module")
def pool(ray_session):
    actors = [Member.remote() for _ in range(4)]
    yield actors
    for a in actors:
        ray.kill(a)


@pytest.fixture(scope="module")
def groups(pool):
    handles = {}
    for backend in BACKENDS:
        for n in WORLDS:
            handles[(backend, n)] = sideband.create_group(
                pool[:n], name=f"ops-{backend}-{n}", backend=backend
            )
    yield handles
    for h in handles.values():
        h.destroy()


def cases() -> list[tuple[int, str]]:
    out = [(s, d) for s in SIZES for d in DTYPES]
    out.append((600_000, "float32"))
    return out


def _reduce_ops(dtype: str) -> list[ReduceOp]:
    if dtype == "bool":
        return [ReduceOp.SUM, ReduceOp.MIN, ReduceOp.MAX, ReduceOp.BXOR]
    if dtype.startswith("float"):
        return [ReduceOp.SUM, ReduceOp.PRODUCT, ReduceOp.MIN, ReduceOp.MAX, ReduceOp.AVG]
    return [
        ReduceOp.SUM,
        ReduceOp.PRODUCT,
        ReduceOp.MIN,
        ReduceOp.MAX,
        ReduceOp.BAND,
        ReduceOp.BOR,
        ReduceOp.BXOR,
    ]


_NP = {
    ReduceOp.SUM: np.add,
    ReduceOp.PRODUCT: np.multiply,
    ReduceOp.MIN: np.minimum,
    ReduceOp.MAX: np.maximum,
    ReduceOp.AVG: np.add,
    ReduceOp.BAND: np.bitwise_and,
    ReduceOp.BOR: np.bitwise_or,
    ReduceOp.BXOR: np.bitwise_xor,
}


def expected_reduce(n: int, size: int, dtype: str, op: ReduceOp) -> np.ndarray:
    acc = data(0, size, dtype).copy()
    for r in range(1, n):
        _NP[op](acc, data(r, size, dtype), out=acc)
    if op is ReduceOp.AVG:
        acc = (acc / n).astype(dtype)
    return acc


def _run_reductions(self, name, kind):
    g = sideband.get_group(name)
    out = []
    for size, dtype in cases():
        for op in _reduce_ops(dtype):
            x = data(g.rank, size, dtype)
            if kind == "allreduce":
                assert g.allreduce(x, op) is x
                out.append(x)
            elif kind == "reduce":
                orig = x.copy()
                g.reduce(x, dst=g.world_size - 1, op=op)
                if g.rank != g.world_size - 1:
                    assert np.array_equal(x, orig), "reduce changed a non-root input"
                out.append(x)
            else:
                rows = np.stack([data(g.rank + k, size, dtype) for k in range(g.world_size)])
                out.append(g.reduce_scatter(rows, op))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", WORLDS)
@pytest.mark.parametrize("kind", ["allreduce", "reduce", "reduce_scatter"])
def test_reductions(pool, groups, backend, n, kind):
    results = on_all(pool[:n], _run_reductions, f"ops-{backend}-{n}", kind)
    for rank, got in enumerate(results):
        i = 0
        for size, dtype in cases():
            for op in _reduce_ops(dtype):
                if kind == "allreduce" or (kind == "reduce" and rank == n - 1):
                    want = expected_reduce(n, size, dtype, op)
                elif kind == "reduce":
                    want = data(rank, size, dtype)
                else:
                    acc = data(rank, size, dtype).copy()
                    for r in range(1, n):
                        _NP[op](acc, data(r + rank, size, dtype), out=acc)
                    want = (acc / n).astype(dtype) if op is ReduceOp.AVG else acc
                assert got[i].dtype == np.dtype(dtype)
                np.testing.assert_array_equal(
                    got[i], want, err_msg=f"{kind} {op} {dtype} {size} rank {rank}"
                )
                i += 1


def _run_movement(self, name):
    g = sideband.get_group(name)
    r, n = g.rank, g.world_size
    out = []
    for size, dtype in cases():
        x = data(r, size, dtype)
        b = data(7, size, dtype) if r == n - 1 else np.zeros(size, dtype)
        g.broadcast(b, src=n - 1)
        ag = g.allgather(x)
        ag_out = np.empty((n, size), dtype)
        g.allgather(x, out=ag_out)
        ga = g.gather(x, dst=0)
        rows = np.stack([data(r * 10 + k, size, dtype) for k in range(n)])
        sc = g.scatter(rows if r == 0 else None, src=0)
        a2a = g.alltoall(rows)
        out.append((b, ag, ag_out, ga, sc, a2a))
    g.barrier()
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", WORLDS)
def test_data_movement(pool, groups, backend, n):
    results = on_all(pool[:n], _run_movement, f"ops-{backend}-{n}")
    for rank, got in enumerate(results):
        for (size, dtype), (b, ag, ag_out, ga, sc, a2a) in zip(cases(), got):
            np.testing.assert_array_equal(b, data(7, size, dtype))
            want_ag = np.stack([data(p, size, dtype) for p in range(n)])
            np.testing.assert_array_equal(ag, want_ag)
            np.testing.assert_array_equal(ag_out, want_ag)
            if rank == 0:
                np.testing.assert_array_equal(ga, want_ag)
            else:
                assert ga is None
            np.testing.assert_array_equal(sc, data(rank, size, dtype))
            np.testing.assert_array_equal(
                a2a, np.stack([data(p * 10 + rank, size, dtype) for p in range(n)])
            )


def _run_p2p(self, name):
    g = sideband.get_group(name)
    r, n = g.rank, g.world_size
    got = []
    for size, dtype in cases():
        # A ring of sends: each rank sends to the next and receives from the previous one.
        # Even ranks send first, odd ranks receive first, so large messages cannot deadlock.
        x = data(r, size, dtype)
        buf = np.empty(size, dtype)
        if r % 2 == 0:
            g.send(x, (r + 1) % n, tag=5)
            g.recv(buf, (r - 1) % n, tag=5)
        else:
            g.recv(buf, (r - 1) % n, tag=5)
            g.send(x, (r + 1) % n, tag=5)
        got.append(buf)
    return got


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [2, 4])
def test_send_recv(pool, groups, backend, n):
    results = on_all(pool[:n], _run_p2p, f"ops-{backend}-{n}")
    for rank, got in enumerate(results):
        for (size, dtype), buf in zip(cases(), got):
            np.testing.assert_array_equal(buf, data((rank - 1) % n, size, dtype))


def _run_objects(self, name):
    g = sideband.get_group(name)
    r, n = g.rank, g.world_size
    out = {
        "bcast": g.broadcast_object({"from": r, "big": "x" * 100_000} if r == 0 else None, src=0),
        "allgather": g.allgather_object(("rank", r)),
        "gather": g.gather_object([r] * r, dst=n - 1),
        "scatter": g.scatter_object([{"to": p} for p in range(n)] if r == 0 else None, src=0),
    }
    if n > 1:
        if r == 0:
            g.send_object({"payload": list(range(10))}, dst=1, tag=9)
        elif r == 1:
            out["p2p"] = g.recv_object(src=0, tag=9)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", WORLDS)
def test_object_ops(pool, groups, backend, n):
    results = on_all(pool[:n], _run_objects, f"ops-{backend}-{n}")
    for r, o in enumerate(results):
        assert o["bcast"] == {"from": 0, "big": "x" * 100_000}
        assert o["allgather"] == [("rank", p) for p in range(n)]
        assert o["gather"] == ([[p] * p for p in range(n)] if r == n - 1 else None)
        assert o["scatter"] == {"to": r}
        if n > 1 and r == 1:
            assert o["p2p"] == {"payload": list(range(10))}


def _run_layouts(self, name):
    g = sideband.get_group(name)
    r = g.rank
    # Non-contiguous input: handled through a contiguous copy, result written back.
    base = np.zeros((6, 8), np.float32)
    view = base[:, ::2]
    view[...] = r + 1
    g.allreduce(view)
    # Multi-dimensional, Fortran-ordered.
    f = np.asfortranarray(np.full((3, 5), r + 1, np.int32))
    g.allreduce(f, ReduceOp.MAX)
    # Zero-size arrays.
    z = g.allreduce(np.zeros(0, np.float64))
    return base, f, z.size


@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts(pool, groups, backend):
    results = on_all(pool[:3], _run_layouts, f"ops-{backend}-3")
    for base, f, zsize in results:
        assert np.all(base[:, ::2] == 6) and np.all(base[:, 1::2] == 0)
        assert np.all(f == 3)
        assert zsize == 0


def _mask_around_ops(self, name):
    import os

    g = sideband.get_group(name)
    before = os.sched_getaffinity(0)
    x = np.ones(8, np.float32)
    for _ in range(50):  # each op may move this thread to the rank's own CPU
        g.allreduce(x)
        g.barrier()
    return before, os.sched_getaffinity(0)


def test_ops_leave_the_threads_affinity_mask_as_it_was(pool, groups):
    for before, after in on_all(pool[:4], _mask_around_ops, "ops-shm-4"):
        assert after == before
