"""``sideband demo``: group 4 actors, run every op once with a check, time a few against Ray.

Runs on a local Ray (started here unless one is already connected) in well under a minute.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

import sideband
from sideband._table import render


def _check_ops(self: Any, name: str) -> dict[str, bool]:
    """Run inside each actor: every op once, each result compared with what it must be."""
    g = sideband.get_group(name)
    r, n = g.rank, g.world_size
    ok: dict[str, bool] = {}
    x = np.full(1000, r + 1, np.float32)
    ok["allreduce"] = bool(np.all(g.allreduce(x) == n * (n + 1) / 2))
    x = np.full(1000, r + 1, np.int64)
    g.reduce(x, dst=0, op=sideband.ReduceOp.MAX)
    ok["reduce"] = bool(np.all(x == (n if r == 0 else r + 1)))
    b = np.arange(1000, dtype=np.float64) if r == 0 else np.zeros(1000)
    ok["broadcast"] = bool(np.array_equal(g.broadcast(b, src=0), np.arange(1000)))
    ag = g.allgather(np.full(10, r))
    ok["allgather"] = bool(np.array_equal(ag[:, 0], np.arange(n)))
    ga = g.gather(np.full(10, r), dst=0)
    ok["gather"] = bool(np.array_equal(ga[:, 0], np.arange(n))) if r == 0 else ga is None
    sc = g.scatter(np.arange(n * 10).reshape(n, 10) if r == 0 else None, src=0)
    ok["scatter"] = bool(np.array_equal(sc, np.arange(r * 10, r * 10 + 10)))
    rs = g.reduce_scatter(np.ones((n, 10), np.float32))
    ok["reduce_scatter"] = bool(np.all(rs == n))
    a2a = g.alltoall(np.arange(n) + 100 * r)
    ok["alltoall"] = bool(np.array_equal(a2a, np.arange(n) * 100 + r))
    g.barrier()
    ok["barrier"] = True
    buf = np.empty(1000, np.float32)
    if r % 2 == 0:
        g.send(np.full(1000, r, np.float32), dst=(r + 1) % n)
        g.recv(buf, src=(r - 1) % n)
    else:
        g.recv(buf, src=(r - 1) % n)
        g.send(np.full(1000, r, np.float32), dst=(r + 1) % n)
    ok["send/recv"] = bool(np.all(buf == (r - 1) % n))
    objs = g.allgather_object({"rank": r})
    ok["allgather_object"] = objs == [{"rank": p} for p in range(n)]
    return ok


def _time_sideband(self: Any, name: str, op: str, nbytes: int, iters: int) -> float:
    """Median seconds of one op, measured inside the actor (after a warm-up)."""
    g = sideband.get_group(name)
    r = g.rank
    x = np.ones(nbytes // 4, np.float32)
    times = []
    for i in range(iters + 1):
        g.barrier()
        t = time.perf_counter()
        if op == "allreduce":
            g.allreduce(x)
        elif op == "broadcast":
            g.broadcast(x, src=0)
        elif op == "allgather":
            g.allgather(x)
        elif op == "send/recv":
            if r == 0:
                g.send(x, dst=1)
            elif r == 1:
                g.recv(x, src=0)
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def _put(self: Any, nbytes: int) -> list:
    import ray

    return [ray.put(np.ones(nbytes // 4, np.float32))]


def _get_sum(self: Any, refs: list) -> int:
    import ray

    arrays = ray.get(refs)
    acc = arrays[0].copy()
    for a in arrays[1:]:
        acc += a
    return acc.size


def _get(self: Any, refs: list) -> int:
    """Fetch the arrays and copy them into this actor's buffer, as a collective would."""
    import ray

    arrays = ray.get(refs)  # zero-copy views of the object store's memory
    out = np.empty((len(arrays), arrays[0].size), arrays[0].dtype)
    for row, a in zip(out, arrays):
        row[...] = a
    return out.size


def _time_object_store(actors: list[Any], op: str, nbytes: int, iters: int) -> float:
    """Median seconds of the same op through ray.put / ray.get, orchestrated by the driver."""
    import ray

    times = []
    for i in range(iters + 1):
        t = time.perf_counter()
        if op in ("allreduce", "allgather"):
            refs = [r[0] for r in ray.get([a.__ray_call__.remote(_put, nbytes) for a in actors])]
            fn = _get_sum if op == "allreduce" else _get
            ray.get([a.__ray_call__.remote(fn, refs) for a in actors])
        elif op == "broadcast":
            refs = ray.get(actors[0].__ray_call__.remote(_put, nbytes))
            ray.get([a.__ray_call__.remote(_get, refs) for a in actors[1:]])
        elif op == "send/recv":
            refs = ray.get(actors[0].__ray_call__.remote(_put, nbytes))
            ray.get(actors[1].__ray_call__.remote(_get, refs))
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def _fmt(s: float) -> str:
    return f"{s * 1e6:.0f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def run(
    num_actors: int = 4, sizes: tuple[int, ...] = (8, 1 << 20, 32 << 20), iters: int = 5
) -> int:
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)

    class _Worker:
        """Any actor can be grouped: this one has no sideband-specific methods."""

        def ready(self) -> bool:
            return True

    Worker: Any = ray.remote(num_cpus=0)(_Worker)

    actors = [Worker.remote() for _ in range(num_actors)]
    ray.get([a.ready.remote() for a in actors])
    t = time.perf_counter()
    group = sideband.create_group(actors, name="sideband-demo")
    created = time.perf_counter() - t
    print(
        f"grouped {num_actors} running actors in {created * 1e3:.0f} ms "
        f"(transport: {ray.get(actors[0].__ray_call__.remote(lambda s: sideband.get_group('sideband-demo').topology()['peers']))})"
    )
    try:
        checks = ray.get([a.__ray_call__.remote(_check_ops, "sideband-demo") for a in actors])
        names = list(checks[0])
        rows = [[op, "ok" if all(c[op] for c in checks) else "WRONG"] for op in names]
        print()
        print(render(["op (4 ranks, checked on every rank)", "result"], rows))
        failed = [r[0] for r in rows if r[1] != "ok"]
        rows = []
        for op in ("allreduce", "broadcast", "allgather", "send/recv"):
            for nbytes in sizes:
                sb = ray.get(
                    [
                        a.__ray_call__.remote(_time_sideband, "sideband-demo", op, nbytes, iters)
                        for a in actors
                    ]
                )
                ours = max(sb) if op != "send/recv" else sb[1]
                theirs = _time_object_store(actors, op, nbytes, iters)
                rows.append([op, _size(nbytes), _fmt(ours), _fmt(theirs), f"{theirs / ours:.1f}x"])
        print()
        print(render(["op", "size", "sideband", "Ray object store", "speed-up"], rows))
        print(
            f"\n{num_actors} actors, float32 arrays, median of {iters} runs; sideband timed inside "
            "the actors; the object store as put + get + sum (allreduce) or copy into the "
            "receiver's buffer, driven from the driver."
        )
    finally:
        group.destroy()
        for a in actors:
            ray.kill(a)
    if failed:
        print(f"FAILED: {failed}")
        return 1
    return 0


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} B"
