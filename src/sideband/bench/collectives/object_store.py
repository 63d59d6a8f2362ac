"""The Ray object store baseline: ``ray.put`` in each rank, ``ray.get`` (+ a sum or a copy into
the rank's buffer) in the others, orchestrated and timed on the driver."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sideband.bench.collectives.worker import _on_each, _rget, _st


# -- inside the actors ---------------------------------------------------------------------------
def _a_os_put(self: Any, key: str) -> list:
    import ray

    return [ray.put(_st(self)["bufs"][key])]  # in a list, so the driver gets the ref itself


def _a_os_reduce(self: Any, refs: list) -> None:
    """allreduce's second half: fetch every rank's array and sum them into x."""
    import ray

    x = _st(self)["bufs"]["x"]
    arrays = ray.get(refs)
    np.copyto(x, arrays[0])
    for a in arrays[1:]:
        np.add(x, a, out=x)


def _a_os_copy(self: Any, refs: list, key: str) -> None:
    """broadcast / recv / allgather: fetched arrays copied into this rank's buffer."""
    import ray

    dst = _st(self)["bufs"][key]
    arrays = ray.get(refs)
    if len(arrays) == 1:
        np.copyto(dst, arrays[0])
    else:
        for i, a in enumerate(arrays):
            np.copyto(dst[i], a)


def _a_os_reduce_row(self: Any, refs: list, rank: int) -> None:
    """reduce_scatter: row ``rank`` of every rank's (ws, chunk) array, summed into out."""
    import ray

    out = _st(self)["bufs"]["out"]
    arrays = ray.get(refs)
    np.copyto(out, arrays[0][rank])
    for a in arrays[1:]:
        np.add(out, a[rank], out=out)


def _a_noop(self: Any) -> None:
    return None


def _a_os_verify(self: Any, refs: list, rank: int, ws: int) -> bool:
    import ray

    s = sum(np.asarray(a, np.float64) for a in ray.get(refs))
    return bool(np.all(s == ws * (ws + 1) / 2))


def _a_os_put_value(self: Any, rank: int) -> list:
    import ray

    return [ray.put(np.full(1024, rank + 1, np.float32))]


# -- on the driver -------------------------------------------------------------------------------
def _put_each(acts: list[Any], key: str, t_o: float) -> list:
    """Every rank's buffer ``key`` put into the store: one ref per rank."""
    return [r[0] for r in _rget([a.__ray_call__.remote(_a_os_put, key) for a in acts], t_o)]


def verify(acts: list[Any], t_o: float) -> bool:
    """Known values put by every rank; each rank fetches and sums them all."""
    refs = [_rget(a.__ray_call__.remote(_a_os_put_value, r), t_o)[0] for r, a in enumerate(acts)]
    return all(_on_each(acts, t_o, _a_os_verify, refs))


def run(acts: list[Any], op: str, iters: int, warmup: int, t_o: float) -> list[float]:
    """Driver-orchestrated put + get (+ sum or copy into the buffer), timed on the driver."""
    times = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        if op == "allreduce":
            refs = _put_each(acts, "x", t_o)
            _rget([a.__ray_call__.remote(_a_os_reduce, refs) for a in acts], t_o)
        elif op == "broadcast":
            refs = _rget(acts[0].__ray_call__.remote(_a_os_put, "x"), t_o)
            _rget([a.__ray_call__.remote(_a_os_copy, refs, "x") for a in acts[1:]], t_o)
        elif op == "allgather":
            refs = _put_each(acts, "x", t_o)
            _rget([a.__ray_call__.remote(_a_os_copy, refs, "out") for a in acts], t_o)
        elif op == "reduce_scatter":
            refs = _put_each(acts, "x2", t_o)
            _rget(
                [a.__ray_call__.remote(_a_os_reduce_row, refs, r) for r, a in enumerate(acts)],
                t_o,
            )
        elif op == "send/recv":
            refs = _rget(acts[0].__ray_call__.remote(_a_os_put, "x"), t_o)
            _rget(acts[1].__ray_call__.remote(_a_os_copy, refs, "x"), t_o)
        elif op == "barrier":
            _rget([a.__ray_call__.remote(_a_noop) for a in acts], t_o)
        dt = time.perf_counter() - t0
        refs = []  # drop the refs so the objects are freed before the next iteration
        if i >= warmup:
            times.append(dt)
    return times
