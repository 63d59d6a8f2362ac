"""torch.distributed process groups under a sideband group: gloo (CPU tensors), NCCL (CUDA).

The native group still forms underneath and stays the control plane: rank 0 hosts a
``TCPStore`` on a socket it bound itself (handed over with ``master_listen_fd``, so no port race
and no MASTER_ADDR/PORT for the user) and announces the address with the native
``broadcast_object``. The process group is built directly (``ProcessGroupGloo`` /
``ProcessGroupNCCL``), never as torch's global default group.

Every torch op runs through ``Group._submit`` (call order, the op's deadline, the group-wide
abort), is issued asynchronously and waited for by polling the torch ``Work`` while the native
``Comm.check()`` watches the deadline, the abort flag and the peers' liveness. On a lost peer or
a deadline the torch process group is aborted and sideband's own error is raised.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from sideband.collective.types import ReduceOp
from sideband.errors import (
    BackendUnavailableError,
    CollectiveError,
    CollectiveTimeoutError,
    InvalidArgumentError,
    MissingExtraError,
    PeerLostError,
    RendezvousError,
)

if TYPE_CHECKING:
    from sideband.collective.comm import Comm
    from sideband.collective.group import Group

# Set before any NCCL process group exists: on an error the watchdog aborts the communicators
# but leaves the process alive (2 = CleanUpOnly), so the actor survives a lost peer.
_NCCL_ENV = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}

# Gradual back-off while polling a torch Work: small ops finish within the first polls.

# Broken process groups whose worker threads may still be stuck in a wait: kept referenced so
# their destructors (which join those threads) never run on a caller's thread.
_GRAVEYARD: list[Any] = []


def _torch() -> Any:
    try:
        import torch
        import torch.distributed as dist
    except ImportError as e:
        raise MissingExtraError(
            "the torch backends need torch; install sideband[torch] (pip install 'sideband[torch]')"
        ) from e
    return torch, dist


def available(kind: str) -> tuple[bool, str]:
    """Whether torch's ``kind`` ("gloo" or "nccl") can run in this process, and why not."""
    try:
        torch, dist = _torch()
    except MissingExtraError as e:
        return False, str(e)
    if not dist.is_available():
        return False, "this torch build has no torch.distributed"
    if kind == "gloo":
        if not dist.is_gloo_available():
            return False, "this torch build has no gloo"
        return True, ""
    if not dist.is_nccl_available():
        return False, "this torch build has no NCCL (a CPU-only torch?)"
    if not torch.cuda.is_available():
        return False, "no CUDA device is visible in this process (did the actor ask for num_gpus?)"
    return True, ""


def _torch_reduce_op(dist: Any, op: ReduceOp) -> Any:
    # AVG is computed as SUM then a division: gloo has no AVG, and integer rules stay ours.
    name = "SUM" if op is ReduceOp.AVG else op.name
    return getattr(dist.ReduceOp, name)


class TorchBackend:
    """One torch process group serving one sideband group."""

    def __init__(self, g: Group, kind: str, pg: Any, store: Any, device: Any) -> None:
        self.g = g
        self.kind = kind  # "gloo" or "nccl"
        self.pg = pg
        self.store = store
        self.device = device  # torch.device the group's tensors live on
        self.broken = False
        self._waiter: concurrent.futures.ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"TorchBackend({self.kind}, group={self.g.name!r}, rank={self.g.rank})"

    # -- creation ------------------------------------------------------------------------------
    @classmethod
    def create(cls, g: Group, kind: str, device: Any = None) -> TorchBackend:
        """Build the process group; a collective call on every rank of ``g``."""
        ok, why = available(kind)
        if not ok:
            raise BackendUnavailableError(
                f"group {g.name!r}, rank {g.rank}: torch {kind} cannot run here: {why}"
            )
        torch, dist = _torch()
        from sideband import _net
        from sideband.collective.transports import tcp

        timeout = datetime.timedelta(seconds=_pg_timeout(kind, g.timeout_s))
        store_timeout = datetime.timedelta(seconds=g.timeout_s)
        store = None
        addr = None
        err: str | None = None
        if g.rank == 0:
            host = _net.node_address()
            try:
                sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
                tcp.bind_in_range(sock, host)  # SIDEBAND_PORT_RANGE applies to the store too
                sock.listen(128)
                port = sock.getsockname()[1]
                try:
                    # detach(): the store's server owns the fd from now on and closes it itself.
                    store = dist.TCPStore(
                        host,
                        port,
                        g.world_size,
                        True,
                        store_timeout,
                        wait_for_workers=False,
                        master_listen_fd=sock.fileno(),
                    )
                    sock.detach()
                except (TypeError, RuntimeError, ValueError):
                    # A torch without master_listen_fd: let the server bind a free port itself
                    # (port 0), which is race-free too.
                    sock.close()
                    store = dist.TCPStore(
                        host, 0, g.world_size, True, store_timeout, wait_for_workers=False
                    )
                    port = store.port
                addr = (host, port)
            except Exception as e:  # the other ranks must hear of it, not wait for a store
                err = f"rank 0 could not host the torch store on {host}: {e}"
        got = g.broadcast_object((addr, err), src=0)
        addr, err = got
        if err is not None:
            raise RendezvousError(f"group {g.name!r}, rank {g.rank}: {err}")
        try:
            if store is None:
                store = dist.TCPStore(addr[0], addr[1], g.world_size, False, store_timeout)
            prefix = dist.PrefixStore(f"sideband/{g.name}/{g.session}/{kind}", store)
            if kind == "gloo":
                opts = dist.ProcessGroupGloo._Options()
                opts._timeout = timeout
                opts._devices = [dist.ProcessGroupGloo.create_device(hostname=addr[0])]
                pg = dist.ProcessGroupGloo(prefix, g.rank, g.world_size, opts)
                dev = torch.device("cpu")
            else:
                for k, v in _NCCL_ENV.items():
                    os.environ.setdefault(k, v)
                dev = (
                    device
                    if device is not None
                    else torch.device("cuda", torch.cuda.current_device())
                )
                opts = dist.ProcessGroupNCCL.Options()
                opts._timeout = timeout
                pg = dist.ProcessGroupNCCL(prefix, g.rank, g.world_size, opts)
        except Exception as e:
            raise RendezvousError(
                f"group {g.name!r}, rank {g.rank}: could not create the torch {kind} process "
                f"group: {e}. Check that every rank can reach {addr[0]}, then create the group again."
            ) from e
        return cls(g, kind, pg, store, dev)

    def close(self) -> None:
        pg, self.pg = self.pg, None
        if pg is None:
            return
        if self.broken:
            with contextlib.suppress(Exception):
                pg.abort()
            _GRAVEYARD.append((pg, self.store))  # see _GRAVEYARD: never join a stuck thread here
        else:
            with contextlib.suppress(Exception):
                pg.shutdown()
        self.store = None
        if self._waiter is not None:
            self._waiter.shutdown(wait=False)

    # -- running one op -----------------------------------------------------------------------
    def run(
        self,
        label: str,
        desc: int,
        issue: Callable[[], Any],
        finish: Callable[[], Any],
        async_op: bool,
        timeout_s: float | None,
        stream: Any = None,
        p2p: bool = False,
        peers: list[int] | None = None,
    ) -> Any:
        """Issue ``issue()`` (returns a torch Work) in order, wait for it, return ``finish()``."""
        torch, _ = _torch()
        waiting = (
            peers
            if peers is not None
            else [p for p in range(self.g.world_size) if p != self.g.rank]
        )

        def body(o: Any) -> Any:
            if self.pg is None:
                raise CollectiveError(f"{o.comm.describe()}: the torch process group is closed")
            ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
            with ctx:
                try:
                    work = issue()
                except RuntimeError as e:
                    raise self._translate(o.comm, e) from e
                # gloo's p2p works cannot be polled (see _waiter_wait).
                self._wait(o.comm, work, waiting, threaded=p2p and self.kind == "gloo")
                return finish()

        try:
            return self.g._submit(
                f"{label} [torch {self.kind}]", desc, body, async_op, timeout_s, p2p=p2p
            )
        except CollectiveError:
            self._mark_broken()
            raise

    def _mark_broken(self) -> None:
        if not self.broken:
            self.broken = True
            if self.pg is not None:
                with contextlib.suppress(Exception):
                    self.pg.abort()

    def _waiter_wait(self, work: Any) -> tuple[threading.Event, list[BaseException]]:
        """Have the backend's waiter thread call ``work.wait()``; the event is set when done,
        and the list then holds its error, if any (a gloo work must not be waited twice).

        gloo's send/recv works never report completion until wait() was called, so they cannot
        be polled; one thread per backend waits for them instead (ops run one at a time).
        """
        done = threading.Event()
        errors: list[BaseException] = []
        if self._waiter is None:
            self._waiter = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"sideband-torch-{self.g.name}"
            )

        def wait() -> None:
            try:
                work.wait()
            except BaseException as e:
                errors.append(e)
            finally:
                done.set()

        self._waiter.submit(wait)
        return done, errors

    def _wait(self, comm: Comm, work: Any, peers: list[int], threaded: bool = False) -> None:
        done, errors = self._waiter_wait(work) if threaded else (None, [])
        try:
            comm.poll_until(done.is_set if done is not None else work.is_completed, peers)
        except CollectiveError:
            self._mark_broken()
            raise
        try:
            if errors:
                raise errors[0]
            if done is None:
                work.wait()  # raises the op's error; on CUDA orders the current stream after it
        except RuntimeError as e:
            self._mark_broken()
            raise self._translate(comm, e) from e

    def _translate(self, comm: Comm, e: BaseException) -> CollectiveError:
        """The sideband error for a failed torch op: a lost peer if any is gone."""
        try:
            comm.check_peers_now()
        except CollectiveError as found:
            return found
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        low = msg.lower()
        if "float8" in low:
            return CollectiveError(
                f"{comm.describe()}: torch {self.kind} refused fp8 ({msg}). Reduce in bfloat16 "
                "or float16 and cast; the group is broken: destroy it and create it again."
            )
        if "timed out" in low or "timeout" in low:
            return CollectiveTimeoutError(
                f"{comm.describe()}: torch {self.kind} timed out ({msg}). Check that every rank "
                "calls the same operations in the same order, or pass a larger timeout_s."
            )
        if any(w in low for w in ("connection", "closed", "reset", "peer", "broken pipe")):
            return PeerLostError(
                f"{comm.describe()}: torch {self.kind} lost a peer ({msg}). Destroy the group "
                "and create it again with live actors."
            )
        return CollectiveError(
            f"{comm.describe()}: torch {self.kind} failed: {msg}. The group is broken: destroy "
            "it and create it again."
        )


def _pg_timeout(kind: str, timeout_s: float) -> float:
    # torch's own timeout stays behind sideband's deadline, which fires first and aborts. gloo
    # also spends it connecting at creation, so it stays close to the group's timeout; NCCL's
    # watchdog gets ample room (its timeout would tear communicators down behind our back).
    return timeout_s + 5 if kind == "gloo" else 2 * timeout_s + 60


# --- tensors --------------------------------------------------------------------------------


_FP8 = ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")


def flat_tensor(x: Any, what: str, *, writable: bool) -> tuple[Any, Callable[[], None] | None]:
    """A flat contiguous torch tensor sharing ``x``'s memory (numpy, torch CPU or CUDA, cupy),
    and a write-back for non-contiguous in-place results (None when not needed)."""
    torch, _ = _torch()
    from sideband.collective import buffers, cuda

    if cuda.is_cuda(x):
        t = cuda.as_torch(x).detach()
        if t.is_complex():
            raise InvalidArgumentError(f"{what}: complex tensors are not supported")
        if t.is_contiguous():
            return t.view(-1), None
        flat = t.contiguous().view(-1)

        def back() -> None:
            t.copy_(flat.view(t.shape))

        return flat, back if writable else None
    buf = buffers.as_buffer(x, what, writable=writable)
    if buffers.is_torch(x) and x.is_contiguous():
        return x.detach().view(-1), None
    arr = buf.arr
    if not arr.flags.writeable:
        # torch.from_numpy warns on read-only arrays; this one is only read.
        arr = np.array(arr, copy=True)
    t = torch.from_numpy(arr)
    if buf.dtype == "bfloat16":
        t = t.view(torch.bfloat16)
    elif buf.dtype in _FP8:
        t = t.view(getattr(torch, buf.dtype))
    return t, buf.writeback


# --- the ops ----------------------------------------------------------------------------------
# Arguments were checked by ops.py (ranks, reduce op); shapes and dtypes are checked here, where
# the tensors are torch's. Data-moving ops run on byte views, so every dtype (fp8, unsigned ints,
# bool) moves whatever torch's reductions support.


def _dtype_name(t: Any) -> str:
    return str(t.dtype).replace("torch.", "")


def _desc(op: str, t: Any, *extra: Any) -> int:
    from sideband.collective.ops import descriptor

    return descriptor("torch", op, _dtype_name(t), t.numel(), *extra)


def check_reduction(tb: TorchBackend, t: Any, op: ReduceOp, what: str) -> None:
    """Reject reductions this backend cannot do, before anything is sent."""
    torch, _ = _torch()
    name = _dtype_name(t)
    if name in _FP8:
        if tb.kind != "nccl" or not nccl_fp8_reductions():
            raise InvalidArgumentError(
                f"{what}: reductions of {name} need NCCL >= 2.24 on CUDA tensors (this is "
                f"torch {tb.kind}"
                + (f", NCCL {nccl_version()}" if tb.kind == "nccl" else "")
                + "); reduce in bfloat16 or float16 and cast, or use broadcast/allgather, which "
                "move fp8 as it is"
            )
        if op not in (ReduceOp.SUM, ReduceOp.AVG, ReduceOp.MIN, ReduceOp.MAX):
            raise InvalidArgumentError(f"{what}: {op.name} is not defined for {name}")
    if t.dtype == torch.bool:
        if op is ReduceOp.AVG:
            raise InvalidArgumentError(f"{what}: AVG is not defined for bool tensors")
    elif t.is_floating_point():
        if op in (ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR):
            raise InvalidArgumentError(
                f"{what}: {op.name} needs an integer or bool dtype, got {name}"
            )
    elif op is ReduceOp.AVG:
        raise InvalidArgumentError(
            f"{what}: AVG of integers would have to round; use SUM and divide, or a float dtype"
        )
    if tb.kind == "nccl" and _reduce_view(t, op)[1] in (ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR):
        raise InvalidArgumentError(
            f"{what}: NCCL has no bitwise reductions ({op.name}); use backend='auto' with CPU "
            "tensors, or reduce with MIN/MAX on 0/1 values"
        )
    if name in ("uint16", "uint32", "uint64"):
        raise InvalidArgumentError(
            f"{what}: torch {tb.kind} cannot reduce {name}; use a signed integer dtype, or the "
            "native backend (backend='auto')"
        )


def nccl_version() -> tuple[int, ...]:
    torch, _ = _torch()
    try:
        v = torch.cuda.nccl.version()
    except Exception:
        return (0,)
    return tuple(v) if isinstance(v, tuple) else (int(v),)


def nccl_fp8_reductions() -> bool:
    """NCCL reduces fp8 from 2.24 on; older versions only move it."""
    return nccl_version() >= (2, 24)


def _reduce_view(t: Any, op: ReduceOp) -> tuple[Any, ReduceOp]:
    """Bool reduces as uint8: or = MAX, and = MIN (torch's backends have no logical ops)."""
    torch, _ = _torch()
    if t.dtype != torch.bool:
        return t, op
    logical = {
        ReduceOp.SUM: ReduceOp.MAX,
        ReduceOp.MAX: ReduceOp.MAX,
        ReduceOp.BOR: ReduceOp.MAX,
        ReduceOp.PRODUCT: ReduceOp.MIN,
        ReduceOp.MIN: ReduceOp.MIN,
        ReduceOp.BAND: ReduceOp.MIN,
        ReduceOp.BXOR: ReduceOp.BXOR,
    }
    return t.view(torch.uint8), logical[op]


def _bytes(t: Any) -> Any:
    torch, _ = _torch()
    return t.view(torch.uint8) if t.dtype != torch.uint8 else t


def _stream(t: Any) -> Any:
    torch, _ = _torch()
    return torch.cuda.current_stream(t.device) if t.device.type == "cuda" else None


def _avg(t: Any, op: ReduceOp, n: int) -> None:
    if op is ReduceOp.AVG:
        t.div_(n)


def allreduce(
    tb: TorchBackend, x: Any, op: ReduceOp, async_op: bool, timeout_s: float | None
) -> Any:
    _, dist = _torch()
    g = tb.g
    what = f"allreduce on rank {g.rank} of group {g.name!r}"
    t, back = flat_tensor(x, what, writable=True)
    check_reduction(tb, t, op, what)
    rt, rop = _reduce_view(t, op)

    def issue() -> Any:
        o = dist.AllreduceOptions()
        o.reduceOp = _torch_reduce_op(dist, rop)
        return tb.pg.allreduce([rt], o)

    def finish() -> Any:
        _avg(t, op, g.world_size)
        if back:
            back()
        return x

    label = f"allreduce({_dtype_name(t)}{list(x.shape)}, {op.name})"
    return tb.run(
        label, _desc("allreduce", t, op.name), issue, finish, async_op, timeout_s, _stream(t)
    )


def reduce(
    tb: TorchBackend, x: Any, dst: int, op: ReduceOp, async_op: bool, timeout_s: float | None
) -> Any:
    _, dist = _torch()
    g = tb.g
    what = f"reduce on rank {g.rank} of group {g.name!r}"
    t, back = flat_tensor(x, what, writable=g.rank == dst)
    check_reduction(tb, t, op, what)
    # torch's backends may use a non-root rank's input as scratch: those reduce a copy.
    work_t = t if g.rank == dst else t.clone()
    rt, rop = _reduce_view(work_t, op)

    def issue() -> Any:
        o = dist.ReduceOptions()
        o.reduceOp = _torch_reduce_op(dist, rop)
        o.rootRank = dst
        o.rootTensor = 0
        return tb.pg.reduce([rt], o)

    def finish() -> Any:
        if g.rank == dst:
            _avg(t, op, g.world_size)
            if back:
                back()
        return x

    label = f"reduce({_dtype_name(t)}{list(x.shape)}, dst={dst}, {op.name})"
    return tb.run(
        label, _desc("reduce", t, op.name, dst), issue, finish, async_op, timeout_s, _stream(t)
    )


def broadcast(tb: TorchBackend, x: Any, src: int, async_op: bool, timeout_s: float | None) -> Any:
    _, dist = _torch()
    g = tb.g
    t, back = flat_tensor(
        x, f"broadcast on rank {g.rank} of group {g.name!r}", writable=g.rank != src
    )

    def issue() -> Any:
        o = dist.BroadcastOptions()
        o.rootRank = src
        o.rootTensor = 0
        return tb.pg.broadcast([_bytes(t)], o)

    def finish() -> Any:
        if back:
            back()
        return x

    label = f"broadcast({_dtype_name(t)}{list(x.shape)}, src={src})"
    return tb.run(label, _desc("broadcast", t, src), issue, finish, async_op, timeout_s, _stream(t))


def _out(
    tb: TorchBackend, x: Any, t: Any, out: Any, shape: tuple[int, ...], what: str
) -> tuple[Any, Any, Callable[[], None] | None]:
    from sideband.collective import cuda

    if out is None:
        out = cuda.empty_like(x, shape)
    ot, back = flat_tensor(out, f"{what} (out)", writable=True)
    if ot.dtype != t.dtype or ot.numel() != int(np.prod(shape)) or ot.device != t.device:
        raise InvalidArgumentError(
            f"{what}: out must have shape {shape}, dtype {_dtype_name(t)} and device {t.device}, "
            f"got shape {tuple(out.shape)}, dtype {_dtype_name(ot)}, device {ot.device}"
        )
    return out, ot, back


def _rows_of(tb: TorchBackend, x: Any, what: str) -> tuple[int, ...]:
    n = tb.g.world_size
    shape = tuple(x.shape)
    if len(shape) >= 1 and shape[0] == n:
        return shape[1:]
    if len(shape) == 1 and shape[0] % n == 0:
        return (shape[0] // n,)
    raise InvalidArgumentError(
        f"{what}: x must have world_size={n} rows (shape ({n}, ...)) or be 1-D with a length "
        f"divisible by {n}; got shape {shape}"
    )


def allgather(tb: TorchBackend, x: Any, out: Any, async_op: bool, timeout_s: float | None) -> Any:
    g = tb.g
    what = f"allgather on rank {g.rank} of group {g.name!r}"
    t, _ = flat_tensor(x, what, writable=False)
    out, ot, back = _out(tb, x, t, out, (g.world_size, *tuple(x.shape)), what)
    rows = list(_bytes(ot).view(g.world_size, -1).unbind(0))

    def issue() -> Any:
        return tb.pg.allgather([rows], [_bytes(t)])

    def finish() -> Any:
        if back:
            back()
        return out

    return tb.run(
        f"allgather({_dtype_name(t)}{list(x.shape)})",
        _desc("allgather", t),
        issue,
        finish,
        async_op,
        timeout_s,
        _stream(t),
    )


def gather(
    tb: TorchBackend, x: Any, dst: int, out: Any, async_op: bool, timeout_s: float | None
) -> Any:
    _, dist = _torch()
    g = tb.g
    what = f"gather on rank {g.rank} of group {g.name!r}"
    t, _ = flat_tensor(x, what, writable=False)
    back = None
    rows: list[Any] = []
    if g.rank == dst:
        out, ot, back = _out(tb, x, t, out, (g.world_size, *tuple(x.shape)), what)
        rows = list(_bytes(ot).view(g.world_size, -1).unbind(0))

    def issue() -> Any:
        o = dist.GatherOptions()
        o.rootRank = dst
        return tb.pg.gather([rows] if g.rank == dst else [], [_bytes(t)], o)

    def finish() -> Any:
        if g.rank != dst:
            return None
        if back:
            back()
        return out

    return tb.run(
        f"gather({_dtype_name(t)}{list(x.shape)}, dst={dst})",
        _desc("gather", t, dst),
        issue,
        finish,
        async_op,
        timeout_s,
        _stream(t),
    )


def scatter(
    tb: TorchBackend, x: Any, src: int, out: Any, async_op: bool, timeout_s: float | None
) -> Any:
    _, dist = _torch()
    g = tb.g
    what = f"scatter on rank {g.rank} of group {g.name!r}"
    t = None
    meta = None
    if g.rank == src:
        if x is None:
            raise InvalidArgumentError(f"{what}: the src rank must pass the array to scatter")
        t, _ = flat_tensor(x, what, writable=False)
        meta = (_dtype_name(t), _rows_of(tb, x, what))
    # Non-src ranks learn dtype and row shape first (over the native group), then the data.
    dtype, row = g.broadcast_object(meta, src=src, timeout_s=timeout_s)
    if out is None:
        from sideband.collective import cuda

        like = x if x is not None else _template(tb, dtype)
        out = cuda.empty_like(like, tuple(row), dtype)
    ot, back = flat_tensor(out, f"{what} (out)", writable=True)
    if _dtype_name(ot) != dtype or ot.numel() != int(np.prod(row)):
        raise InvalidArgumentError(
            f"{what}: out must have shape {tuple(row)} and dtype {dtype}, got shape "
            f"{tuple(out.shape)} and dtype {_dtype_name(ot)}"
        )
    rows = list(_bytes(t).view(g.world_size, -1).unbind(0)) if t is not None else []

    def issue() -> Any:
        o = dist.ScatterOptions()
        o.rootRank = src
        return tb.pg.scatter([_bytes(ot)], [rows] if g.rank == src else [], o)

    def finish() -> Any:
        if back:
            back()
        return out

    return tb.run(
        f"scatter(src={src})",
        _desc("scatter", ot, src),
        issue,
        finish,
        async_op,
        timeout_s,
        _stream(ot),
    )


def _template(tb: TorchBackend, dtype: str) -> Any:
    torch, _ = _torch()
    return torch.empty(0, dtype=getattr(torch, dtype), device=tb.device)


def reduce_scatter(
    tb: TorchBackend, x: Any, op: ReduceOp, out: Any, async_op: bool, timeout_s: float | None
) -> Any:
    _, dist = _torch()
    g = tb.g
    what = f"reduce_scatter on rank {g.rank} of group {g.name!r}"
    t, _ = flat_tensor(x, what, writable=False)
    check_reduction(tb, t, op, what)
    row = _rows_of(tb, x, what)
    out, ot, back = _out(tb, x, t, out, row, what)
    n = g.world_size
    if tb.kind == "nccl":
        rt, rop = _reduce_view(t, op)
        rot, _ = _reduce_view(ot, op)

        def issue() -> Any:
            o = dist.ReduceScatterOptions()
            o.reduceOp = _torch_reduce_op(dist, rop)
            return tb.pg._reduce_scatter_base(rot, rt, o)

        def finish() -> Any:
            _avg(ot, op, n)
            if back:
                back()
            return out
    else:
        # gloo: all-reduce a copy and keep this rank's row (gloo's reduce_scatter is partial).
        acc = t.clone()
        racc, rop = _reduce_view(acc, op)

        def issue() -> Any:
            o = dist.AllreduceOptions()
            o.reduceOp = _torch_reduce_op(dist, rop)
            return tb.pg.allreduce([racc], o)

        def finish() -> Any:
            ot.copy_(acc.view(n, -1)[g.rank])
            _avg(ot, op, n)
            if back:
                back()
            return out

    label = f"reduce_scatter({_dtype_name(t)}{list(x.shape)}, {op.name})"
    return tb.run(
        label, _desc("reduce_scatter", t, op.name), issue, finish, async_op, timeout_s, _stream(t)
    )


def alltoall(tb: TorchBackend, x: Any, out: Any, async_op: bool, timeout_s: float | None) -> Any:
    _, dist = _torch()
    g = tb.g
    what = f"alltoall on rank {g.rank} of group {g.name!r}"
    t, _ = flat_tensor(x, what, writable=False)
    _rows_of(tb, x, what)
    out, ot, back = _out(tb, x, t, out, tuple(x.shape), what)

    def issue() -> Any:
        return tb.pg.alltoall_base(_bytes(ot), _bytes(t), [], [], dist.AllToAllOptions())

    def finish() -> Any:
        if back:
            back()
        return out

    return tb.run(
        f"alltoall({_dtype_name(t)}{list(x.shape)})",
        _desc("alltoall", t),
        issue,
        finish,
        async_op,
        timeout_s,
        _stream(t),
    )


def send(
    tb: TorchBackend, x: Any, dst: int, tag: int, async_op: bool, timeout_s: float | None
) -> Any:
    g = tb.g
    t, _ = flat_tensor(x, f"send on rank {g.rank} of group {g.name!r}", writable=False)
    # A torch tag is a C int: fold sideband's 32-bit unsigned tags into it.
    ttag = tag & 0x7FFFFFFF

    def issue() -> Any:
        return tb.pg.send([_bytes(t)], dst, ttag)

    label = f"send({_dtype_name(t)}{list(x.shape)}, dst={dst}, tag={tag})"
    return tb.run(
        label, 0, issue, lambda: None, async_op, timeout_s, _stream(t), p2p=True, peers=[dst]
    )


def recv(
    tb: TorchBackend, out: Any, src: int, tag: int, async_op: bool, timeout_s: float | None
) -> Any:
    g = tb.g
    t, back = flat_tensor(out, f"recv on rank {g.rank} of group {g.name!r}", writable=True)
    ttag = tag & 0x7FFFFFFF

    def issue() -> Any:
        return tb.pg.recv([_bytes(t)], src, ttag)

    def finish() -> Any:
        if back:
            back()
        return out

    label = f"recv({_dtype_name(t)}{list(out.shape)}, src={src}, tag={tag})"
    return tb.run(label, 0, issue, finish, async_op, timeout_s, _stream(t), p2p=True, peers=[src])
