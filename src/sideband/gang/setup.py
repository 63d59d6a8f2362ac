"""The adapter interface each wrapped library implements, and the registry of setups by name.

A setup has a driver half (``prepare`` / ``release``, run in the process that owns the gang) and a
member half (``setup`` / ``before_run`` / ``teardown``, run in every member). The gang creates
one instance on the driver and one fresh instance in every member, so an adapter may keep state
on ``self`` on either side. Third parties add their own with :func:`register_setup`.
"""

from __future__ import annotations

import errno
import importlib
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from sideband.errors import GangSetupError, MissingExtraError
from sideband.gang.contract import GangContext


@dataclass(frozen=True)
class GangPlan:
    """What the driver knows once members are placed and ranked."""

    name: str
    world_size: int
    master_addr: str
    master_port: int
    #: node_ip of each rank, in rank order.
    node_ips: tuple[str, ...]
    #: number of members on each node, in node-rank order (ranks are contiguous per node).
    node_sizes: tuple[int, ...]
    timeout_s: float
    #: each member's placement-group bundle (CPU, GPU, memory...): what a library sizes by.
    bundle: dict[str, float] = field(default_factory=dict)
    #: the gang's ``setup_options`` (they also reach every member, merged over prepare's).
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def single_node(self) -> bool:
        return len(self.node_sizes) == 1


class Setup:
    """Base class of gang setups; the default methods do nothing."""

    #: The name ``Gang(setup=...)`` accepts once registered.
    name = "base"
    #: Whether rank 0's MASTER_PORT socket is listening when handed over (for libraries that
    #: take the socket itself); otherwise it is only bound, so early peers are refused and retry.
    listen_master = False
    #: Modules every member imports in a background thread as soon as it starts, so the import
    #: overlaps the rest of the formation instead of opening :meth:`setup`.
    preload: tuple[str, ...] = ()

    # --- driver side ---------------------------------------------------------------------------
    def warm_up(self, options: dict[str, Any]) -> None:
        """Runs on the driver when the gang starts forming, before placement (``options``: the
        gang's setup_options): begin slow driver-side work (a JVM) that later steps wait for."""

    def prepare(self, plan: GangPlan) -> dict[str, Any]:
        """Runs on the driver before members set up; returns options sent to every member."""
        return {}

    def ready(self, results: list[Any]) -> None:
        """Runs on the driver once every member set up; ``results`` are what each member's
        :meth:`setup` returned, in rank order (e.g. to connect a driver-side client)."""

    def led(self, result: Any) -> None:
        """Runs on the driver as soon as rank 0's :meth:`lead` returned ``result``, while the
        members' :meth:`setup` still run (e.g. connect a client to the server rank 0 started)."""

    def client(self) -> Any:
        """The driver-side handle of the library (a SparkSession, a Dask Client), or None."""
        return None

    def stop(self) -> None:
        """Runs on the driver before the members tear down (close the driver-side client)."""

    def failure_note(self) -> str | None:
        """What the library reported to the driver about a failure (added to the GangError)."""
        return None

    def release(self) -> None:
        """Runs on the driver after the members were torn down or killed."""

    # --- member side ---------------------------------------------------------------------------
    def setup(
        self, ctx: GangContext, master_socket: socket.socket | None, options: dict[str, Any]
    ) -> Any:
        """Initialise the library in this member; what it returns reaches :meth:`ready`.

        ``master_socket`` is, on rank 0 only, a socket already bound to MASTER_PORT (listening if
        ``listen_master``): hand it to the library, or close it right before the library binds
        the port. Elsewhere None.
        """
        if master_socket is not None:
            master_socket.close()

    def lead(
        self, ctx: GangContext, master_socket: socket.socket | None, options: dict[str, Any]
    ) -> Any:
        """Optional first step on rank 0 alone (a subclass that overrides it gets it called):
        it runs before rank 0's :meth:`setup` but while the other members' setups already run,
        and takes rank 0's ``master_socket``; what it returns reaches the driver's :meth:`led`
        at once. For a library whose server the driver can use before every member is up."""
        return None

    def before_run(self, ctx: GangContext) -> None:
        """Runs in every member before each ``fn``."""

    def watch(self, ctx: GangContext, stopped: threading.Event) -> str | None:
        """Block until the library fails on its own (return why) or ``stopped`` is set at
        teardown (return None). Runs in its own thread of the member while the gang is up, so a
        library process that dies between two ``run`` calls still fails the gang at once."""
        stopped.wait()
        return None

    def teardown(self, ctx: GangContext) -> None:
        """Undo :meth:`setup`; the gang bounds it with a timeout, then kills the member."""


def leads(setup_cls: type[Setup]) -> bool:
    """Whether a setup class has a :meth:`Setup.lead` step of its own."""
    return setup_cls.lead is not Setup.lead


_REGISTRY: dict[str, str | type[Setup]] = {
    "env": "sideband.gang.env:EnvSetup",
    "torch": "sideband.gang.torch:TorchSetup",
    "mpi": "sideband.gang.mpi:MPISetup",
    "jax": "sideband.gang.jax:JaxSetup",
    "spark": "sideband.gang.spark:SparkSetup",
    "xgboost": "sideband.gang.xgboost:XGBoostSetup",
    "dask": "sideband.gang.dask:DaskSetup",
    "horovod": "sideband.gang.horovod:HorovodSetup",
}


def register_setup(name: str, setup: type[Setup]) -> None:
    """Make ``Gang(..., setup=name)`` use ``setup`` (a :class:`Setup` subclass)."""
    if not (isinstance(setup, type) and issubclass(setup, Setup)):
        raise TypeError(f"register_setup({name!r}, ...) needs a Setup subclass, got {setup!r}")
    _REGISTRY[name] = setup


def resolve_setup(setup: str | type[Setup] | Setup | None) -> type[Setup]:
    """The Setup class for a name, a class or an instance (None means the env contract only)."""
    if setup is None:
        setup = "env"
    if isinstance(setup, Setup):
        return type(setup)
    if isinstance(setup, type) and issubclass(setup, Setup):
        return setup
    if isinstance(setup, str):
        target = _REGISTRY.get(setup)
        if target is None:
            raise GangSetupError(
                f"unknown gang setup {setup!r}; known: {sorted(_REGISTRY)} "
                "(or register one with sideband.gang.register_setup)"
            )
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            return getattr(importlib.import_module(module), attr)
        return target
    raise TypeError(f"setup must be a name, a Setup subclass or None, not {setup!r}")


def require(module: str, extra: str) -> Any:
    """Import an optional dependency, or raise MissingExtraError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"the gang setup needs {module!r}, which is not installed: pip install 'sideband[{extra}]'"
        ) from e


def is_addr_in_use(exc: BaseException) -> bool:
    """Whether an error (ours or a library's) means the port was taken: worth a fresh rendezvous."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.EADDRINUSE:
            return True
        if "address already in use" in str(e).lower():
            return True
        e = e.__cause__ or e.__context__
    return False
