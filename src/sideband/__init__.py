"""sideband: fast, safe out-of-band communication between Ray actors."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sideband import config
from sideband._version import __version__
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

if TYPE_CHECKING:  # what __getattr__ below imports on first use, spelled out for type checkers
    from sideband import gang, grpc, guard, http, tcp
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
    from sideband.endpoint.registry import list_endpoints as endpoints
    from sideband.gang import Gang

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

# Everything but the errors and config is imported on first use (PEP 562): a process that only
# needs a gang member or an endpoint (0.1-0.5 s less per process) does not pay for the collective
# core, and collective users do not pay for aiohttp / grpcio / placement groups.
_LAZY_MODULES = {
    "gang": "sideband.gang",
    "grpc": "sideband.grpc",
    "guard": "sideband.guard",
    "http": "sideband.http",
    "tcp": "sideband.tcp",
}
_LAZY_NAMES = {  # public name -> (module, attribute)
    "Gang": ("sideband.gang", "Gang"),
    "Group": ("sideband.collective.api.group", "Group"),
    "GroupHandle": ("sideband.collective.api.driver", "GroupHandle"),
    "ReduceOp": ("sideband.collective.types", "ReduceOp"),
    "Work": ("sideband.collective.runtime.work", "Work"),
    "create_group": ("sideband.collective.api.driver", "create_group"),
    "destroy_group": ("sideband.collective.api.table", "destroy_group"),
    "endpoints": ("sideband.endpoint.registry", "list_endpoints"),
    "get_group": ("sideband.collective.api.table", "get_group"),
    "init_group": ("sideband.collective.api.table", "init_group"),
    "is_group_initialized": ("sideband.collective.api.table", "is_group_initialized"),
    "list_groups": ("sideband.collective.api.driver", "list_groups"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(_LAZY_MODULES[name])
    if name in _LAZY_NAMES:
        module, attr = _LAZY_NAMES[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # later look-ups skip __getattr__
        return value
    raise AttributeError(f"module 'sideband' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
