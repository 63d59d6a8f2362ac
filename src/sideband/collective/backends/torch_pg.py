"""torch.distributed process groups under a sideband group: gloo (CPU tensors), NCCL (CUDA).

The native group still forms underneath and stays the control plane: rank 0 hosts a
``TCPStore`` on a socket it bound itself (handed over with ``master_listen_fd``, so no port race
and no MASTER_ADDR/PORT for the user) and announces the address with the native backend's
``broadcast_object`` (this module is handed the native backend, never the ``Group``). The process group is built directly (``ProcessGroupGloo`` /
``ProcessGroupNCCL``), never as torch's global default group.

Every torch op runs on the group's ordered executor (call order, the op's deadline, the group-wide
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
from typing import Any, TypeVar

from sideband import _net
from sideband._extras import require
from sideband.collective.backends.native import Native
from sideband.collective.comm.engine import Comm
from sideband.collective.types import ReduceOp
from sideband.errors import (
    BackendUnavailableError,
    CollectiveError,
    CollectiveTimeoutError,
    MissingExtraError,
    PeerLostError,
    RendezvousError,
)

# Set before any NCCL process group exists: on an error the watchdog aborts the communicators
# but leaves the process alive (2 = CleanUpOnly), so the actor survives a lost peer.
_NCCL_ENV = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}

# Broken process groups whose worker threads may still be stuck in a wait: kept referenced so
# their destructors (which join those threads) never run on a caller's thread.
_GRAVEYARD: list[Any] = []


def _torch() -> Any:
    torch = require("torch", "torch", "the torch backends")
    return torch, require("torch.distributed", "torch", "the torch backends")


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


def torch_reduce_op(dist: Any, op: ReduceOp) -> Any:
    # AVG is computed as SUM then a division: gloo has no AVG, and integer rules stay ours.
    name = "SUM" if op is ReduceOp.AVG else op.name
    return getattr(dist.ReduceOp, name)


_T = TypeVar("_T", bound="TorchBackend")


class TorchBackend:
    """One torch process group serving one sideband group."""

    def __init__(self, native: Native, kind: str, pg: Any, store: Any, device: Any) -> None:
        self.native = native
        self.ex = native.ex
        self.rank = native.rank
        self.n = native.n
        self.kind = kind  # "gloo" or "nccl"
        self.pg = pg
        self.store = store
        self.device = device  # torch.device the group's tensors live on
        self.broken = False
        self._waiter: concurrent.futures.ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"TorchBackend({self.kind}, group={self.ex.name!r}, rank={self.rank})"

    @property
    def nccl_fp8(self) -> bool:
        """Whether this backend reduces fp8 (NCCL >= 2.24)."""
        return self.kind == "nccl" and nccl_fp8_reductions()

    # -- creation ------------------------------------------------------------------------------
    @classmethod
    def create(cls: type[_T], native: Native, session: str, kind: str, device: Any = None) -> _T:
        """Build the process group; a collective call on every rank of the group."""
        ex = native.ex
        name, rank, world_size = ex.name, ex.rank, native.n
        ok, why = available(kind)
        if not ok:
            raise BackendUnavailableError(
                f"group {name!r}, rank {rank}: torch {kind} cannot run here: {why}"
            )
        torch, dist = _torch()
        timeout = datetime.timedelta(seconds=_pg_timeout(kind, ex.timeout_s))
        store_timeout = datetime.timedelta(seconds=ex.timeout_s)
        store = None
        addr = None
        err: str | None = None
        if rank == 0:
            host = _net.node_address()
            try:
                sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
                _net.bind_in_range(sock, host)  # SIDEBAND_PORT_RANGE applies to the store too
                sock.listen(128)
                port = sock.getsockname()[1]
                try:
                    # detach(): the store's server owns the fd from now on and closes it itself.
                    store = dist.TCPStore(
                        host,
                        port,
                        world_size,
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
                        host, 0, world_size, True, store_timeout, wait_for_workers=False
                    )
                    port = store.port
                addr = (host, port)
            except Exception as e:  # the other ranks must hear of it, not wait for a store
                err = f"rank 0 could not host the torch store on {host}: {e}"
        got = native.broadcast_object((addr, err), 0)
        addr, err = got
        if err is not None:
            raise RendezvousError(f"group {name!r}, rank {rank}: {err}")
        try:
            if store is None:
                store = dist.TCPStore(addr[0], addr[1], world_size, False, store_timeout)
            prefix = dist.PrefixStore(f"sideband/{name}/{session}/{kind}", store)
            if kind == "gloo":
                opts = dist.ProcessGroupGloo._Options()
                opts._timeout = timeout
                opts._devices = [dist.ProcessGroupGloo.create_device(hostname=addr[0])]
                pg = dist.ProcessGroupGloo(prefix, rank, world_size, opts)
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
                pg = dist.ProcessGroupNCCL(prefix, rank, world_size, opts)
        except Exception as e:
            raise RendezvousError(
                f"group {name!r}, rank {rank}: could not create the torch {kind} process "
                f"group: {e}. Check that every rank can reach {addr[0]}, then create the group again."
            ) from e
        return cls(native, kind, pg, store, dev)

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
        nbytes: int = 0,
    ) -> Any:
        """Issue ``issue()`` (returns a torch Work) in order, wait for it, return ``finish()``
        (``nbytes``: the op's input on this rank, for the metrics)."""
        torch, _ = _torch()
        waiting = peers if peers is not None else [p for p in range(self.n) if p != self.rank]

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
            return self.ex.submit(
                f"{label} [torch {self.kind}]",
                desc,
                body,
                async_op,
                timeout_s,
                p2p=p2p,
                nbytes=nbytes,
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
                1, thread_name_prefix=f"sideband-torch-{self.ex.name}"
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
