"""``Group``: this process's membership in a collective group, and its operations.

Every op forwards to ``api/ops.py``, which checks its arguments once and hands them to a backend;
the group holds what those need: the ordered executor, the native backend, and (when used) the
torch process group and the CUDA state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sideband import _kv
from sideband.collective.api import ops
from sideband.collective.backends.cuda import Gpu
from sideband.collective.backends.native import Native
from sideband.collective.backends.torch_ops import Torch
from sideband.collective.rendezvous import Joined, session
from sideband.collective.runtime.buffers import PinnedPool
from sideband.collective.runtime.executor import Executor
from sideband.collective.runtime.work import Work
from sideband.collective.transports import memfd
from sideband.collective.types import ReduceOp


class Group:
    """This process's membership in a collective group: its rank and the operations.

    Array ops take numpy arrays or CPU torch tensors of any numeric dtype; ops that write a result
    write it in place (``allreduce``, ``broadcast``, ``reduce`` on dst, ``recv``, ``sendrecv``,
    and any ``out``). A read-only numpy array (as Ray hands out) is refused there unless the call
    passes ``write_readonly=True``. Every op takes ``async_op`` (return a :class:`Work` instead
    of blocking; ``await`` it in async code) and ``timeout_s`` (default: the group's). Ops of one
    group run in the order they were called.
    """

    def __init__(
        self,
        name: str,
        rank: int,
        world_size: int,
        backend: str,
        timeout_s: float,
        joined: Joined,
    ) -> None:
        self.name = name
        self.rank = rank
        self.world_size = world_size
        self.backend = backend
        self.timeout_s = timeout_s
        self.session = joined.session
        self._roster = joined.roster
        self._comm = joined.comm
        self._plan = joined.plan
        self._ex = Executor(name, rank, timeout_s, joined.comm, joined.plan)
        self._native = Native(self._ex, world_size, self._pinned)
        # torch.distributed process group of backend "torch_gloo" / "torch_nccl" (made at join).
        self._torch: Torch | None = None
        # CUDA state (plan, NCCL process group, pinned buffers, IPC), made on first CUDA op.
        self._cuda: Gpu | None = None
        self._whats: dict[str, str] = {}  # checks.what, by op: made once, not per call

    def __repr__(self) -> str:
        return (
            f"Group(name={self.name!r}, rank={self.rank}, world_size={self.world_size}, "
            f"backend={self.backend!r})"
        )

    def _pinned(self) -> PinnedPool:
        return ops.gpu(self).pinned

    # -- machinery -----------------------------------------------------------------------------
    def topology(self) -> dict[str, Any]:
        """Which transport reaches each peer, which ranks share memory (``hosts``), whether
        host-aware algorithms run (``hierarchical``), and where every rank runs."""
        return {
            "rank": self.rank,
            "peers": {p: ch.kind for p, ch in sorted(self._comm.channels.items())},
            "hosts": [list(h) for h in self._plan.hosts],
            "hierarchical": self._plan.hier is not None,
            "members": [
                {k: e[k] for k in ("rank", "actor_id", "node_id", "pid")} for e in self._roster
            ],
        }

    def empty(self, shape: Any, dtype: Any = np.float32) -> np.ndarray:
        """A new uninitialised array in memory that this host's other ranks can map.

        In a group whose ranks all share one host, ops on such arrays skip a copy: a ``send``
        larger than a ring hands the receiver a reference and it copies straight out of the
        sender's array (one copy instead of two), and large broadcasts, allgathers, allreduces
        and reduce-scatters read peers' arrays with plain copies instead of cross-memory
        attach. Elsewhere it is an ordinary array. Use it like any numpy array
        (``torch.from_numpy`` shares it).
        """
        return memfd.empty(shape, dtype)

    def _close(self) -> None:
        """Leave the group here: stop ops, release backends and transports, clean the KV."""
        if self._ex.destroyed:
            return

        def release(idle: bool) -> None:
            broken = not idle or self._comm.abort_reason() is not None
            tb, self._torch = self._torch, None
            gpu, self._cuda = self._cuda, None
            if tb is not None:
                tb.broken = tb.broken or broken
                try:
                    tb.close()
                except Exception:
                    pass
            if gpu is not None:
                gpu.close(broken)
            if idle:  # a stuck op still holds the transport otherwise (it was aborted)
                self._comm.close()

        self._ex.close(release)
        try:
            _kv.delete(session.member_key(self.name, self.session, self.rank))
            if self.rank == 0:
                session.remove_session(self.name, self.session)
        except Exception:
            pass  # Ray already shut down: nothing left to clean in the GCS

    # -- ops (checks and dispatch live in api/ops.py) -------------------------------------
    def allreduce(
        self,
        x: Any,
        op: Any = ReduceOp.SUM,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
        write_readonly: bool = False,
    ) -> Any:
        """Reduce ``x`` across ranks, in place on every rank; returns ``x``."""
        return ops.allreduce(self, x, op, async_op, timeout_s, write_readonly)

    def reduce(
        self,
        x: Any,
        dst: int = 0,
        op: Any = ReduceOp.SUM,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
        write_readonly: bool = False,
    ) -> Any:
        """Reduce ``x`` across ranks into ``x`` on ``dst``; others' ``x`` are left unchanged."""
        return ops.reduce(self, x, dst, op, async_op, timeout_s, write_readonly)

    def broadcast(
        self,
        x: Any,
        src: int = 0,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
        write_readonly: bool = False,
    ) -> Any:
        """Copy ``src``'s ``x`` into ``x`` on every rank; returns ``x``."""
        return ops.broadcast(self, x, src, async_op, timeout_s, write_readonly)

    def allgather(
        self,
        x: Any,
        out: Any = None,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
        write_readonly: bool = False,
    ) -> Any:
        """Every rank's ``x``, stacked: shape ``(world_size, *x.shape)``."""
        return ops.allgather(self, x, out, async_op, timeout_s, write_readonly)

    def gather(
        self,
        x: Any,
        dst: int = 0,
        out: Any = None,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
        write_readonly: bool = False,
    ) -> Any:
        """Every rank's ``x`` stacked on ``dst`` (None on other ranks)."""
        return ops.gather(self, x, dst, out, async_op, timeout_s, write_readonly)

    def scatter(
        self,
        x: Any = None,
        src: int = 0,
        out: Any = None,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
        write_readonly: bool = False,
    ) -> Any:
        """Row ``r`` of ``src``'s ``x`` (shape ``(world_size, ...)``) to rank ``r``."""
        return ops.scatter(self, x, src, out, async_op, timeout_s, write_readonly)

    def reduce_scatter(
        self,
        x: Any,
        op: Any = ReduceOp.SUM,
        out: Any = None,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
        write_readonly: bool = False,
    ) -> Any:
        """Reduce ``x`` (shape ``(world_size, ...)``) across ranks; rank r gets row r."""
        return ops.reduce_scatter(self, x, op, out, async_op, timeout_s, write_readonly)

    def alltoall(
        self,
        x: Any,
        out: Any = None,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
        write_readonly: bool = False,
    ) -> Any:
        """Row ``p`` of ``x`` goes to rank ``p``; row ``p`` of the result came from rank ``p``."""
        return ops.alltoall(self, x, out, async_op, timeout_s, write_readonly)

    def barrier(self, *, async_op: bool = False, timeout_s: float | None = None) -> Any:
        """Return once every rank has entered the barrier."""
        return ops.barrier(self, async_op, timeout_s)

    def send(
        self,
        x: Any,
        dst: int,
        tag: int = 0,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
    ) -> Any:
        """Send ``x`` to rank ``dst``; matched by ``recv`` with the same ``tag``."""
        return ops.send(self, x, dst, tag, async_op, timeout_s)

    def recv(
        self,
        out: Any,
        src: int,
        tag: int = 0,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
        write_readonly: bool = False,
    ) -> Any:
        """Receive into ``out`` from rank ``src``; returns ``out``."""
        return ops.recv(self, out, src, tag, async_op, timeout_s, write_readonly)

    def sendrecv(
        self,
        x: Any,
        dst: int,
        out: Any,
        src: int,
        tag: int = 0,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
        write_readonly: bool = False,
    ) -> Any:
        """Send ``x`` to ``dst`` and receive into ``out`` from ``src`` at once; returns ``out``.

        MPI_Sendrecv (torch: ``batch_isend_irecv`` of one isend and one irecv): both directions
        progress together, so a ring of sendrecvs never deadlocks whatever the sizes. Peers
        match it with ``recv``/``send`` or their own ``sendrecv`` (same ``tag``); ``out`` may be
        ``x`` (sent, then replaced).
        """
        return ops.sendrecv(self, x, dst, out, src, tag, async_op, timeout_s, write_readonly)

    def isend(self, x: Any, dst: int, tag: int = 0, *, timeout_s: float | None = None) -> Work:
        """torch's name of ``send(x, dst, tag, async_op=True)``: returns its :class:`Work`."""
        return ops.send(self, x, dst, tag, True, timeout_s)

    def irecv(
        self,
        out: Any,
        src: int,
        tag: int = 0,
        *,
        timeout_s: float | None = None,
        write_readonly: bool = False,
    ) -> Work:
        """torch's name of ``recv(out, src, tag, async_op=True)``: returns its :class:`Work`."""
        return ops.recv(self, out, src, tag, True, timeout_s, write_readonly)

    def broadcast_object(
        self,
        obj: Any = None,
        src: int = 0,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
    ) -> Any:
        """``src``'s picklable ``obj`` on every rank."""
        return ops.broadcast_object(self, obj, src, async_op, timeout_s)

    def allgather_object(
        self, obj: Any, *, async_op: bool = False, timeout_s: float | None = None
    ) -> Any:
        """A list of every rank's ``obj``, in rank order."""
        return ops.allgather_object(self, obj, async_op, timeout_s)

    def gather_object(
        self, obj: Any, dst: int = 0, *, async_op: bool = False, timeout_s: float | None = None
    ) -> Any:
        """A list of every rank's ``obj`` on ``dst`` (None elsewhere)."""
        return ops.gather_object(self, obj, dst, async_op, timeout_s)

    def scatter_object(
        self,
        objs: Sequence[Any] | None = None,
        src: int = 0,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
    ) -> Any:
        """Element ``r`` of ``src``'s ``objs`` to rank ``r``."""
        return ops.scatter_object(self, objs, src, async_op, timeout_s)

    def send_object(
        self,
        obj: Any,
        dst: int,
        tag: int = 0,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
    ) -> Any:
        """Send a picklable object to rank ``dst``."""
        return ops.send_object(self, obj, dst, tag, async_op, timeout_s)

    def recv_object(
        self, src: int, tag: int = 0, *, async_op: bool = False, timeout_s: float | None = None
    ) -> Any:
        """Receive an object sent by ``send_object`` from rank ``src``."""
        return ops.recv_object(self, src, tag, async_op, timeout_s)
