"""gRPC endpoints for Ray actors: ``@sideband.grpc.expose(...)``, discovery, ``call``.

grpcio is imported only when used; without it, :class:`~sideband.errors.MissingExtraError`
says to ``pip install 'sideband[grpc]'``. See :mod:`sideband.endpoint.grpc` and docs/endpoints.md.
"""

from __future__ import annotations

from sideband.endpoint.grpc import expose
from sideband.endpoint.grpc_client import (
    ActorClient,
    EndpointCallError,
    call,
    client,
    metadata,
    target,
    token,
    url,
)

__all__ = [
    "ActorClient",
    "EndpointCallError",
    "call",
    "client",
    "expose",
    "metadata",
    "target",
    "token",
    "url",
]
