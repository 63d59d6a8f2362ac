"""Argument checks and dispatch for every operation, in one place.

Each function validates the calling rank's arguments (raising :class:`InvalidArgumentError`
before anything is sent, so the group stays usable), computes the operation's *descriptor*
(a hash of what must agree across ranks: op, dtype, sizes, root, reduce op), and hands a body to
``Group._submit``, which runs it in call order under the op's deadline. Every message carries the
descriptor, so ranks that disagree raise :class:`MismatchError` instead of exchanging garbage.
"""

from __future__ import annotations

import functools
import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np

from sideband import guard
from sideband.collective import algorithms as alg
from sideband.collective import cuda
from sideband.collective.buffers import (
    _TORCH_ONLY,
    Buffer,
    as_buffer,
    dtype_from_name,
    empty_like_buffer,
)
from sideband.collective.comm import KIND_P2P
from sideband.collective.types import ReduceOp
from sideband.errors import InvalidArgumentError

if TYPE_CHECKING:
    from sideband.collective.group import Group

_OBJECT_DESC = 1


@functools.lru_cache(maxsize=1024)
def descriptor(*parts: Any) -> int:
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") | 2  # never 0 (no check) nor 1 (objects)


# --- routing ----------------------------------------------------------------------------------
# Where an op runs: torch.distributed (backend "torch_gloo", or NCCL for CUDA tensors when every
# rank has a GPU of its own, or "torch_nccl"), CUDA IPC (ranks on one GPU: send/recv,
# broadcast), or the native algorithms (CUDA tensors staged through pinned host memory). Every
# rank decides alike from what all ranks agreed (see cuda.plan).


def _torch_for(g: Group, x: Any) -> Any:
    """The TorchBackend that runs a collective on ``x``, or None (native path)."""
    if g._torch is None and type(x) is np.ndarray:
        return None  # the common case, kept cheap: small ops take microseconds
    if x is not None and cuda.is_cuda(x):
        if g._torch is not None and g._torch.kind == "nccl":
            _plan_for_nccl(g, x)
            return g._torch
        plan = cuda.plan(g, cuda.as_torch(x))
        return cuda.state(g).nccl if plan.nccl else None
    if g._torch is not None and g._torch.kind == "gloo":
        return g._torch
    return None


def _plan_for_nccl(g: Group, x: Any) -> None:
    from sideband.errors import BackendUnavailableError

    plan = cuda.plan(g, cuda.as_torch(x))
    if not plan.nccl:
        shared = [
            (a, b)
            for a in range(g.world_size)
            for b in range(a + 1, g.world_size)
            if plan.same_gpu(a, b)
        ]
        raise BackendUnavailableError(
            f"group {g.name!r}, rank {g.rank}: backend 'torch_nccl' needs one GPU per rank, but "
            f"ranks {shared[0] if shared else '?'} share a GPU (or NCCL is missing on a rank); "
            "NCCL cannot run two ranks on one GPU. Use backend='auto', which stages through "
            "pinned memory and uses CUDA IPC between ranks on one GPU."
        )


def _p2p_route(g: Group, x: Any, peer: int, timeout_s: float | None) -> tuple[str, Any]:
    """("torch", backend), ("ipc", None) or ("native", None) for a send/recv with ``peer``."""
    if g._torch is None and type(x) is np.ndarray:
        return "native", None
    if cuda.is_cuda(x):
        if g._torch is not None and g._torch.kind == "nccl":
            return "torch", g._torch
        from sideband.collective import ipc

        t = cuda.as_torch(x)
        if cuda.peer_same_gpu(g, t, peer, timeout_s) and ipc.usable():
            return "ipc", None
        # Not the NCCL group an "auto" group makes on its first CUDA collective: the other end
        # may not have run that collective yet, and both ends must take the same path.
        return "native", None
    if g._torch is not None and g._torch.kind == "gloo":
        return "torch", g._torch
    return "native", None


def _staged(body: Any, g: Group, *bufs: Buffer | None) -> Any:
    """``body`` preceded by attaching (and filling) pinned host memory of staged CUDA buffers."""
    staged = [(f"stage{i}", b) for i, b in enumerate(bufs) if b is not None and b.stage]
    if not staged:
        return body

    def run(o: alg.Op) -> Any:
        for key, b in staged:
            b.stage(g, key)
        return body(o)

    return run


# --- reductions --------------------------------------------------------------------------------

_UFUNCS = {
    ReduceOp.SUM: np.add,
    ReduceOp.PRODUCT: np.multiply,
    ReduceOp.MIN: np.minimum,
    ReduceOp.MAX: np.maximum,
    ReduceOp.AVG: np.add,
    ReduceOp.BAND: np.bitwise_and,
    ReduceOp.BOR: np.bitwise_or,
    ReduceOp.BXOR: np.bitwise_xor,
}
_BOOL_UFUNCS = {
    ReduceOp.SUM: np.logical_or,
    ReduceOp.PRODUCT: np.logical_and,
    ReduceOp.MIN: np.logical_and,
    ReduceOp.MAX: np.logical_or,
    ReduceOp.BAND: np.logical_and,
    ReduceOp.BOR: np.logical_or,
    ReduceOp.BXOR: np.logical_xor,
}


def reduce_op(op: Any) -> ReduceOp:
    """Accept sideband's ReduceOp, ray.util.collective's, or a name such as "sum"."""
    if isinstance(op, ReduceOp):
        return op
    name = getattr(op, "name", op)
    if isinstance(name, str):
        try:
            return ReduceOp[name.upper()]
        except KeyError:
            pass
    raise InvalidArgumentError(f"unknown reduce op {op!r}; use one of {[o.name for o in ReduceOp]}")


def reducer(op: ReduceOp, dtype: str, what: str) -> alg.Reducer:
    """``f(acc, other)``: acc = acc (op) other, elementwise, in place."""
    try:
        return _reducer(op, dtype)
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"{what}: {e}") from None


@functools.lru_cache(maxsize=256)
def _reducer(op: ReduceOp, dtype: str) -> alg.Reducer:
    if dtype == "bfloat16":
        import torch

        tfn = {
            ReduceOp.SUM: torch.add,
            ReduceOp.AVG: torch.add,
            ReduceOp.PRODUCT: torch.mul,
            ReduceOp.MIN: torch.minimum,
            ReduceOp.MAX: torch.maximum,
        }.get(op)
        if tfn is None:
            raise InvalidArgumentError(f"{op.name} is not defined for bfloat16")

        def bf16(acc: np.ndarray, other: np.ndarray) -> None:
            a = torch.from_numpy(acc).view(torch.bfloat16)
            tfn(a, torch.from_numpy(other).view(torch.bfloat16), out=a)

        return bf16
    if dtype in _TORCH_ONLY:
        raise InvalidArgumentError(
            f"{op.name} of {dtype} is not supported on the native backend; fp8 reduces only on "
            "NCCL >= 2.24 (CUDA tensors on one GPU per rank). Reduce in bfloat16 or float16"
        )
    kind = np.dtype(dtype).kind
    if kind == "b":
        if op is ReduceOp.AVG:
            raise InvalidArgumentError("AVG is not defined for bool arrays")
        ufunc = _BOOL_UFUNCS[op]
    else:
        if kind == "f" and op in (ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR):
            raise InvalidArgumentError(f"{op.name} needs an integer or bool dtype, got {dtype}")
        if kind in "iu" and op is ReduceOp.AVG:
            raise InvalidArgumentError(
                "AVG of integers would have to round; use SUM and divide, or a float dtype"
            )
        ufunc = _UFUNCS[op]

    def f(acc: np.ndarray, other: np.ndarray) -> None:
        ufunc(acc, other, out=acc)

    return f


def _finish_avg(op: ReduceOp, buf: Buffer, n: int) -> None:
    if op is ReduceOp.AVG:
        if buf.dtype == "bfloat16":
            import torch

            t = torch.from_numpy(buf.arr).view(torch.bfloat16)
            t.div_(n)
        else:
            np.divide(buf.arr, n, out=buf.arr)


# --- checks ------------------------------------------------------------------------------------


def _what(g: Group, op: str) -> str:
    return f"{op} on rank {g.rank} of group {g.name!r}"


def check_rank(g: Group, r: Any, role: str, op: str) -> int:
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
        raise InvalidArgumentError(f"{_what(g, op)}: {role} must be an int, got {type(r).__name__}")
    if not 0 <= int(r) < g.world_size:
        raise InvalidArgumentError(
            f"{_what(g, op)}: {role}={r} is out of range for world size {g.world_size} "
            f"(valid ranks: 0..{g.world_size - 1})"
        )
    return int(r)


def _check_peer(g: Group, r: Any, role: str, op: str) -> int:
    r = check_rank(g, r, role, op)
    if r == g.rank:
        raise InvalidArgumentError(f"{_what(g, op)}: {role} is this rank itself")
    return r


def _check_tag(g: Group, tag: Any, op: str) -> int:
    if isinstance(tag, bool) or not isinstance(tag, (int, np.integer)) or not 0 <= tag < 2**32:
        raise InvalidArgumentError(f"{_what(g, op)}: tag must be an int in [0, 2**32), got {tag!r}")
    return int(tag)


def _rows(g: Group, buf: Buffer, op: str, name: str = "x") -> tuple[int, ...]:
    """Shape of one row of an (world_size, ...) argument."""
    n = g.world_size
    if len(buf.shape) >= 1 and buf.shape[0] == n:
        return buf.shape[1:]
    if len(buf.shape) == 1 and buf.shape[0] % n == 0:
        return (buf.shape[0] // n,)
    raise InvalidArgumentError(
        f"{_what(g, op)}: {name} must have world_size={n} rows (shape ({n}, ...)) or be 1-D with "
        f"a length divisible by {n}; got shape {buf.shape}"
    )


def _out(g: Group, out: Any, like: Buffer, shape: tuple[int, ...], op: str) -> tuple[Any, Buffer]:
    if out is None:
        out = empty_like_buffer(like, shape)
    ob = as_buffer(out, f"{_what(g, op)} (out)", writable=True, fill=False)
    if ob.dtype != like.dtype or int(np.prod(ob.shape)) != int(np.prod(shape)):
        raise InvalidArgumentError(
            f"{_what(g, op)}: out must have shape {shape} and dtype {like.dtype}, got shape "
            f"{ob.shape} and dtype {ob.dtype}"
        )
    return out, ob


# --- array ops ---------------------------------------------------------------------------------


def allreduce(g: Group, x: Any, op: Any, async_op: bool, timeout_s: float | None) -> Any:
    what = _what(g, "allreduce")
    rop = reduce_op(op)
    tb = _torch_for(g, x)
    if tb is not None:
        from sideband.collective import torch_backend as tbk

        return tbk.allreduce(tb, x, rop, async_op, timeout_s)
    buf = as_buffer(x, what, writable=True)
    red = reducer(rop, buf.dtype, what)
    desc = descriptor("allreduce", buf.dtype, buf.nbytes, rop.name)

    def body(o: alg.Op) -> Any:
        alg.allreduce(o, buf.arr, red)
        _finish_avg(rop, buf, g.world_size)
        buf.finish()
        return x

    return g._submit(
        f"allreduce({buf.dtype}{list(buf.shape)}, {rop.name})",
        desc,
        _staged(body, g, buf),
        async_op,
        timeout_s,
    )


def reduce(g: Group, x: Any, dst: Any, op: Any, async_op: bool, timeout_s: float | None) -> Any:
    what = _what(g, "reduce")
    dst = check_rank(g, dst, "dst", "reduce")
    rop = reduce_op(op)
    tb = _torch_for(g, x)
    if tb is not None:
        from sideband.collective import torch_backend as tbk

        return tbk.reduce(tb, x, dst, rop, async_op, timeout_s)
    buf = as_buffer(x, what, writable=g.rank == dst)
    red = reducer(rop, buf.dtype, what)
    desc = descriptor("reduce", buf.dtype, buf.nbytes, rop.name, dst)

    def body(o: alg.Op) -> Any:
        alg.reduce(o, buf.arr, dst, red)
        if g.rank == dst:
            _finish_avg(rop, buf, g.world_size)
            buf.finish()
        return x

    return g._submit(
        f"reduce({buf.dtype}{list(buf.shape)}, dst={dst}, {rop.name})",
        desc,
        _staged(body, g, buf),
        async_op,
        timeout_s,
    )


def broadcast(g: Group, x: Any, src: Any, async_op: bool, timeout_s: float | None) -> Any:
    what = _what(g, "broadcast")
    src = check_rank(g, src, "src", "broadcast")
    tb = _torch_for(g, x)
    if tb is not None:
        from sideband.collective import torch_backend as tbk

        return tbk.broadcast(tb, x, src, async_op, timeout_s)
    if type(x) is not np.ndarray and g.world_size > 1 and cuda.is_cuda(x):
        from sideband.collective import ipc

        plan = cuda.state(g).plan  # set by _torch_for above
        if plan is not None and plan.all_same_gpu() and ipc.usable():
            t = cuda.as_torch(x)
            import torch

            label = f"broadcast({cuda.torch_dtype_name(t)}{list(t.shape)}, src={src}) [cuda ipc]"
            desc = descriptor("broadcast-ipc", cuda.torch_dtype_name(t), t.numel(), src)
            stream = torch.cuda.current_stream(t.device)
            return g._submit(
                label, desc, ipc.broadcast_body(g, x, t, src, stream), async_op, timeout_s
            )
    buf = as_buffer(x, what, writable=g.rank != src, fill=g.rank == src)
    desc = descriptor("broadcast", buf.dtype, buf.nbytes, src)

    def body(o: alg.Op) -> Any:
        alg.broadcast(o, buf.arr, src)
        buf.finish()
        return x

    return g._submit(
        f"broadcast({buf.dtype}{list(buf.shape)}, src={src})",
        desc,
        _staged(body, g, buf),
        async_op,
        timeout_s,
    )


def allgather(g: Group, x: Any, out: Any, async_op: bool, timeout_s: float | None) -> Any:
    what = _what(g, "allgather")
    tb = _torch_for(g, x)
    if tb is not None:
        from sideband.collective import torch_backend as tbk

        return tbk.allgather(tb, x, out, async_op, timeout_s)
    buf = as_buffer(x, what, writable=False)
    out, ob = _out(g, out, buf, (g.world_size, *buf.shape), "allgather")
    desc = descriptor("allgather", buf.dtype, buf.nbytes)

    def body(o: alg.Op) -> Any:
        alg.allgather(o, buf.arr, ob.arr.reshape(g.world_size, -1))
        ob.finish()
        return out

    return g._submit(
        f"allgather({buf.dtype}{list(buf.shape)})",
        desc,
        _staged(body, g, buf, ob),
        async_op,
        timeout_s,
    )


def gather(g: Group, x: Any, dst: Any, out: Any, async_op: bool, timeout_s: float | None) -> Any:
    what = _what(g, "gather")
    dst = check_rank(g, dst, "dst", "gather")
    tb = _torch_for(g, x)
    if tb is not None:
        from sideband.collective import torch_backend as tbk

        return tbk.gather(tb, x, dst, out, async_op, timeout_s)
    buf = as_buffer(x, what, writable=False)
    ob = None
    if g.rank == dst:
        out, ob = _out(g, out, buf, (g.world_size, *buf.shape), "gather")
    desc = descriptor("gather", buf.dtype, buf.nbytes, dst)

    def body(o: alg.Op) -> Any:
        alg.gather(o, buf.arr, dst, None if ob is None else ob.arr.reshape(g.world_size, -1))
        if ob is None:
            return None
        ob.finish()
        return out

    return g._submit(
        f"gather({buf.dtype}{list(buf.shape)}, dst={dst})",
        desc,
        _staged(body, g, buf, ob),
        async_op,
        timeout_s,
    )


def scatter(g: Group, x: Any, src: Any, out: Any, async_op: bool, timeout_s: float | None) -> Any:
    what = _what(g, "scatter")
    src = check_rank(g, src, "src", "scatter")
    tb = _torch_for(g, x if g.rank == src else out)
    if tb is not None:
        from sideband.collective import torch_backend as tbk

        return tbk.scatter(tb, x, src, out, async_op, timeout_s)
    buf = None
    metas = None
    if g.rank == src:
        if x is None:
            raise InvalidArgumentError(f"{what}: the src rank must pass the array to scatter")
        buf = as_buffer(x, what, writable=False)
        row = _rows(g, buf, "scatter")
        metas = guard.dumps((buf.dtype, row))
    desc = descriptor("scatter", src)

    def body(o: alg.Op) -> Any:
        nonlocal out
        # First the chunk's dtype and shape (non-src ranks may not know them), then the data.
        dtype, row = guard.loads(alg.broadcast_bytes(o, metas, src))
        like = buf if buf is not None else _template(dtype, out)
        out, ob = _out(g, out, like, tuple(row), "scatter")
        if buf is not None and buf.stage is not None:
            buf.stage(g, "stage0")
        if ob.stage is not None:
            ob.stage(g, "stage1")
        arr = None if buf is None else buf.arr.reshape(g.world_size, -1)
        alg.scatter(o, arr, src, ob.arr)
        ob.finish()
        return out

    return g._submit(f"scatter(src={src})", desc, body, async_op, timeout_s)


def _template(dtype: str, out: Any) -> Buffer:
    """A stand-in Buffer describing the dtype (and array kind) a non-src rank will receive."""
    if out is not None:
        ob = as_buffer(out, "scatter (out)", writable=True)
        if ob.dtype != dtype:
            raise InvalidArgumentError(f"scatter: out has dtype {ob.dtype}, src sends {dtype}")
        return ob
    if dtype in _TORCH_ONLY:
        import torch

        return as_buffer(torch.empty(0, dtype=getattr(torch, dtype)), "scatter", writable=False)
    return as_buffer(np.empty(0, dtype=dtype_from_name(dtype)), "scatter", writable=False)


def reduce_scatter(
    g: Group, x: Any, op: Any, out: Any, async_op: bool, timeout_s: float | None
) -> Any:
    what = _what(g, "reduce_scatter")
    rop = reduce_op(op)
    tb = _torch_for(g, x)
    if tb is not None:
        from sideband.collective import torch_backend as tbk

        return tbk.reduce_scatter(tb, x, rop, out, async_op, timeout_s)
    buf = as_buffer(x, what, writable=False)
    red = reducer(rop, buf.dtype, what)
    row = _rows(g, buf, "reduce_scatter")
    out, ob = _out(g, out, buf, row, "reduce_scatter")
    desc = descriptor("reduce_scatter", buf.dtype, buf.nbytes, rop.name)

    def body(o: alg.Op) -> Any:
        alg.reduce_scatter(o, buf.arr.reshape(g.world_size, -1), ob.arr, red)
        _finish_avg(rop, ob, g.world_size)
        ob.finish()
        return out

    return g._submit(
        f"reduce_scatter({buf.dtype}{list(buf.shape)}, {rop.name})",
        desc,
        _staged(body, g, buf, ob),
        async_op,
        timeout_s,
    )


def alltoall(g: Group, x: Any, out: Any, async_op: bool, timeout_s: float | None) -> Any:
    what = _what(g, "alltoall")
    tb = _torch_for(g, x)
    if tb is not None:
        from sideband.collective import torch_backend as tbk

        return tbk.alltoall(tb, x, out, async_op, timeout_s)
    buf = as_buffer(x, what, writable=False)
    _rows(g, buf, "alltoall")
    out, ob = _out(g, out, buf, buf.shape, "alltoall")
    desc = descriptor("alltoall", buf.dtype, buf.nbytes)

    def body(o: alg.Op) -> Any:
        n = g.world_size
        alg.alltoall(o, buf.arr.reshape(n, -1), ob.arr.reshape(n, -1))
        ob.finish()
        return out

    return g._submit(
        f"alltoall({buf.dtype}{list(buf.shape)})",
        desc,
        _staged(body, g, buf, ob),
        async_op,
        timeout_s,
    )


def barrier(g: Group, async_op: bool, timeout_s: float | None) -> Any:
    return g._submit("barrier()", descriptor("barrier"), alg.barrier, async_op, timeout_s)


# --- point to point ----------------------------------------------------------------------------


def _ipc_p2p(
    g: Group, kind: str, x: Any, peer: int, tag: int, async_op: bool, timeout_s: float | None
) -> Any:
    """``send`` or ``recv`` of a CUDA tensor by CUDA IPC (both ranks on one GPU)."""
    import torch

    from sideband.collective import ipc

    t = cuda.as_torch(x)
    dt = cuda.torch_dtype_name(t)
    desc = descriptor("p2p-ipc", dt)
    stream = torch.cuda.current_stream(t.device)
    if kind == "send":
        label = f"send({dt}{list(t.shape)}, dst={peer}, tag={tag}) [cuda ipc]"
        body = ipc.send_body(g, t, peer, tag, desc, stream)
    else:
        label = f"recv({dt}{list(t.shape)}, src={peer}, tag={tag}) [cuda ipc]"
        body = ipc.recv_body(g, x, t, peer, tag, desc, stream)
    return g._submit(label, 0, body, async_op, timeout_s, p2p=True)


def send(g: Group, x: Any, dst: Any, tag: Any, async_op: bool, timeout_s: float | None) -> Any:
    dst = _check_peer(g, dst, "dst", "send")
    tag = _check_tag(g, tag, "send")
    route, tb = _p2p_route(g, x, dst, timeout_s)
    if route == "torch":
        from sideband.collective import torch_backend as tbk

        return tbk.send(tb, x, dst, tag, async_op, timeout_s)
    if route == "ipc":
        return _ipc_p2p(g, "send", x, dst, tag, async_op, timeout_s)
    buf = as_buffer(x, _what(g, "send"), writable=False)
    desc = descriptor("p2p", buf.dtype)

    def body(o: alg.Op) -> None:
        o.comm.exchange([(dst, alg._bytes(buf.arr))], [], KIND_P2P, tag, desc)

    return g._submit(
        f"send({buf.dtype}{list(buf.shape)}, dst={dst}, tag={tag})",
        0,
        _staged(body, g, buf),
        async_op,
        timeout_s,
        p2p=True,
    )


def recv(g: Group, out: Any, src: Any, tag: Any, async_op: bool, timeout_s: float | None) -> Any:
    src = _check_peer(g, src, "src", "recv")
    tag = _check_tag(g, tag, "recv")
    route, tb = _p2p_route(g, out, src, timeout_s)
    if route == "torch":
        from sideband.collective import torch_backend as tbk

        return tbk.recv(tb, out, src, tag, async_op, timeout_s)
    if route == "ipc":
        return _ipc_p2p(g, "recv", out, src, tag, async_op, timeout_s)
    buf = as_buffer(out, _what(g, "recv"), writable=True, fill=False)
    desc = descriptor("p2p", buf.dtype)

    def body(o: alg.Op) -> Any:
        o.comm.exchange([], [(src, alg._bytes(buf.arr))], KIND_P2P, tag, desc)
        buf.finish()
        return out

    return g._submit(
        f"recv({buf.dtype}{list(buf.shape)}, src={src}, tag={tag})",
        0,
        _staged(body, g, buf),
        async_op,
        timeout_s,
        p2p=True,
    )


# --- objects -----------------------------------------------------------------------------------
# Objects are pickled (refusing ObjectRefs) before anything is sent, so a bad object leaves the
# group usable, and unpickled only after the op: every peer is an authenticated member.


def broadcast_object(g: Group, obj: Any, src: Any, async_op: bool, timeout_s: float | None) -> Any:
    src = check_rank(g, src, "src", "broadcast_object")
    data = guard.dumps(obj, where=f"broadcast_object on rank {g.rank}") if g.rank == src else None

    def body(o: alg.Op) -> Any:
        got = alg.broadcast_bytes(o, data, src)
        return obj if g.rank == src else guard.loads(got)

    return g._submit(
        "broadcast_object", descriptor("broadcast_object", src), body, async_op, timeout_s
    )


def allgather_object(g: Group, obj: Any, async_op: bool, timeout_s: float | None) -> Any:
    data = guard.dumps(obj, where=f"allgather_object on rank {g.rank}")

    def body(o: alg.Op) -> Any:
        got = alg.allgather_bytes(o, data)
        return [obj if p == g.rank else guard.loads(d) for p, d in enumerate(got)]

    return g._submit("allgather_object", descriptor("allgather_object"), body, async_op, timeout_s)


def gather_object(g: Group, obj: Any, dst: Any, async_op: bool, timeout_s: float | None) -> Any:
    dst = check_rank(g, dst, "dst", "gather_object")
    data = guard.dumps(obj, where=f"gather_object on rank {g.rank}")

    def body(o: alg.Op) -> Any:
        got = alg.gather_bytes(o, data, dst)
        if got is None:
            return None
        return [obj if p == g.rank else guard.loads(d) for p, d in enumerate(got)]

    return g._submit("gather_object", descriptor("gather_object", dst), body, async_op, timeout_s)


def scatter_object(g: Group, objs: Any, src: Any, async_op: bool, timeout_s: float | None) -> Any:
    src = check_rank(g, src, "src", "scatter_object")
    parts = None
    if g.rank == src:
        if objs is None or len(objs) != g.world_size:
            raise InvalidArgumentError(
                f"{_what(g, 'scatter_object')}: the src rank must pass a sequence of "
                f"world_size={g.world_size} objects"
            )
        parts = [guard.dumps(x, where=f"scatter_object on rank {g.rank}") for x in objs]

    def body(o: alg.Op) -> Any:
        got = alg.scatter_bytes(o, parts, src)
        return objs[src] if g.rank == src else guard.loads(got)

    return g._submit("scatter_object", descriptor("scatter_object", src), body, async_op, timeout_s)


def send_object(
    g: Group, obj: Any, dst: Any, tag: Any, async_op: bool, timeout_s: float | None
) -> Any:
    dst = _check_peer(g, dst, "dst", "send_object")
    tag = _check_tag(g, tag, "send_object")
    data = guard.dumps(obj, where=f"send_object from rank {g.rank} to rank {dst}")

    def body(o: alg.Op) -> None:
        o.comm.exchange([(dst, memoryview(data))], [], KIND_P2P, tag, _OBJECT_DESC)

    return g._submit(f"send_object(dst={dst}, tag={tag})", 0, body, async_op, timeout_s, p2p=True)


def recv_object(g: Group, src: Any, tag: Any, async_op: bool, timeout_s: float | None) -> Any:
    src = _check_peer(g, src, "src", "recv_object")
    tag = _check_tag(g, tag, "recv_object")

    def body(o: alg.Op) -> Any:
        (data,) = o.comm.exchange([], [(src, None)], KIND_P2P, tag, _OBJECT_DESC)
        return guard.loads(data)

    return g._submit(f"recv_object(src={src}, tag={tag})", 0, body, async_op, timeout_s, p2p=True)
