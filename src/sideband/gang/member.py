"""The actor every gang member runs: placement info, the held master port, setup and fn."""

from __future__ import annotations

import importlib
import os
import socket
import threading
import traceback
from collections.abc import Callable
from typing import Any

import ray

from sideband.errors import GangMemberError
from sideband.gang import contract as _context
from sideband.gang.contract import GangContext
from sideband.gang.setup import Setup

#: The concurrency group of :meth:`GangMember.watch`, so it waits beside ``run``.
WATCH_GROUP = "sideband_watch"


class GangMember:
    """One member of a gang (wrapped with ``ray.remote`` by the gang).

    ``label`` (``<gang>-rank<r>``) is its ``repr``, which Ray uses in log prefixes.
    """

    def __init__(self, label: str = "", preload: tuple[str, ...] = ()) -> None:
        self._label = label
        self._socket: socket.socket | None = None
        self._ctx: GangContext | None = None
        self._setup: Setup | None = None
        self._node_ip = ""
        self._stopped = threading.Event()
        self._lead_done = threading.Event()
        self._lead_error: GangMemberError | None = None
        if preload:
            # The library's import overlaps the rest of the formation; setup's own import of
            # the same module waits on the import lock instead of importing it twice.
            threading.Thread(target=_preload, args=(preload,), daemon=True).start()

    def __repr__(self) -> str:
        return self._label or "GangMember"

    def info(self) -> dict[str, Any]:
        import ray

        rc = ray.get_runtime_context()
        self._node_ip = ray.util.get_node_ip_address()
        gpus = rc.get_accelerator_ids().get("GPU", [])
        return {
            "node_id": rc.get_node_id(),
            "node_ip": self._node_ip,
            "gpu_ids": [str(g) for g in gpus],
            "pid": os.getpid(),
            "actor_id": rc.get_actor_id(),
            "hostname": socket.gethostname(),
        }

    def reserve_port(self, host: str, listen: bool) -> int:
        """Bind an ephemeral port and keep it until the library takes it.

        ``listen``: for a library that is handed the socket (torch), so peers that connect early
        queue up. Otherwise the port is only bound: it stays reserved, but peers that connect
        before the library listens are refused (and retry) rather than accepted by a socket that
        is about to close.
        """
        if self._socket is not None:
            self._socket.close()
        from sideband.gang.ports import bind_in_range

        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        bind_in_range(sock, host)  # SIDEBAND_PORT_RANGE holds for the library's port too
        if listen:
            sock.listen(128)
        self._socket = sock
        return sock.getsockname()[1]

    def lead(self, ctx: GangContext, setup_cls: type[Setup], options: dict[str, Any]) -> Any:
        """Rank 0's :meth:`Setup.lead`, sent before its :meth:`setup` (which waits for it)."""
        self._ctx = ctx
        sock, self._socket = self._socket, None
        try:
            _context._install(ctx)
            self._setup = setup_cls()
            return self._setup.lead(ctx, sock, options)
        except BaseException as e:
            self._lead_error = self._error("lead", e)
            raise self._lead_error from None
        finally:
            self._lead_done.set()

    def setup(
        self,
        ctx: GangContext,
        setup_cls: type[Setup],
        options: dict[str, Any],
        after_lead: bool = False,
    ) -> dict[str, Any]:
        if after_lead:  # with max_concurrency > 1 the two calls may overlap: keep their order
            self._lead_done.wait()
            if self._lead_error is not None:
                raise self._lead_error
        self._ctx = ctx
        sock, self._socket = self._socket, None
        try:
            _context._install(ctx)
            if self._setup is None or not after_lead:
                self._setup = setup_cls()
            result = self._setup.setup(ctx, sock, options)
        except BaseException as e:
            raise self._error("setup", e) from None
        return {"rank": ctx.rank, "pid": os.getpid(), "result": result}

    @ray.method(concurrency_group=WATCH_GROUP)
    def watch(self) -> None:
        """Returns when the gang tears down; raises when the library fails on its own (e.g. a
        JVM this member started exited). Runs in its own concurrency group, beside ``run``."""
        setup, ctx = self._setup, self._ctx
        if setup is None or ctx is None:
            return
        try:
            reason = setup.watch(ctx, self._stopped)
        except BaseException as e:
            raise self._error("watch", e) from None
        if reason and not self._stopped.is_set():
            raise GangMemberError(
                f"rank {ctx.rank} (node {self._node_ip}, pid {os.getpid()}): {reason}",
                rank=ctx.rank,
                node=self._node_ip,
            )

    def run(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        assert self._ctx is not None and self._setup is not None
        try:
            self._setup.before_run(self._ctx)
            return fn(*args, **kwargs)
        except BaseException as e:
            raise self._error("fn", e) from None

    def teardown(self, timeout_s: float) -> bool:
        """Undo the setup within ``timeout_s``; False if it did not finish (the gang kills us)."""
        if self._setup is None or self._ctx is None:
            return True
        setup, ctx = self._setup, self._ctx
        self._setup = None
        self._stopped.set()
        done = threading.Event()

        def _teardown() -> None:
            try:
                setup.teardown(ctx)
            finally:
                done.set()

        threading.Thread(target=_teardown, name="sideband-gang-teardown", daemon=True).start()
        return done.wait(timeout_s)

    def _error(self, what: str, e: BaseException) -> GangMemberError:
        rank = self._ctx.rank if self._ctx is not None else None
        tb = traceback.format_exc()
        return GangMemberError(
            f"{what} raised on rank {rank} (node {self._node_ip}, pid {os.getpid()}): "
            f"{type(e).__name__}: {e}",
            rank=rank,
            node=self._node_ip,
            remote_traceback=tb,
        )


def _preload(modules: tuple[str, ...]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # setup imports it again and reports a missing extra properly
            pass


def save_checkpoint(state: Any) -> None:
    """Keep ``state`` (small, picklable) so a restarted gang finds it in ``context().checkpoint``.

    Call it from any member (usually rank 0); the last call wins. For large state, save it to
    storage and checkpoint its path.
    """
    from sideband.gang.checkpoint import store

    ctx = _context.context()
    store(ctx.gang_name, state)
