"""The native backend: sideband's own algorithms over shared memory and TCP.

Handed validated buffers by the edge (``api/ops.py``), it builds each op's body and runs it on
the group's ordered executor. Object ops (pickled through the guard) live here too, and serve
the other backends as their control plane (agreeing on a GPU plan, sending a store address):
they get this object, never the public ``Group``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sideband import guard
from sideband.collective.algorithms import dispatch, objects
from sideband.collective.algorithms.context import Op, as_bytes
from sideband.collective.comm.framing import KIND_P2P, OBJECT_DESC, descriptor
from sideband.collective.runtime import reduce as red
from sideband.collective.runtime.buffers import Buffer, PinnedPool
from sideband.collective.runtime.executor import Completed, Executor
from sideband.collective.types import ReduceOp
from sideband.errors import PeerOpError

# What a rank sends in place of an object it could not pickle (pickles start with 0x80).
_FAILED = b"\x00sideband: failed\x00"


class Native:
    """One group's native backend on this rank."""

    kind = "native"
    nccl_fp8 = False

    def __init__(self, ex: Executor, world_size: int, pinned: Callable[[], PinnedPool]) -> None:
        self.ex = ex
        self.rank = ex.rank
        self.n = world_size
        self._pinned = pinned  # the group's pinned pool (made on first CUDA op)
        # (label, descriptor[, reducer]) by op and arguments: making them costs more than a small
        # op's exchange, and a loop calls the same op with the same shapes. Keys hold a reduce
        # op's ``_value_``: hashing an Enum member runs Python code, an int's does not.
        self._metas: dict[tuple[Any, ...], tuple[Any, ...]] = {}

    def _meta(self, key: tuple[Any, ...], make: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...]:
        got = self._metas.get(key)
        if got is None:
            if len(self._metas) >= 512:
                self._metas.clear()
            got = self._metas[key] = make()
        return got

    def _run(
        self,
        label: str,
        desc: int,
        body: Callable[[Op], Any],
        bufs: tuple[Buffer | None, ...],
        aop: bool,
        timeout_s: float | None,
        p2p: bool = False,
    ) -> Any:
        nbytes = bufs[0].nbytes if bufs and bufs[0] is not None else 0
        for b in bufs:
            if b is not None and b.stage is not None:
                break
        else:  # no CUDA buffer: the common case, kept cheap
            return self.ex.submit(label, desc, body, aop, timeout_s, p2p, nbytes)
        staged = [(f"stage{i}", b.stage) for i, b in enumerate(bufs) if b is not None and b.stage]

        def staged_body(o: Op) -> Any:  # attach (and fill) pinned memory of staged CUDA buffers
            pool = self._pinned()
            for key, stage in staged:
                stage(pool, key)
            return body(o)

        return self.ex.submit(label, desc, staged_body, aop, timeout_s, p2p, nbytes)

    def _reducing(self, name: str, buf: Buffer, rop: ReduceOp, *dst: int) -> tuple[Any, ...]:
        """(label, descriptor, reducer) of reducing op ``name`` on ``buf`` (``dst``: reduce's)."""
        return self._meta(
            (name, buf.dtype, buf.shape, rop._value_, *dst),
            lambda: (
                f"{name}({buf.dtype}{list(buf.shape)}, {''.join(f'dst={d}, ' for d in dst)}"
                f"{rop.name})",
                descriptor(name, buf.dtype, buf.nbytes, rop.name, *dst),
                red.reducer(rop, buf.dtype),
            ),
        )

    # -- array ops (arguments validated by the edge) ---------------------------------------------
    def allreduce(self, buf: Buffer, rop: ReduceOp, aop: bool, t: float | None) -> Any:
        label, desc, f = self._reducing("allreduce", buf, rop)
        n = self.n

        def body(o: Op) -> Any:
            dispatch.allreduce(o, buf.arr, f)
            red.finish_avg(rop, buf.arr, buf.dtype, n)
            buf.finish()
            return buf.obj

        return self._run(label, desc, body, (buf,), aop, t)

    def reduce(self, buf: Buffer, dst: int, rop: ReduceOp, aop: bool, t: float | None) -> Any:
        label, desc, f = self._reducing("reduce", buf, rop, dst)
        me, n = self.rank, self.n

        def body(o: Op) -> Any:
            dispatch.reduce(o, buf.arr, dst, f)
            if me == dst:
                red.finish_avg(rop, buf.arr, buf.dtype, n)
                buf.finish()
            return buf.obj

        return self._run(label, desc, body, (buf,), aop, t)

    def broadcast(self, buf: Buffer, src: int, aop: bool, t: float | None) -> Any:
        def body(o: Op) -> Any:
            dispatch.broadcast(o, buf.arr, src)
            buf.finish()
            return buf.obj

        label, desc = self._meta(
            ("broadcast", buf.dtype, buf.shape, src),
            lambda: (
                f"broadcast({buf.dtype}{list(buf.shape)}, src={src})",
                descriptor("broadcast", buf.dtype, buf.nbytes, src),
            ),
        )
        return self._run(label, desc, body, (buf,), aop, t)

    def allgather(self, buf: Buffer, ob: Buffer, aop: bool, t: float | None) -> Any:
        n = self.n

        def body(o: Op) -> Any:
            dispatch.allgather(o, buf.arr, ob.arr.reshape(n, -1))
            ob.finish()
            return ob.obj

        label, desc = self._meta(
            ("allgather", buf.dtype, buf.shape),
            lambda: (
                f"allgather({buf.dtype}{list(buf.shape)})",
                descriptor("allgather", buf.dtype, buf.nbytes),
            ),
        )
        return self._run(label, desc, body, (buf, ob), aop, t)

    def gather(self, buf: Buffer, dst: int, ob: Buffer | None, aop: bool, t: float | None) -> Any:
        n = self.n

        def body(o: Op) -> Any:
            dispatch.gather(o, buf.arr, dst, None if ob is None else ob.arr.reshape(n, -1))
            if ob is None:
                return None
            ob.finish()
            return ob.obj

        desc = descriptor("gather", buf.dtype, buf.nbytes, dst)
        label = f"gather({buf.dtype}{list(buf.shape)}, dst={dst})"
        return self._run(label, desc, body, (buf, ob), aop, t)

    def scatter(
        self,
        buf: Buffer | None,
        row: tuple[int, ...] | None,
        src: int,
        make_out: Callable[[str, tuple[int, ...]], Buffer],
        aop: bool,
        t: float | None,
    ) -> Any:
        """The root passes ``buf`` and its ``row`` shape; ``make_out(dtype, row)`` validates or
        makes this rank's output once the root has said what it sends (others may not know)."""
        n = self.n
        metas = guard.dumps((buf.dtype, row)) if buf is not None else None

        def body(o: Op) -> Any:
            dtype, row = guard.loads(objects.broadcast_bytes(o, metas, src))
            ob = make_out(dtype, tuple(row))
            pool = None
            for key, b in (("stage0", buf), ("stage1", ob)):
                if b is not None and b.stage is not None:
                    pool = pool or self._pinned()
                    b.stage(pool, key)
            dispatch.scatter(o, None if buf is None else buf.arr.reshape(n, -1), src, ob.arr)
            ob.finish()
            return ob.obj

        nbytes = 0 if buf is None else buf.nbytes
        desc = descriptor("scatter", src)
        return self.ex.submit(f"scatter(src={src})", desc, body, aop, t, nbytes=nbytes)

    def reduce_scatter(
        self, buf: Buffer, rop: ReduceOp, ob: Buffer, aop: bool, t: float | None
    ) -> Any:
        label, desc, f = self._reducing("reduce_scatter", buf, rop)
        n = self.n

        def body(o: Op) -> Any:
            dispatch.reduce_scatter(o, buf.arr.reshape(n, -1), ob.arr, f)
            red.finish_avg(rop, ob.arr, ob.dtype, n)
            ob.finish()
            return ob.obj

        return self._run(label, desc, body, (buf, ob), aop, t)

    def alltoall(self, buf: Buffer, ob: Buffer, aop: bool, t: float | None) -> Any:
        n = self.n

        def body(o: Op) -> Any:
            dispatch.alltoall(o, buf.arr.reshape(n, -1), ob.arr.reshape(n, -1))
            ob.finish()
            return ob.obj

        desc = descriptor("alltoall", buf.dtype, buf.nbytes)
        return self._run(f"alltoall({buf.dtype}{list(buf.shape)})", desc, body, (buf, ob), aop, t)

    def barrier(self, aop: bool, t: float | None) -> Any:
        return self.ex.submit("barrier()", descriptor("barrier"), dispatch.barrier, aop, t)

    def send(self, buf: Buffer, dst: int, tag: int, aop: bool, t: float | None) -> Any:
        label, desc = self._meta(
            ("send", buf.dtype, buf.shape, dst, tag),
            lambda: (
                f"send({buf.dtype}{list(buf.shape)}, dst={dst}, tag={tag})",
                descriptor("p2p", buf.dtype),
            ),
        )

        def body(o: Op) -> None:
            o.comm.exchange([(dst, as_bytes(buf.arr))], [], KIND_P2P, tag, desc)

        return self._run(label, 0, body, (buf,), aop, t, p2p=True)

    def recv(self, buf: Buffer, src: int, tag: int, aop: bool, t: float | None) -> Any:
        label, desc = self._meta(
            ("recv", buf.dtype, buf.shape, src, tag),
            lambda: (
                f"recv({buf.dtype}{list(buf.shape)}, src={src}, tag={tag})",
                descriptor("p2p", buf.dtype),
            ),
        )

        def body(o: Op) -> Any:
            o.comm.exchange([], [(src, as_bytes(buf.arr))], KIND_P2P, tag, desc)
            buf.finish()
            return buf.obj

        return self._run(label, 0, body, (buf,), aop, t, p2p=True)

    def sendrecv(
        self, sb: Buffer, dst: int, rb: Buffer, src: int, tag: int, aop: bool, t: float | None
    ) -> Any:
        # One descriptor for both directions (exchange takes one): the dtype is checked end to
        # end when both directions move the same dtype, sizes always.
        sdesc, rdesc = descriptor("p2p", sb.dtype), descriptor("p2p", rb.dtype)
        desc = sdesc if sdesc == rdesc else 0

        def body(o: Op) -> Any:
            data = sb.arr
            if np.may_share_memory(data, rb.arr):  # out is x (MPI_Sendrecv_replace): send a copy
                data = data.copy()
            o.comm.exchange([(dst, as_bytes(data))], [(src, as_bytes(rb.arr))], KIND_P2P, tag, desc)
            rb.finish()
            return rb.obj

        label = (
            f"sendrecv({sb.dtype}{list(sb.shape)} to rank {dst}, {rb.dtype}{list(rb.shape)} from "
            f"rank {src}, tag={tag})"
        )
        return self._run(label, 0, body, (sb, rb), aop, t, p2p=True)

    # -- objects: pickled (refusing ObjectRefs) before anything is sent, unpickled only after the
    # op, from authenticated members. A rank whose object cannot be pickled still takes part: it
    # sends a failure notice in its object's place, so every rank finishes the op and raises
    # (the failing rank its own error, the others PeerOpError naming it); the group stays usable.
    def _pickle(self, obj: Any, where: str) -> tuple[bytes, BaseException | None]:
        try:
            return guard.dumps(obj, where=f"{where} on rank {self.rank}"), None
        except Exception as e:
            return _FAILED + f"{type(e).__name__}: {e}".encode(errors="replace"), e

    def _unpickle(self, data: memoryview, src: int, what: str) -> Any:
        if data[: len(_FAILED)] == _FAILED:
            raise PeerOpError(
                f"{what} on rank {self.rank}: rank {src} could not take part "
                f"({bytes(data[len(_FAILED) :]).decode(errors='replace')}); no rank used the "
                "result, and the group stays usable"
            )
        return guard.loads(data)

    def _objects(
        self,
        label: str,
        desc: int,
        body: Callable[[Op], Any],
        err: BaseException | None,
        aop: bool,
        t: float | None,
        p2p: bool = False,
    ) -> Any:
        def run(o: Op) -> Any:
            try:
                out = body(o)
            except PeerOpError as e:
                # Another rank failed: this one reports its own error if it has one.
                raise Completed(err or e) from None
            if err is not None:
                raise Completed(err)
            return out

        return self.ex.submit(label, desc, run, aop, t, p2p)

    def broadcast_object(
        self, obj: Any, src: int, aop: bool = False, t: float | None = None
    ) -> Any:
        me = self.rank
        data, err = self._pickle(obj, "broadcast_object") if me == src else (None, None)

        def body(o: Op) -> Any:
            got = objects.broadcast_bytes(o, data, src)
            return obj if me == src else self._unpickle(got, src, "broadcast_object")

        desc = descriptor("broadcast_object", src)
        return self._objects("broadcast_object", desc, body, err, aop, t)

    def allgather_object(self, obj: Any, aop: bool = False, t: float | None = None) -> Any:
        data, err = self._pickle(obj, "allgather_object")

        def body(o: Op) -> Any:
            got = objects.allgather_bytes(o, data)
            return self._gathered(got, obj, "allgather_object")

        desc = descriptor("allgather_object")
        return self._objects("allgather_object", desc, body, err, aop, t)

    def _gathered(self, got: list[memoryview], obj: Any, what: str) -> list[Any]:
        # Every notice is checked before anything is unpickled: one failing rank is reported
        # alike by all ranks.
        for p, d in enumerate(got):
            if p != self.rank and d[: len(_FAILED)] == _FAILED:
                self._unpickle(d, p, what)
        return [obj if p == self.rank else guard.loads(d) for p, d in enumerate(got)]

    def gather_object(self, obj: Any, dst: int, aop: bool, t: float | None) -> Any:
        data, err = self._pickle(obj, "gather_object")

        def body(o: Op) -> Any:
            got = objects.gather_bytes(o, data, dst)
            return None if got is None else self._gathered(got, obj, "gather_object")

        return self._objects("gather_object", descriptor("gather_object", dst), body, err, aop, t)

    def scatter_object(self, objs: Any, src: int, aop: bool, t: float | None) -> Any:
        me = self.rank
        parts: list[bytes] | None = None
        err = None
        if me == src:
            pickled = [self._pickle(x, "scatter_object") for x in objs]
            err = next((e for _, e in pickled if e is not None), None)
            parts = [d for d, _ in pickled]
            if err is not None:  # every rank hears of the failure, not only the one whose
                failed = next(d for d, e in pickled if e is not None)
                parts = [failed] * len(parts)

        def body(o: Op) -> Any:
            got = objects.scatter_bytes(o, parts, src)
            return objs[src] if me == src else self._unpickle(got, src, "scatter_object")

        desc = descriptor("scatter_object", src)
        return self._objects("scatter_object", desc, body, err, aop, t)

    def send_object(self, obj: Any, dst: int, tag: int, aop: bool, t: float | None) -> Any:
        data, err = self._pickle(obj, f"send_object to rank {dst}")

        def body(o: Op) -> None:
            o.comm.exchange([(dst, memoryview(data))], [], KIND_P2P, tag, OBJECT_DESC)

        label = f"send_object(dst={dst}, tag={tag})"
        return self._objects(label, 0, body, err, aop, t, p2p=True)

    def recv_object(self, src: int, tag: int, aop: bool, t: float | None) -> Any:
        def body(o: Op) -> Any:
            (data,) = o.comm.exchange([], [(src, None)], KIND_P2P, tag, OBJECT_DESC)
            return self._unpickle(data, src, "recv_object")

        return self._objects(f"recv_object(src={src}, tag={tag})", 0, body, None, aop, t, True)

    def hello(self, peer: int, kind: int, data: bytes, t: float | None) -> bytes:
        """Swap ``data`` with ``peer`` as a message of ``kind`` (a pairwise handshake)."""

        def body(o: Op) -> bytes:
            (got,) = o.comm.exchange([(peer, memoryview(data))], [(peer, None)], kind, 0, 0)
            return bytes(got)

        return self.ex.submit(f"hello with rank {peer}", 0, body, False, t, p2p=True)
