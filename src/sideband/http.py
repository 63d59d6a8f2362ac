"""HTTP endpoints for Ray actors: ``@sideband.http.expose()``, route decorators, discovery.

See :mod:`sideband.endpoint.http` and docs/endpoints.md.
"""

from __future__ import annotations

from sideband.endpoint.http import expose, headers, token, url
from sideband.endpoint.responses import ServerSentEvent
from sideband.endpoint.routes import delete, get, patch, post, put, route, websocket
from sideband.endpoint.typeinfo import Param
from sideband.errors import HTTPError

__all__ = [
    "HTTPError",
    "Param",
    "ServerSentEvent",
    "delete",
    "expose",
    "get",
    "headers",
    "patch",
    "post",
    "put",
    "route",
    "token",
    "url",
    "websocket",
]
