"""HTTP endpoints for Ray actors: ``@sideband.http.expose()``, route decorators, discovery.

See :mod:`sideband.endpoint.http` and docs/endpoints.md.
"""

from __future__ import annotations

from sideband.endpoint.http import (
    delete,
    expose,
    get,
    headers,
    patch,
    post,
    put,
    route,
    token,
    url,
)

__all__ = ["delete", "expose", "get", "headers", "patch", "post", "put", "route", "token", "url"]
