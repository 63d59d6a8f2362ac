"""torch's collectives as adaptors: each op turns validated buffers into flat torch tensors,
issues the process group's call and finishes (AVG, write-backs) when it completes.

Arguments were checked once at the edge (``api/checks.py``, ``runtime/reduce.py``); data-moving
ops run on byte views, so every dtype (fp8, unsigned ints, bool) moves as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sideband.collective.backends.torch_pg import TorchBackend, _torch, torch_reduce_op
from sideband.collective.comm.framing import descriptor
from sideband.collective.runtime.arrays import FP8, as_torch, dtype_name
from sideband.collective.runtime.buffers import Buffer
from sideband.collective.runtime.reduce import BOOL_AS_UINT8
from sideband.collective.types import ReduceOp


def flat_tensor(buf: Buffer, writable: bool) -> tuple[Any, Callable[[], None] | None]:
    """A flat contiguous torch tensor sharing ``buf``'s memory, and a write-back for
    non-contiguous in-place results (None when not needed)."""
    torch, _ = _torch()
    x = buf.obj
    if buf.cuda:
        t = as_torch(x).detach()
        if t.is_contiguous():
            return t.view(-1), None
        flat = t.contiguous().view(-1)

        def back() -> None:
            t.copy_(flat.view(t.shape))

        return flat, back if writable else None
    if isinstance(x, torch.Tensor) and x.is_contiguous():
        return x.detach().view(-1), None
    arr = buf.arr
    if not arr.flags.writeable:
        # torch.from_numpy warns on read-only arrays; this one is only read.
        arr = np.array(arr, copy=True)
    t = torch.from_numpy(arr)
    if buf.dtype == "bfloat16" or buf.dtype in FP8:
        t = t.view(getattr(torch, buf.dtype))
    return t, buf.writeback


def _finisher(back: Callable[[], None] | None, result: Any) -> Callable[[], Any]:
    """What an op that only writes back (non-contiguous outputs) does when it completes."""

    def finish() -> Any:
        if back:
            back()
        return result

    return finish


def _desc(op: str, t: Any, *extra: Any) -> int:
    return descriptor("torch", op, dtype_name(t), t.numel(), *extra)


def _reduce_view(t: Any, op: ReduceOp) -> tuple[Any, ReduceOp]:
    """Bool reduces as uint8 (torch's backends have no logical ops): see BOOL_AS_UINT8."""
    torch, _ = _torch()
    if t.dtype != torch.bool:
        return t, op
    return t.view(torch.uint8), BOOL_AS_UINT8[op]


def _bytes(t: Any) -> Any:
    torch, _ = _torch()
    return t.view(torch.uint8) if t.dtype != torch.uint8 else t


def _stream(t: Any) -> Any:
    torch, _ = _torch()
    return torch.cuda.current_stream(t.device) if t.device.type == "cuda" else None


def _avg(t: Any, op: ReduceOp, n: int) -> None:
    if op is ReduceOp.AVG:
        t.div_(n)


class Torch(TorchBackend):
    """A torch process group running a sideband group's array ops."""

    def _go(
        self,
        label: str,
        desc: int,
        issue: Callable[[], Any],
        finish: Callable[[], Any],
        aop: bool,
        t: float | None,
        ref: Any,
        p2p: bool = False,
        peers: list[int] | None = None,
    ) -> Any:
        nbytes = ref.numel() * ref.element_size()
        return self.run(label, desc, issue, finish, aop, t, _stream(ref), p2p, peers, nbytes)

    def _reduction(
        self,
        name: str,
        buf: Buffer,
        rop: ReduceOp,
        x_t: Any,
        call: Callable[[Any, Any], Any],
        finish: Callable[[], Any],
        aop: bool,
        t: float | None,
        dst: int | None = None,
    ) -> Any:
        """A reducing op: ``call(tensor, torch reduce op)`` issues it on the (bool-as-uint8)
        view of ``x_t``."""
        _, dist = _torch()
        rt, top = _reduce_view(x_t, rop)

        def issue() -> Any:
            return call(rt, torch_reduce_op(dist, top))

        at = "" if dst is None else f", dst={dst}"
        label = f"{name}({buf.dtype}{list(buf.shape)}{at}, {rop.name})"
        extra = () if dst is None else (dst,)
        return self._go(label, _desc(name, x_t, rop.name, *extra), issue, finish, aop, t, x_t)

    def allreduce(self, buf: Buffer, rop: ReduceOp, aop: bool, t: float | None) -> Any:
        _, dist = _torch()
        x_t, back = flat_tensor(buf, writable=True)

        def call(rt: Any, top: Any) -> Any:
            o = dist.AllreduceOptions()
            o.reduceOp = top
            return self.pg.allreduce([rt], o)

        def finish() -> Any:
            _avg(x_t, rop, self.n)
            if back:
                back()
            return buf.obj

        return self._reduction("allreduce", buf, rop, x_t, call, finish, aop, t)

    def reduce(self, buf: Buffer, dst: int, rop: ReduceOp, aop: bool, t: float | None) -> Any:
        _, dist = _torch()
        root = self.rank == dst
        x_t, back = flat_tensor(buf, writable=root)
        # torch's backends may use a non-root rank's input as scratch: those reduce a copy.
        work_t = x_t if root else x_t.clone()

        def call(rt: Any, top: Any) -> Any:
            o = dist.ReduceOptions()
            o.reduceOp = top
            o.rootRank = dst
            o.rootTensor = 0
            return self.pg.reduce([rt], o)

        def finish() -> Any:
            if root:
                _avg(x_t, rop, self.n)
                if back:
                    back()
            return buf.obj

        return self._reduction("reduce", buf, rop, work_t, call, finish, aop, t, dst)

    def broadcast(self, buf: Buffer, src: int, aop: bool, t: float | None) -> Any:
        _, dist = _torch()
        x_t, back = flat_tensor(buf, writable=self.rank != src)

        def issue() -> Any:
            o = dist.BroadcastOptions()
            o.rootRank = src
            o.rootTensor = 0
            return self.pg.broadcast([_bytes(x_t)], o)

        finish = _finisher(back, buf.obj)

        label = f"broadcast({buf.dtype}{list(buf.shape)}, src={src})"
        return self._go(label, _desc("broadcast", x_t, src), issue, finish, aop, t, x_t)

    def allgather(self, buf: Buffer, ob: Buffer, aop: bool, t: float | None) -> Any:
        x_t, _ = flat_tensor(buf, writable=False)
        o_t, back = flat_tensor(ob, writable=True)
        rows = list(_bytes(o_t).view(self.n, -1).unbind(0))

        def issue() -> Any:
            return self.pg.allgather([rows], [_bytes(x_t)])

        finish = _finisher(back, ob.obj)

        label = f"allgather({buf.dtype}{list(buf.shape)})"
        return self._go(label, _desc("allgather", x_t), issue, finish, aop, t, x_t)

    def gather(self, buf: Buffer, dst: int, ob: Buffer | None, aop: bool, t: float | None) -> Any:
        _, dist = _torch()
        x_t, _ = flat_tensor(buf, writable=False)
        back = None
        rows: list[Any] = []
        if ob is not None:
            o_t, back = flat_tensor(ob, writable=True)
            rows = list(_bytes(o_t).view(self.n, -1).unbind(0))

        def issue() -> Any:
            o = dist.GatherOptions()
            o.rootRank = dst
            return self.pg.gather([rows] if ob is not None else [], [_bytes(x_t)], o)

        def finish() -> Any:
            if ob is None:
                return None
            if back:
                back()
            return ob.obj

        label = f"gather({buf.dtype}{list(buf.shape)}, dst={dst})"
        return self._go(label, _desc("gather", x_t, dst), issue, finish, aop, t, x_t)

    def scatter(
        self,
        buf: Buffer | None,
        row: tuple[int, ...] | None,
        src: int,
        make_out: Callable[[str, tuple[int, ...]], Buffer],
        aop: bool,
        t: float | None,
    ) -> Any:
        _, dist = _torch()
        meta = (buf.dtype, row) if buf is not None else None
        # Non-src ranks learn dtype and row shape first (over the native group), then the data.
        dtype, got_row = self.native.broadcast_object(meta, src, False, t)
        ob = make_out(dtype, tuple(got_row))
        o_t, back = flat_tensor(ob, writable=True)
        x_t = flat_tensor(buf, writable=False)[0] if buf is not None else None
        rows = list(_bytes(x_t).view(self.n, -1).unbind(0)) if x_t is not None else []

        def issue() -> Any:
            o = dist.ScatterOptions()
            o.rootRank = src
            return self.pg.scatter([_bytes(o_t)], [rows] if buf is not None else [], o)

        finish = _finisher(back, ob.obj)

        desc = _desc("scatter", o_t, src)
        return self._go(f"scatter(src={src})", desc, issue, finish, aop, t, o_t)

    def reduce_scatter(
        self, buf: Buffer, rop: ReduceOp, ob: Buffer, aop: bool, t: float | None
    ) -> Any:
        _, dist = _torch()
        x_t, _ = flat_tensor(buf, writable=False)
        o_t, back = flat_tensor(ob, writable=True)
        n = self.n
        if self.kind == "nccl":
            rot, _ = _reduce_view(o_t, rop)

            def call(rt: Any, top: Any) -> Any:
                o = dist.ReduceScatterOptions()
                o.reduceOp = top
                return self.pg._reduce_scatter_base(rot, rt, o)

            def finish() -> Any:
                _avg(o_t, rop, n)
                if back:
                    back()
                return ob.obj

            return self._reduction("reduce_scatter", buf, rop, x_t, call, finish, aop, t)
        # gloo: all-reduce a copy and keep this rank's row (gloo's reduce_scatter is partial).
        acc = x_t.clone()

        def call_gloo(rt: Any, top: Any) -> Any:
            o = dist.AllreduceOptions()
            o.reduceOp = top
            return self.pg.allreduce([rt], o)

        def finish_gloo() -> Any:
            o_t.copy_(acc.view(n, -1)[self.rank])
            _avg(o_t, rop, n)
            if back:
                back()
            return ob.obj

        return self._reduction("reduce_scatter", buf, rop, acc, call_gloo, finish_gloo, aop, t)

    def alltoall(self, buf: Buffer, ob: Buffer, aop: bool, t: float | None) -> Any:
        _, dist = _torch()
        x_t, _ = flat_tensor(buf, writable=False)
        o_t, back = flat_tensor(ob, writable=True)

        def issue() -> Any:
            return self.pg.alltoall_base(_bytes(o_t), _bytes(x_t), [], [], dist.AllToAllOptions())

        finish = _finisher(back, ob.obj)

        label = f"alltoall({buf.dtype}{list(buf.shape)})"
        return self._go(label, _desc("alltoall", x_t), issue, finish, aop, t, x_t)

    def send(self, buf: Buffer, dst: int, tag: int, aop: bool, t: float | None) -> Any:
        x_t, _ = flat_tensor(buf, writable=False)
        ttag = tag & 0x7FFFFFFF  # a torch tag is a C int: fold sideband's 32-bit tags into it

        def issue() -> Any:
            return self.pg.send([_bytes(x_t)], dst, ttag)

        label = f"send({buf.dtype}{list(buf.shape)}, dst={dst}, tag={tag})"
        return self._go(label, 0, issue, lambda: None, aop, t, x_t, True, [dst])

    def recv(self, buf: Buffer, src: int, tag: int, aop: bool, t: float | None) -> Any:
        x_t, back = flat_tensor(buf, writable=True)
        ttag = tag & 0x7FFFFFFF

        def issue() -> Any:
            return self.pg.recv([_bytes(x_t)], src, ttag)

        finish = _finisher(back, buf.obj)

        label = f"recv({buf.dtype}{list(buf.shape)}, src={src}, tag={tag})"
        return self._go(label, 0, issue, finish, aop, t, x_t, True, [src])
