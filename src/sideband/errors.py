"""One exception tree for everything sideband raises.

Every public error derives from :class:`SidebandError`. Where ``ray.util.collective``'s callers
catch a builtin type (``ValueError`` for a bad rank, ``RuntimeError`` for a failed op), the
matching sideband error derives from that builtin too, so code switched by one import line keeps
catching what it caught before.
"""

from __future__ import annotations

from typing import Any


class SidebandError(Exception):
    """Base class of every error sideband raises."""


class InvalidArgumentError(SidebandError, ValueError):
    """An argument is wrong on the calling rank (rank, world size, dtype, shape, name...)."""


class MissingExtraError(SidebandError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class ConfigError(InvalidArgumentError):
    """A ``SIDEBAND_*`` environment variable has a value sideband does not accept; the message
    names the variable, the value and what is accepted (docs/configuration.md lists them all)."""


# --- collectives -------------------------------------------------------------------------------


class CollectiveError(SidebandError, RuntimeError):
    """A collective or point-to-point operation failed."""


class GroupNotFoundError(CollectiveError, ValueError):
    """No group of that name exists in this process (never created, or destroyed)."""


class GroupBrokenError(CollectiveError):
    """The group failed earlier (timeout, lost peer, mismatch); destroy it and create a new one."""


class RendezvousError(CollectiveError):
    """Members could not find or connect to each other while a group was being formed."""


class CollectiveTimeoutError(CollectiveError, TimeoutError):
    """An operation did not complete within its deadline."""


class PeerLostError(CollectiveError):
    """A member of the group died or disconnected."""


class MismatchError(CollectiveError):
    """Ranks called different operations, or the same one with different sizes, dtypes or roots."""


class PeerOpError(CollectiveError):
    """Another rank's part of this op failed on that rank (its error is named); the op did nothing
    anywhere and the group stays usable."""


class BackendUnavailableError(CollectiveError):
    """The requested backend cannot run here (missing library, no GPU...)."""


class CollectiveUsageError(InvalidArgumentError, CollectiveError):
    """A call was invalid (bad rank, tensor type, list length or shape...).

    Both a ``ValueError`` and a ``RuntimeError``: ``ray.util.collective`` raises one or the other
    for these mistakes, and callers switched to sideband keep catching what they caught.
    """


class OutOfBandRefError(SidebandError, TypeError):
    """A ``ray.ObjectRef`` was about to be sent out of band, where Ray cannot count references."""


# --- endpoints ---------------------------------------------------------------------------------


class EndpointError(SidebandError):
    """An actor endpoint (HTTP or gRPC server) failed."""


class EndpointStartError(EndpointError):
    """An endpoint's server could not start (port taken, bad host, missing auth...)."""


class EndpointNotFoundError(EndpointError, LookupError):
    """No live endpoint exists for that actor or name."""


class EndpointCallError(EndpointError):
    """A gRPC call to an actor endpoint failed; ``code`` is the gRPC status code name."""

    def __init__(self, message: str, code: str, details: str) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class HTTPError(EndpointError):
    """Raised by an HTTP handler to answer ``status`` with ``detail`` (FastAPI's HTTPException).

    Any other exception escaping a handler is a bug in the handler and answers 500.
    """

    def __init__(
        self, status: int, detail: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})

    def __reduce__(self) -> Any:
        return (type(self), (self.status, self.detail, self.headers))


# --- gangs -------------------------------------------------------------------------------------


class GangError(SidebandError, RuntimeError):
    """A gang member died, its function raised, or the gang could not be set up."""


class GangSetupError(GangError):
    """A gang could not be placed or its library could not be initialised."""


class GangMemberError(GangError):
    """A member's function or setup raised, or the member died; names the rank and node."""

    def __init__(
        self,
        message: str,
        rank: int | None = None,
        node: str | None = None,
        remote_traceback: str | None = None,
    ) -> None:
        super().__init__(message)
        self.rank = rank
        self.node = node
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> Any:
        return (type(self), (self.args[0], self.rank, self.node, self.remote_traceback))


# --- test bed ----------------------------------------------------------------------------------


class TestbedError(SidebandError):
    """The test bed could not be built, used or torn down."""

    __test__ = False  # not a pytest test class, despite the name
