"""Every op, from the edge to a backend: check the arguments once, pick the backend, hand over.

Each function validates the calling rank's arguments (raising InvalidArgumentError before
anything is sent, so the group stays usable), decides where the op runs, checks that backend can
do it, and hands the validated buffers to it. Where an op runs: torch.distributed (backend
"torch_gloo", or NCCL for CUDA tensors when every rank has a GPU of its own, or "torch_nccl"),
CUDA IPC (ranks on one GPU: send/recv, broadcast), or the native algorithms (CUDA tensors staged
through pinned host memory). Every rank decides alike from what all ranks agreed (``Gpu.agree``).

Every function first warns (once per op) if it would block a running event loop's thread
(``checks.blocking``); ``wro`` is the caller's ``write_readonly`` (write results into read-only
numpy arrays instead of refusing them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sideband.collective.api import checks
from sideband.collective.backends import ipc
from sideband.collective.backends.cuda import Gpu
from sideband.collective.comm.framing import descriptor
from sideband.collective.runtime import reduce as red
from sideband.collective.runtime.arrays import TORCH_ONLY, as_torch, dtype_name, numpy_dtype
from sideband.collective.runtime.buffers import Buffer, as_buffer
from sideband.errors import BackendUnavailableError, InvalidArgumentError

# ``g`` is the calling rank's ``api.group.Group`` (which imports this module: not imported here).
Group = Any


def gpu(g: Group) -> Gpu:
    if g._cuda is None:
        own = g._torch is not None and g._torch.kind == "nccl"
        g._cuda = Gpu(g._native, g._roster, g.session, own)
    return g._cuda


def _backend(g: Group, buf: Buffer) -> Any:
    """The backend that runs a collective on ``buf``."""
    if g._torch is None and buf.stage is None:
        return g._native  # the common case, kept cheap: small ops take microseconds
    if buf.cuda:
        state = gpu(g)
        plan = state.agree(as_torch(buf.obj))
        if g._torch is not None and g._torch.kind == "nccl":
            if not plan.nccl:
                _no_nccl(g, plan)
            return g._torch
        return state.nccl if plan.nccl else g._native
    if g._torch.kind == "gloo":
        return g._torch
    return g._native


def _no_nccl(g: Group, plan: Any) -> None:
    n = g.world_size
    shared = [(a, b) for a in range(n) for b in range(a + 1, n) if plan.same_gpu(a, b)]
    raise BackendUnavailableError(
        f"group {g.name!r}, rank {g.rank}: backend 'torch_nccl' needs one GPU per rank, but "
        f"ranks {shared[0] if shared else '?'} share a GPU (or NCCL is missing on a rank); "
        "NCCL cannot run two ranks on one GPU. Use backend='auto', which stages through "
        "pinned memory and uses CUDA IPC between ranks on one GPU."
    )


def _p2p_backend(g: Group, buf: Buffer, peer: int, timeout_s: float | None) -> Any:
    """The backend of a send/recv with ``peer``, or "ipc" (CUDA IPC, both on one GPU)."""
    if g._torch is None and buf.stage is None:
        return g._native
    if buf.cuda:
        if g._torch is not None and g._torch.kind == "nccl":
            return g._torch
        if gpu(g).peer_same_gpu(as_torch(buf.obj), peer, timeout_s) and ipc.usable():
            return "ipc"
        # Not the NCCL group an "auto" group makes on its first CUDA collective: the other end
        # may not have run that collective yet, and both ends must take the same path.
        return g._native
    return g._torch if g._torch.kind == "gloo" else g._native


def _reducing(g: Group, what: str, buf: Buffer, rop: Any) -> tuple[Any, Any]:
    """(backend, ReduceOp) of a reducing op, checked for what that backend can reduce."""
    rop = checks.reduce_op(rop)
    be = _backend(g, buf)
    red.check(rop, buf.dtype, be.kind, what, be.nccl_fp8)
    return be, rop


# --- array ops ---------------------------------------------------------------------------------


def allreduce(
    g: Group, x: Any, op: Any, async_op: bool, timeout_s: float | None, wro: bool = False
) -> Any:
    checks.blocking(g, "allreduce", async_op)
    what = checks.what(g, "allreduce")
    buf = as_buffer(x, what, writable=True, write_readonly=wro)
    be, rop = _reducing(g, what, buf, op)
    return be.allreduce(buf, rop, async_op, timeout_s)


def reduce(
    g: Group, x: Any, dst: Any, op: Any, async_op: bool, timeout_s: float | None, wro: bool = False
) -> Any:
    checks.blocking(g, "reduce", async_op)
    dst = checks.rank(g, dst, "dst", "reduce")
    what = checks.what(g, "reduce")
    buf = as_buffer(x, what, writable=g.rank == dst, write_readonly=wro)
    be, rop = _reducing(g, what, buf, op)
    return be.reduce(buf, dst, rop, async_op, timeout_s)


def broadcast(
    g: Group, x: Any, src: Any, async_op: bool, timeout_s: float | None, wro: bool = False
) -> Any:
    checks.blocking(g, "broadcast", async_op)
    src = checks.rank(g, src, "src", "broadcast")
    what = checks.what(g, "broadcast")
    buf = as_buffer(x, what, writable=g.rank != src, fill=g.rank == src, write_readonly=wro)
    be = _backend(g, buf)
    if buf.cuda and be is g._native and g.world_size > 1:
        plan = gpu(g).plan
        if plan is not None and plan.all_same_gpu() and ipc.usable():
            return _ipc_broadcast(g, buf, src, async_op, timeout_s)
    return be.broadcast(buf, src, async_op, timeout_s)


def allgather(
    g: Group, x: Any, out: Any, async_op: bool, timeout_s: float | None, wro: bool = False
) -> Any:
    checks.blocking(g, "allgather", async_op)
    buf = as_buffer(x, checks.what(g, "allgather"), writable=False)
    ob = checks.out(g, out, buf, (g.world_size, *buf.shape), "allgather", wro)
    return _backend(g, buf).allgather(buf, ob, async_op, timeout_s)


def gather(
    g: Group, x: Any, dst: Any, out: Any, async_op: bool, timeout_s: float | None, wro: bool = False
) -> Any:
    checks.blocking(g, "gather", async_op)
    dst = checks.rank(g, dst, "dst", "gather")
    buf = as_buffer(x, checks.what(g, "gather"), writable=False)
    shape = (g.world_size, *buf.shape)
    ob = checks.out(g, out, buf, shape, "gather", wro) if g.rank == dst else None
    return _backend(g, buf).gather(buf, dst, ob, async_op, timeout_s)


def scatter(
    g: Group, x: Any, src: Any, out: Any, async_op: bool, timeout_s: float | None, wro: bool = False
) -> Any:
    checks.blocking(g, "scatter", async_op)
    what = checks.what(g, "scatter")
    src = checks.rank(g, src, "src", "scatter")
    buf = row = None
    if g.rank == src:
        if x is None:
            raise InvalidArgumentError(f"{what}: the src rank must pass the array to scatter")
        buf = as_buffer(x, what, writable=False)
        row = checks.rows(g, buf, "scatter")
    given = (
        None
        if out is None
        else as_buffer(out, f"{what} (out)", writable=True, fill=False, write_readonly=wro)
    )
    like = buf if buf is not None else given

    def make_out(dtype: str, shape: tuple[int, ...]) -> Buffer:
        if given is not None and given.dtype != dtype:
            raise InvalidArgumentError(f"{what}: out has dtype {given.dtype}, src sends {dtype}")
        return checks.out(g, out, like or _template(g, dtype), shape, "scatter", wro)

    if like is not None:
        be = _backend(g, like)
    else:  # a non-src rank without out: torch gloo's ranks all run torch, others the native path
        be = g._torch if g._torch is not None and g._torch.kind == "gloo" else g._native
    return be.scatter(buf, row, src, make_out, async_op, timeout_s)


def _template(g: Group, dtype: str) -> Buffer:
    """A stand-in describing what a non-src rank without ``out`` receives (its array kind)."""
    if dtype in TORCH_ONLY or (g._torch is not None and g._torch.kind == "gloo"):
        import torch

        device = g._torch.device if g._torch is not None else "cpu"
        t = torch.empty(0, dtype=getattr(torch, dtype), device=device)
        return as_buffer(t, "scatter", writable=False)
    return as_buffer(np.empty(0, dtype=numpy_dtype(dtype)), "scatter", writable=False)


def reduce_scatter(
    g: Group, x: Any, op: Any, out: Any, async_op: bool, timeout_s: float | None, wro: bool = False
) -> Any:
    checks.blocking(g, "reduce_scatter", async_op)
    what = checks.what(g, "reduce_scatter")
    buf = as_buffer(x, what, writable=False)
    be, rop = _reducing(g, what, buf, op)
    ob = checks.out(g, out, buf, checks.rows(g, buf, "reduce_scatter"), "reduce_scatter", wro)
    return be.reduce_scatter(buf, rop, ob, async_op, timeout_s)


def alltoall(
    g: Group, x: Any, out: Any, async_op: bool, timeout_s: float | None, wro: bool = False
) -> Any:
    checks.blocking(g, "alltoall", async_op)
    buf = as_buffer(x, checks.what(g, "alltoall"), writable=False)
    checks.rows(g, buf, "alltoall")
    ob = checks.out(g, out, buf, buf.shape, "alltoall", wro)
    return _backend(g, buf).alltoall(buf, ob, async_op, timeout_s)


def barrier(g: Group, async_op: bool, timeout_s: float | None) -> Any:
    checks.blocking(g, "barrier", async_op)
    return g._native.barrier(async_op, timeout_s)


# --- point to point ----------------------------------------------------------------------------


def send(g: Group, x: Any, dst: Any, tag: Any, async_op: bool, timeout_s: float | None) -> Any:
    checks.blocking(g, "send", async_op)
    dst = checks.peer(g, dst, "dst", "send")
    tag = checks.tag(g, tag, "send")
    buf = as_buffer(x, checks.what(g, "send"), writable=False)
    be = _p2p_backend(g, buf, dst, timeout_s)
    if be == "ipc":
        return _ipc_p2p(g, "send", buf, dst, tag, async_op, timeout_s)
    return be.send(buf, dst, tag, async_op, timeout_s)


def recv(
    g: Group,
    out: Any,
    src: Any,
    tag: Any,
    async_op: bool,
    timeout_s: float | None,
    wro: bool = False,
) -> Any:
    checks.blocking(g, "recv", async_op)
    src = checks.peer(g, src, "src", "recv")
    tag = checks.tag(g, tag, "recv")
    buf = as_buffer(out, checks.what(g, "recv"), writable=True, fill=False, write_readonly=wro)
    be = _p2p_backend(g, buf, src, timeout_s)
    if be == "ipc":
        return _ipc_p2p(g, "recv", buf, src, tag, async_op, timeout_s)
    return be.recv(buf, src, tag, async_op, timeout_s)


def sendrecv(
    g: Group,
    x: Any,
    dst: Any,
    out: Any,
    src: Any,
    tag: Any,
    async_op: bool,
    timeout_s: float | None,
    wro: bool = False,
) -> Any:
    """Send ``x`` to ``dst`` while receiving into ``out`` from ``src``, both progressing at once
    (MPI_Sendrecv): pairs with any send / recv / sendrecv of the peers, never deadlocks."""
    checks.blocking(g, "sendrecv", async_op)
    dst = checks.peer(g, dst, "dst", "sendrecv")
    src = checks.peer(g, src, "src", "sendrecv")
    tag = checks.tag(g, tag, "sendrecv")
    what = checks.what(g, "sendrecv")
    sb = as_buffer(x, what, writable=False)
    rb = as_buffer(out, f"{what} (out)", writable=True, fill=False, write_readonly=wro)
    routes = {_p2p_backend(g, sb, dst, timeout_s), _p2p_backend(g, rb, src, timeout_s)}
    if routes != {g._native}:
        raise BackendUnavailableError(
            f"{what}: sendrecv runs on sideband's native backend, and this group sends these "
            f"arrays through {g.backend!r} or CUDA IPC; use send and recv in an order both ranks "
            "agree on (the lower rank sends first) instead"
        )
    return g._native.sendrecv(sb, dst, rb, src, tag, async_op, timeout_s)


def _ipc_p2p(
    g: Group, kind: str, buf: Buffer, peer: int, tag: int, async_op: bool, timeout_s: float | None
) -> Any:
    """``send`` or ``recv`` of a CUDA tensor by CUDA IPC (both ranks on one GPU)."""
    import torch

    t = as_torch(buf.obj)
    dt = dtype_name(t)
    desc = descriptor("p2p-ipc", dt)
    stream = torch.cuda.current_stream(t.device)
    state = gpu(g)
    if kind == "send":
        label = f"send({dt}{list(t.shape)}, dst={peer}, tag={tag}) [cuda ipc]"
        body = ipc.send_body(state, t, peer, tag, desc, stream)
    else:
        label = f"recv({dt}{list(t.shape)}, src={peer}, tag={tag}) [cuda ipc]"
        body = ipc.recv_body(state, buf.obj, t, peer, tag, desc, stream)
    return g._ex.submit(label, 0, body, async_op, timeout_s, p2p=True)


def _ipc_broadcast(g: Group, buf: Buffer, src: int, async_op: bool, timeout_s: float | None) -> Any:
    import torch

    t = as_torch(buf.obj)
    dt = dtype_name(t)
    label = f"broadcast({dt}{list(t.shape)}, src={src}) [cuda ipc]"
    desc = descriptor("broadcast-ipc", dt, t.numel(), src)
    stream = torch.cuda.current_stream(t.device)
    body = ipc.broadcast_body(gpu(g), buf.obj, t, src, stream)
    return g._ex.submit(label, desc, body, async_op, timeout_s)


# --- objects -----------------------------------------------------------------------------------


def broadcast_object(g: Group, obj: Any, src: Any, async_op: bool, timeout_s: float | None) -> Any:
    checks.blocking(g, "broadcast_object", async_op)
    src = checks.rank(g, src, "src", "broadcast_object")
    return g._native.broadcast_object(obj, src, async_op, timeout_s)


def allgather_object(g: Group, obj: Any, async_op: bool, timeout_s: float | None) -> Any:
    checks.blocking(g, "allgather_object", async_op)
    return g._native.allgather_object(obj, async_op, timeout_s)


def gather_object(g: Group, obj: Any, dst: Any, async_op: bool, timeout_s: float | None) -> Any:
    checks.blocking(g, "gather_object", async_op)
    dst = checks.rank(g, dst, "dst", "gather_object")
    return g._native.gather_object(obj, dst, async_op, timeout_s)


def scatter_object(g: Group, objs: Any, src: Any, async_op: bool, timeout_s: float | None) -> Any:
    checks.blocking(g, "scatter_object", async_op)
    src = checks.rank(g, src, "src", "scatter_object")
    if g.rank == src and (objs is None or len(objs) != g.world_size):
        raise InvalidArgumentError(
            f"{checks.what(g, 'scatter_object')}: the src rank must pass a sequence of "
            f"world_size={g.world_size} objects"
        )
    return g._native.scatter_object(objs, src, async_op, timeout_s)


def send_object(
    g: Group, obj: Any, dst: Any, tag: Any, async_op: bool, timeout_s: float | None
) -> Any:
    checks.blocking(g, "send_object", async_op)
    dst = checks.peer(g, dst, "dst", "send_object")
    tag = checks.tag(g, tag, "send_object")
    return g._native.send_object(obj, dst, tag, async_op, timeout_s)


def recv_object(g: Group, src: Any, tag: Any, async_op: bool, timeout_s: float | None) -> Any:
    checks.blocking(g, "recv_object", async_op)
    src = checks.peer(g, src, "src", "recv_object")
    tag = checks.tag(g, tag, "recv_object")
    return g._native.recv_object(src, tag, async_op, timeout_s)
