"""Groups: the per-process table, the ``Group`` a rank uses, and the driver's ``GroupHandle``."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sideband import _kv
from sideband.collective import ops, rendezvous
from sideband.collective.algorithms import Op
from sideband.collective.types import ReduceOp
from sideband.collective.work import Work
from sideband.errors import (
    CollectiveError,
    GroupBrokenError,
    GroupNotFoundError,
    InvalidArgumentError,
    PeerLostError,
    RendezvousError,
    SidebandError,
)

_GROUPS: dict[str, Group] = {}
_TABLE_LOCK = threading.Lock()
_USED_DECLARATIONS: set[str] = set()

_BACKENDS = {
    "auto": "auto",
    "native": "auto",
    "gloo": "auto",
    "shm": "shm",
    "tcp": "tcp",
    # torch.distributed process groups under sideband's rendezvous (torch_backend.py)
    "torch_gloo": "torch_gloo",
    "torch_nccl": "torch_nccl",
    "nccl": "torch_nccl",
}
_TORCH_KINDS = {"torch_gloo": "gloo", "torch_nccl": "nccl"}


def _backend(backend: Any) -> str:
    """The canonical backend name. Availability of torch's backends is checked where the group
    forms (in each member: the driver may have no GPU)."""
    name = getattr(backend, "value", backend)
    if isinstance(name, str):
        name = name.lower()
        if name in _BACKENDS:
            return _BACKENDS[name]
    raise InvalidArgumentError(f"unknown backend {backend!r}; use one of {sorted(_BACKENDS)}")


def backend_available(backend: Any) -> bool:
    """Whether ``backend`` can run in this process (torch's need torch; NCCL a CUDA device)."""
    try:
        be = _backend(backend)
    except InvalidArgumentError:
        return False
    kind = _TORCH_KINDS.get(be)
    if kind is None:
        return True
    from sideband.collective import torch_backend

    return torch_backend.available(kind)[0]


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or "/" in name:
        raise InvalidArgumentError(
            f"group name must be a non-empty string without '/', got {name!r}"
        )
    return name


def _check_world(world_size: Any, rank: Any) -> tuple[int, int]:
    for label, v in (("world_size", world_size), ("rank", rank)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise InvalidArgumentError(f"{label} must be an int, got {type(v).__name__}")
    if world_size < 1:
        raise InvalidArgumentError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise InvalidArgumentError(f"rank {rank} is out of range for world_size {world_size}")
    return int(world_size), int(rank)


class Group:
    """This process's membership in a collective group: its rank and the operations.

    Array ops take numpy arrays or CPU torch tensors of any numeric dtype; ops that write a result
    write it in place (``allreduce``, ``broadcast``, ``reduce`` on dst, ``recv``). Every op takes
    ``async_op`` (return a :class:`Work` instead of blocking) and ``timeout_s`` (default: the
    group's). Ops of one group run in the order they were called.
    """

    def __init__(
        self,
        name: str,
        rank: int,
        world_size: int,
        backend: str,
        timeout_s: float,
        joined: rendezvous.Joined,
    ) -> None:
        self.name = name
        self.rank = rank
        self.world_size = world_size
        self.backend = backend
        self.timeout_s = timeout_s
        self.session = joined.session
        self._roster = joined.roster
        self._comm = joined.comm
        self._seq = 0
        self._op_lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._last: concurrent.futures.Future | None = None
        self._scratch_bufs: dict[str, np.ndarray] = {}
        self._destroyed = False
        # torch.distributed process group of backend "torch_gloo" / "torch_nccl" (made at join).
        self._torch: Any = None
        # CUDA state (plan, NCCL process group, pinned buffers, IPC), made on first CUDA op.
        self._cuda: Any = None

    def __repr__(self) -> str:
        return (
            f"Group(name={self.name!r}, rank={self.rank}, world_size={self.world_size}, "
            f"backend={self.backend!r})"
        )

    # -- machinery -----------------------------------------------------------------------------
    def topology(self) -> dict[str, Any]:
        """Which transport reaches each peer, which ranks share memory (``hosts``), whether
        host-aware algorithms run (``hierarchical``), and where every rank runs."""
        return {
            "rank": self.rank,
            "peers": {p: ch.kind for p, ch in sorted(self._comm.channels.items())},
            "hosts": [list(h) for h in self._comm.hosts],
            "hierarchical": self._comm.hier is not None,
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
        from sideband.collective import shared

        return shared.empty(shape, dtype)

    def _scratch(self, key: str, nbytes: int) -> np.ndarray:
        # Reused across ops: the hot path allocates nothing once buffers have grown to size.
        buf = self._scratch_bufs.get(key)
        if buf is None or buf.nbytes < nbytes:
            buf = np.empty((nbytes + 63) // 64 * 64, dtype=np.uint8)
            self._scratch_bufs[key] = buf
        return buf

    def _check_usable(self) -> None:
        if self._destroyed:
            raise GroupNotFoundError(
                f"group {self.name!r} was destroyed on rank {self.rank}; create it again"
            )
        self._comm.raise_if_aborted()

    def _submit(
        self,
        label: str,
        desc: int,
        body: Callable[[Op], Any],
        async_op: bool,
        timeout_s: float | None,
        p2p: bool = False,
    ) -> Any:
        self._check_usable()
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        if timeout <= 0:
            raise InvalidArgumentError(f"timeout_s must be > 0, got {timeout_s}")
        comm = self._comm

        def run() -> Any:
            with self._op_lock:
                self._check_usable()
                # Numbered in execution order, which is call order (async ops queue in order).
                # Point-to-point ops involve two ranks only: they must not advance the number
                # that every rank's collectives agree on.
                seq = self._seq
                if not p2p:
                    self._seq += 1
                comm.begin(label, None if p2p else seq, timeout, desc)
                try:
                    return body(Op(comm, seq & 0xFFFFFFFF, desc, self._scratch))
                except CollectiveError as e:
                    # Whatever fails once messages may have moved leaves the streams out of
                    # step: the group is broken on every rank (argument errors are raised
                    # before this point and leave it usable).
                    comm.abort(e)
                    raise
                except (ConnectionError, OSError) as e:
                    err = PeerLostError(f"{comm.describe()}: {e}")
                    comm.abort(err)
                    raise err from e
                except BaseException as e:
                    comm.abort(e)
                    raise
                finally:
                    comm.end()

        if async_op or (self._last is not None and not self._last.done()):
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix=f"sideband-{self.name}"
                )
            fut = self._executor.submit(run)
            self._last = fut
            if async_op:
                return Work(fut, f"{label} on rank {self.rank} of group {self.name!r}")
            return fut.result()
        return run()

    def _close_torch(self) -> None:
        """Release the torch process groups, CUDA IPC mappings and pinned buffers."""
        broken = self._comm.abort_reason() is not None
        tb, self._torch = self._torch, None
        st, self._cuda = self._cuda, None
        for b in (tb, getattr(st, "nccl", None)):
            if b is not None:
                b.broken = b.broken or broken
                try:
                    b.close()
                except Exception:
                    pass
        if st is not None:
            if st.ipc is not None:
                try:
                    st.ipc.close()
                except Exception:
                    pass
            st.pinned.clear()

    def _close(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        torch_state = self._torch is not None or self._cuda is not None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._op_lock.acquire(timeout=5):
            try:
                if torch_state:
                    self._close_torch()  # no op runs now: the process group may shut down
                self._comm.close()
            finally:
                self._op_lock.release()
        else:
            # An op is stuck in a wait: abort it so it raises, and let the transport go.
            self._comm.abort(GroupBrokenError("group destroyed while an op was running"))
            if torch_state:
                self._close_torch()  # broken now: torch's process group is aborted, not joined
        try:
            _kv.delete(f"group/{self.name}/{self.session}/m/{self.rank}")
            if self.rank == 0:
                rendezvous.remove_session(self.name, self.session)
        except Exception:
            pass  # Ray already shut down: nothing left to clean in the GCS

    # -- ops (validation and dispatch live in ops.py) -----------------------------------------
    def allreduce(
        self,
        x: Any,
        op: Any = ReduceOp.SUM,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
    ) -> Any:
        """Reduce ``x`` across ranks, in place on every rank; returns ``x``."""
        return ops.allreduce(self, x, op, async_op, timeout_s)

    def reduce(
        self,
        x: Any,
        dst: int = 0,
        op: Any = ReduceOp.SUM,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
    ) -> Any:
        """Reduce ``x`` across ranks into ``x`` on ``dst``; others' ``x`` are left unchanged."""
        return ops.reduce(self, x, dst, op, async_op, timeout_s)

    def broadcast(
        self, x: Any, src: int = 0, *, async_op: bool = False, timeout_s: float | None = None
    ) -> Any:
        """Copy ``src``'s ``x`` into ``x`` on every rank; returns ``x``."""
        return ops.broadcast(self, x, src, async_op, timeout_s)

    def allgather(
        self, x: Any, out: Any = None, *, async_op: bool = False, timeout_s: float | None = None
    ) -> Any:
        """Every rank's ``x``, stacked: shape ``(world_size, *x.shape)``."""
        return ops.allgather(self, x, out, async_op, timeout_s)

    def gather(
        self,
        x: Any,
        dst: int = 0,
        out: Any = None,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
    ) -> Any:
        """Every rank's ``x`` stacked on ``dst`` (None on other ranks)."""
        return ops.gather(self, x, dst, out, async_op, timeout_s)

    def scatter(
        self,
        x: Any = None,
        src: int = 0,
        out: Any = None,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
    ) -> Any:
        """Row ``r`` of ``src``'s ``x`` (shape ``(world_size, ...)``) to rank ``r``."""
        return ops.scatter(self, x, src, out, async_op, timeout_s)

    def reduce_scatter(
        self,
        x: Any,
        op: Any = ReduceOp.SUM,
        out: Any = None,
        *,
        async_op: bool = False,
        timeout_s: float | None = None,
    ) -> Any:
        """Reduce ``x`` (shape ``(world_size, ...)``) across ranks; rank r gets row r."""
        return ops.reduce_scatter(self, x, op, out, async_op, timeout_s)

    def alltoall(
        self, x: Any, out: Any = None, *, async_op: bool = False, timeout_s: float | None = None
    ) -> Any:
        """Row ``p`` of ``x`` goes to rank ``p``; row ``p`` of the result came from rank ``p``."""
        return ops.alltoall(self, x, out, async_op, timeout_s)

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
    ) -> Any:
        """Receive into ``out`` from rank ``src``; returns ``out``."""
        return ops.recv(self, out, src, tag, async_op, timeout_s)

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


# --- the per-process table -----------------------------------------------------------------------


def init_group(
    world_size: int,
    rank: int,
    name: str = "default",
    backend: Any = "auto",
    timeout_s: float = 60.0,
) -> Group:
    """Join group ``name`` as ``rank`` from inside an actor; returns once every rank joined."""
    return _join(world_size, rank, name, backend, timeout_s, None)


def _join(
    world_size: int,
    rank: int,
    name: str,
    backend: Any,
    timeout_s: float,
    session_rec: dict[str, Any] | None,
) -> Group:
    name = _check_name(name)
    world_size, rank = _check_world(world_size, rank)
    be = _backend(backend)
    if timeout_s <= 0:
        raise InvalidArgumentError(f"timeout_s must be > 0, got {timeout_s}")
    with _TABLE_LOCK:
        if name in _GROUPS:
            raise InvalidArgumentError(
                f"this process is already rank {_GROUPS[name].rank} of group {name!r}; destroy it "
                "first, or use another name"
            )
        _GROUPS[name] = None  # type: ignore[assignment]  # reserved while joining
    try:
        joined = rendezvous.join(name, world_size, rank, be, timeout_s, session_rec)
    except BaseException:
        with _TABLE_LOCK:
            _GROUPS.pop(name, None)
        raise
    g = Group(name, rank, world_size, be, timeout_s, joined)
    kind = _TORCH_KINDS.get(be)
    if kind is not None:
        # Every member builds the torch process group now, over the native group just formed.
        try:
            from sideband.collective import torch_backend

            g._torch = torch_backend.TorchBackend.create(g, kind)
        except BaseException:
            g._close()
            with _TABLE_LOCK:
                _GROUPS.pop(name, None)
            raise
    with _TABLE_LOCK:
        _GROUPS[name] = g
    return g


def get_group(name: str = "default") -> Group:
    """This process's group ``name`` (joining it now if the driver declared it for this actor)."""
    with _TABLE_LOCK:
        g = _GROUPS.get(name)
    if g is not None:
        return g
    g = _join_declared(name)
    if g is not None:
        return g
    raise GroupNotFoundError(
        f"this process is not a member of group {name!r}: call sideband.init_group(...) here, or "
        "sideband.create_group(actors, name=...) on the driver"
    )


def is_group_initialized(name: str = "default") -> bool:
    """Whether this process has joined group ``name``."""
    with _TABLE_LOCK:
        return _GROUPS.get(name) is not None


def destroy_group(name: str = "default") -> None:
    """Leave group ``name`` in this process and release its resources (idempotent)."""
    with _TABLE_LOCK:
        g = _GROUPS.pop(name, None)
    if g is not None:
        g._close()


def local_groups() -> dict[str, Group]:
    with _TABLE_LOCK:
        return {k: v for k, v in _GROUPS.items() if v is not None}


# --- driver side -----------------------------------------------------------------------------------


def _actor_label(actor: Any) -> str:
    try:
        return f"actor {actor._actor_id.hex()} ({actor._ray_actor_creation_function_descriptor.class_name})"
    except Exception:
        return repr(actor)


def _remote_join(
    _self: Any,
    world_size: int,
    rank: int,
    name: str,
    backend: str,
    timeout_s: float,
    rec: dict[str, Any],
) -> int:
    g = _join(world_size, rank, name, backend, timeout_s, rec)
    return g.rank


def _remote_destroy(_self: Any, name: str, session: str | None) -> None:
    with _TABLE_LOCK:
        g = _GROUPS.get(name)
    if g is not None and (session is None or g.session == session):
        destroy_group(name)


class GroupHandle:
    """The driver's handle on a group created with :func:`create_group`."""

    def __init__(self, name: str, actors: list[Any], session: str, backend: str) -> None:
        self.name = name
        self.actors = actors
        self.session = session
        self.backend = backend
        self.world_size = len(actors)

    def __repr__(self) -> str:
        return f"GroupHandle(name={self.name!r}, world_size={self.world_size}, backend={self.backend!r})"

    def destroy(self, timeout_s: float = 30.0) -> None:
        """End the group in every member (members that died are skipped) and in the registry."""
        import ray

        refs = []
        for a in self.actors:
            try:
                refs.append(a.__ray_call__.remote(_remote_destroy, self.name, self.session))
            except Exception:
                pass
        if refs:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
            for r in ready:
                try:
                    ray.get(r)
                except Exception:
                    pass  # a dead member has nothing left to destroy
        rendezvous.remove_session(self.name, self.session)

    def __enter__(self) -> GroupHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def _actor_ids(actors: list[Any], what: str) -> list[str]:
    import ray

    bad = [a for a in actors if not isinstance(a, ray.actor.ActorHandle)]
    if bad:
        raise InvalidArgumentError(f"{what}: expected Ray actor handles, got {bad[0]!r}")
    ids = [a._actor_id.hex() for a in actors]
    if len(set(ids)) != len(ids):
        raise InvalidArgumentError(f"{what}: the same actor appears twice in the list")
    return ids


def create_group(
    actors: Sequence[Any], name: str = "default", backend: Any = "auto", timeout_s: float = 60.0
) -> GroupHandle:
    """Group ``actors`` (any Ray actors; ranks follow list order); returns once all joined."""
    import ray

    name = _check_name(name)
    actors = list(actors)
    if not actors:
        raise InvalidArgumentError("create_group needs at least one actor")
    be = _backend(backend)
    ids = _actor_ids(actors, "create_group")
    rec = rendezvous.open_session(name, len(actors), be, timeout_s, ids)
    refs = [
        a.__ray_call__.remote(_remote_join, len(actors), i, name, be, timeout_s, rec)
        for i, a in enumerate(actors)
    ]
    pending = dict(zip(refs, range(len(actors))))
    deadline = time.monotonic() + timeout_s + 5
    error: str | None = None
    while pending and error is None:
        ready, _ = ray.wait(
            list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic())
        )
        if not ready:
            ranks = sorted(pending.values())
            error = (
                "timed out: "
                + ", ".join(f"rank {i} ({_actor_label(actors[i])})" for i in ranks)
                + " did not join; an actor busy in a long method joins only when it is done"
            )
            break
        for r in ready:
            i = pending.pop(r)
            try:
                ray.get(r)
            except SidebandError as e:
                error = f"rank {i} ({_actor_label(actors[i])}) failed to join: {e}"
            except Exception as e:
                error = f"rank {i} ({_actor_label(actors[i])}) is dead or failed: {e}"
    if error is not None:
        rendezvous.fail_session(name, rec["session"], error)
        GroupHandle(name, actors, rec["session"], be).destroy(timeout_s=5)
        raise RendezvousError(f"create_group({name!r}): {error}")
    return GroupHandle(name, actors, rec["session"], be)


def declare_group(
    actors: Sequence[Any],
    world_size: int,
    ranks: Sequence[int],
    name: str = "default",
    backend: Any = "auto",
    timeout_s: float = 60.0,
) -> None:
    """Declare a group from the driver; each actor joins on its first ``get_group(name)``.

    Unlike :func:`create_group` this does not call the actors, so they may be busy; the group
    forms when all of them first use it.
    """
    name = _check_name(name)
    be = _backend(backend)
    actors = list(actors)
    ranks = [int(r) for r in ranks]
    if len(actors) != world_size or sorted(ranks) != list(range(world_size)):
        raise InvalidArgumentError(
            f"declare_group({name!r}): need world_size={world_size} actors and ranks "
            f"0..{world_size - 1} each once; got {len(actors)} actors and ranks {ranks}"
        )
    ids = _actor_ids(actors, "declare_group")
    rec = rendezvous.open_session(name, world_size, be, timeout_s, ids)
    _kv.put(f"decl/{name}", {"session": rec, "ranks": dict(zip(ids, ranks))})


def _join_declared(name: str) -> Group | None:
    from sideband.collective.rendezvous import _ray_ids

    actor_id, _ = _ray_ids()
    if actor_id is None:
        return None
    try:
        decl = _kv.get(f"decl/{name}")
    except Exception:
        return None
    if not decl or actor_id not in decl["ranks"]:
        return None
    rec = decl["session"]
    if rec["session"] in _USED_DECLARATIONS:
        return None  # already joined once and destroyed: a declaration forms one group
    _USED_DECLARATIONS.add(rec["session"])
    return _join(
        rec["world_size"], decl["ranks"][actor_id], name, rec["backend"], rec["timeout_s"], rec
    )


def list_groups() -> list[dict[str, Any]]:
    """Live groups of the cluster with their members; entries of dead groups are removed."""
    out = []
    for key, rec in _kv.items("group/").items():
        if not key.endswith("/session"):
            continue
        roster = _kv.get(rendezvous.roster_key(rec["name"], rec["session"]))
        members = roster if isinstance(roster, list) else []
        ids = [m.get("actor_id") for m in members] or [i for i in (rec.get("actor_ids") or []) if i]
        alive = [_kv.actor_alive(i) if i else True for i in ids]
        if ids and not any(alive):
            rendezvous.remove_session(rec["name"], rec["session"])
            continue
        dead = [r for r, ok in enumerate(alive) if not ok]
        state = "ready" if members else "forming"
        if dead:
            state = f"broken (ranks {dead} dead)"
        out.append(
            {
                "name": rec["name"],
                "session": rec["session"],
                "world_size": rec["world_size"],
                "backend": rec["backend"],
                "state": state,
                "members": [
                    {
                        "rank": m["rank"],
                        "actor_id": m.get("actor_id"),
                        "node_id": m.get("node_id"),
                        "pid": m.get("pid"),
                    }
                    for m in members
                ],
            }
        )
    return sorted(out, key=lambda g: g["name"])
