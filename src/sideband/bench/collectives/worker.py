"""The bench actors: what runs inside them (shipped with ``__ray_call__``; ``self`` is the
BenchWorker instance), and the bounded get the driver reads their answers with.

Every Ray-based implementation runs in these same actors on the same buffers; the per-iteration
timing loop (:func:`_a_run`) is the one the multinode bench reuses.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

_STATE = "_sideband_bench"


class BenchWorker:
    """A plain actor: everything it runs arrives through ``__ray_call__``."""

    def ready(self) -> int:
        return os.getpid()


def _rget(refs: Any, timeout_s: float) -> Any:
    import ray

    return ray.get(refs, timeout=timeout_s)


def _on_each(
    actors: list[Any], timeout_s: float, fn: Callable[..., Any], *args: Any, rank_arg: bool = True
) -> list[Any]:
    """``fn(*args, rank, ws)`` in every actor (``fn(*args)`` without ``rank_arg``): the answers."""
    ws = len(actors)
    refs = [
        a.__ray_call__.remote(fn, *(args + ((r, ws) if rank_arg else ())))
        for r, a in enumerate(actors)
    ]
    return _rget(refs, timeout_s)


def _st(self: Any) -> dict[str, Any]:
    st = getattr(self, _STATE, None)
    if st is None:
        st = {}
        setattr(self, _STATE, st)
    return st


def _a_setup(self: Any, env: dict[str, str], with_torch: bool) -> int:
    """Pin the network to loopback and import the heavy libraries before anything is timed."""
    os.environ.update(env)
    if with_torch:
        import ray.util.collective  # noqa: F401
        import torch  # noqa: F401
        import torch.distributed  # noqa: F401
    import sideband  # noqa: F401

    return os.getpid()


def _a_alloc(self: Any, op: str, count: int, chunk: int, ws: int) -> None:
    """Allocate this point's buffers once; every implementation then uses these same arrays."""
    st = _st(self)
    st["bufs"] = None  # free the previous point's arrays before allocating the next ones
    b: dict[str, np.ndarray] = {}
    if op in ("allreduce", "broadcast", "send/recv"):
        b["x"] = np.ones(count, np.float32)
    if op == "send/recv":
        b["y"] = np.zeros(count, np.float32)  # np.copyto's destination
    if op == "allgather":
        b["x"], b["out"] = np.ones(chunk, np.float32), np.zeros((ws, chunk), np.float32)
    if op == "reduce_scatter":
        b["x2"], b["out"] = np.ones((ws, chunk), np.float32), np.zeros(chunk, np.float32)
    st["bufs"] = b


def _a_free(self: Any) -> None:
    _st(self)["bufs"] = None


def _a_reset(self: Any) -> dict[str, np.ndarray]:
    """Inputs back to ones, so in-place ops never drift towards inf between implementations."""
    b = _st(self)["bufs"] or {}
    for k in ("x", "x2"):
        if k in b:
            b[k].fill(1.0)
    return b


def _op_fns(
    impl: str, name: str, op: str, rank: int, ws: int, b: dict[str, np.ndarray], st: dict
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(barrier, op) closures of ``impl`` over the buffers ``b``."""
    noop: Callable[[], Any] = lambda: None  # noqa: E731
    if impl == "memcpy":
        x, y = b["x"], b["y"]
        return noop, lambda: np.copyto(y, x)
    barrier: Callable[[], Any]
    if impl == "sideband":
        import sideband

        g = sideband.get_group(name)
        if name.endswith("-empty"):
            # The same values in arrays from Group.empty, made before anything is timed.
            from sideband.collective.transports.memfd import NO_REF, ref

            shared = {}
            for k, v in b.items():
                shared[k] = v if ref(v) != NO_REF else g.empty(v.shape, v.dtype)
                shared[k][...] = v
            b = shared
        fns: dict[str, Callable[[], Any]] = {
            "barrier": g.barrier,
            "allreduce": lambda: g.allreduce(b["x"]),
            "broadcast": lambda: g.broadcast(b["x"], src=0),
            "allgather": lambda: g.allgather(b["x"], out=b["out"]),
            "reduce_scatter": lambda: g.reduce_scatter(b["x2"], out=b["out"]),
            "send": lambda: g.send(b["x"], dst=1),
            "recv": lambda: g.recv(b["x"], src=0),
        }
        barrier = g.barrier
    elif impl == "ray_gloo":
        import ray.util.collective as col

        # Row views built once, outside the timed loop (ray's API takes lists of arrays).
        out_rows = list(b["out"]) if "out" in b and b["out"].ndim == 2 else []
        in_rows = list(b["x2"]) if "x2" in b else []
        fns = {
            "barrier": lambda: col.barrier(name),
            "allreduce": lambda: col.allreduce(b["x"], name),
            "broadcast": lambda: col.broadcast(b["x"], 0, name),
            "allgather": lambda: col.allgather(out_rows, b["x"], name),
            "reduce_scatter": lambda: col.reducescatter(b["out"], in_rows, name),
            "send": lambda: col.send(b["x"], 1, name),
            "recv": lambda: col.recv(b["x"], 0, name),
        }
        barrier = fns["barrier"]
    elif impl == "torch_gloo":
        import torch

        pg = st["torch_pg"]
        t = {k: torch.from_numpy(v) for k, v in b.items()}  # views: same memory as b
        t_out_rows = list(t["out"]) if "out" in t and t["out"].dim() == 2 else []
        t_in_rows = list(t["x2"]) if "x2" in t else []
        fns = {
            "barrier": lambda: pg.barrier().wait(),
            "allreduce": lambda: pg.allreduce([t["x"]]).wait(),
            "broadcast": lambda: pg.broadcast(t["x"], 0).wait(),
            "allgather": lambda: pg.allgather([t_out_rows], [t["x"]]).wait(),
            "reduce_scatter": lambda: pg.reduce_scatter([t["out"]], [t_in_rows]).wait(),
            "send": lambda: pg.send([t["x"]], 1, 7).wait(),
            "recv": lambda: pg.recv([t["x"]], 0, 7).wait(),
        }
        barrier = fns["barrier"]
    else:
        raise ValueError(f"no in-actor loop for {impl!r}")
    if op == "send/recv":
        return barrier, fns["send"] if rank == 0 else fns["recv"] if rank == 1 else noop
    return barrier, fns[op]


def _a_run(
    self: Any, impl: str, name: str, op: str, rank: int, ws: int, iters: int, warmup: int
) -> list[float]:
    """Seconds of each timed iteration on this rank (warm-ups excluded)."""
    st = _st(self)
    b = _a_reset(self)
    barrier, fn = _op_fns(impl, name, op, rank, ws, b, st)
    times = []
    for i in range(warmup + iters):
        barrier()  # aligned start: every rank leaves the same barrier, then times the op
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    return times


def _a_verify(self: Any, impl: str, name: str, rank: int, ws: int) -> bool:
    """One allreduce of known values through ``impl``, outside any timed loop."""
    x = np.full(1024, rank + 1, np.float32)
    if name.endswith("-empty"):
        import sideband

        x = sideband.get_group(name).empty(1024, np.float32)
        x[:] = rank + 1
    _, fn = _op_fns(impl, name, "allreduce", rank, ws, {"x": x}, _st(self))
    fn()
    return bool(np.all(x == ws * (ws + 1) / 2))


def _a_barrier(self: Any, impl: str, name: str, rank: int, ws: int) -> None:
    barrier, _ = _op_fns(impl, name, "barrier", rank, ws, {}, _st(self))
    barrier()


def _a_torch_init(self: Any, path: str, rank: int, ws: int, timeout_s: float) -> None:
    """A gloo process group of its own (not torch's default one, which ray_gloo owns)."""
    import torch.distributed as dist

    st = _st(self)
    st["torch_store"] = dist.FileStore(path, ws)
    st["torch_pg"] = dist.ProcessGroupGloo(
        st["torch_store"], rank, ws, datetime.timedelta(seconds=timeout_s)
    )


def _a_torch_destroy(self: Any) -> None:
    st = _st(self)
    st.pop("torch_pg", None)
    st.pop("torch_store", None)


def _a_ray_destroy(self: Any, name: str) -> None:
    import ray.util.collective as col

    if col.is_group_initialized(name):
        col.destroy_collective_group(name)
