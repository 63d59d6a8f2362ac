"""sideband: fast, safe out-of-band communication between Ray actors."""

from __future__ import annotations

from typing import Any

from sideband import config, guard
from sideband._version import __version__
from sideband.collective.api.driver import GroupHandle, create_group, list_groups
from sideband.collective.api.group import Group
from sideband.collective.api.table import (
    destroy_group,
    get_group,
    init_group,
    is_group_initialized,
)
from sideband.collective.runtime.work import Work
from sideband.collective.types import ReduceOp
from sideband.errors import (
    BackendUnavailableError,
    CollectiveError,
    CollectiveTimeoutError,
    ConfigError,
    EndpointError,
    EndpointNotFoundError,
    EndpointStartError,
    GangError,
    GangSetupError,
    GroupBrokenError,
    GroupNotFoundError,
    InvalidArgumentError,
    MismatchError,
    MissingExtraError,
    OutOfBandRefError,
    PeerLostError,
    PeerOpError,
    RendezvousError,
    SidebandError,
)

# SIDEBAND_LOG_LEVEL, applied once per process: every process that uses sideband imports this.
config.configure_logging()

__all__ = [
    "__version__",
    "BackendUnavailableError",
    "CollectiveError",
    "CollectiveTimeoutError",
    "ConfigError",
    "EndpointError",
    "EndpointNotFoundError",
    "EndpointStartError",
    "Gang",
    "GangError",
    "GangSetupError",
    "Group",
    "GroupBrokenError",
    "GroupHandle",
    "GroupNotFoundError",
    "InvalidArgumentError",
    "MismatchError",
    "MissingExtraError",
    "OutOfBandRefError",
    "PeerLostError",
    "PeerOpError",
    "ReduceOp",
    "RendezvousError",
    "SidebandError",
    "Work",
    "create_group",
    "destroy_group",
    "endpoints",
    "gang",
    "get_group",
    "grpc",
    "guard",
    "http",
    "init_group",
    "is_group_initialized",
    "list_groups",
    "tcp",
]

# Endpoints and gangs are imported on first use: they pull in aiohttp / grpcio / placement groups,
# which collective users should not pay for at import time.
_LAZY_MODULES = {
    "http": "sideband.http",
    "grpc": "sideband.grpc",
    "gang": "sideband.gang",
    "tcp": "sideband.tcp",
}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY_MODULES:
        return importlib.import_module(_LAZY_MODULES[name])
    if name == "Gang":
        return importlib.import_module("sideband.gang").Gang
    if name == "endpoints":
        return importlib.import_module("sideband.endpoint.registry").list_endpoints
    raise AttributeError(f"module 'sideband' has no attribute {name!r}")
