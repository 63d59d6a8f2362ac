"""Route decorators: ``@sideband.http.get(path)`` and friends mark methods an endpoint serves.

A mark is data on the function (``__sideband_routes__``); :func:`collect` reads the marks of a
class, its bases included, when the class is exposed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ROUTES_ATTR = "__sideband_routes__"
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
WEBSOCKET = "WEBSOCKET"
BUILTIN_PREFIX = "/-/"

Deco = Callable[[Callable[..., Any]], Callable[..., Any]]


@dataclass(frozen=True)
class Route:
    """One served route: ``method`` is an HTTP method or ``WEBSOCKET``."""

    method: str
    path: str
    name: str = ""
    media_type: str | None = None
    status_code: int = 200
    summary: str | None = None


def _check_path(path: str) -> None:
    if not path.startswith("/"):
        raise ValueError(f"route path must start with '/', got {path!r}")
    if path.startswith(BUILTIN_PREFIX):
        raise ValueError(f"paths under {BUILTIN_PREFIX} are reserved for sideband's built-ins")


def _mark(route: Route) -> Deco:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__dict__.setdefault(ROUTES_ATTR, []).append(route)
        return fn

    return deco


def route(
    method: str,
    path: str,
    *,
    media_type: str | None = None,
    status_code: int = 200,
    summary: str | None = None,
) -> Deco:
    """Serve ``method`` requests for ``path`` (``/items/{key}`` style parameters) with the method.

    ``media_type`` sets the response's content type; for an async generator method
    ``"text/event-stream"`` sends each item as a server-sent event. ``status_code`` is the
    status of a successful answer. ``summary`` goes into the OpenAPI document (default: the
    first line of the docstring).
    """
    method = method.upper()
    if method not in METHODS:
        raise ValueError(f"HTTP method must be one of {METHODS}, not {method!r}")
    _check_path(path)
    if not 100 <= int(status_code) <= 599:
        raise ValueError(f"status_code must be an HTTP status, not {status_code!r}")
    return _mark(Route(method, path, "", media_type, int(status_code), summary))


def get(path: str, **options: Any) -> Deco:
    """Serve GET (and HEAD) requests for ``path`` with the decorated method."""
    return route("GET", path, **options)


def post(path: str, **options: Any) -> Deco:
    """Serve POST requests for ``path`` with the decorated method."""
    return route("POST", path, **options)


def put(path: str, **options: Any) -> Deco:
    """Serve PUT requests for ``path`` with the decorated method."""
    return route("PUT", path, **options)


def delete(path: str, **options: Any) -> Deco:
    """Serve DELETE requests for ``path`` with the decorated method."""
    return route("DELETE", path, **options)


def patch(path: str, **options: Any) -> Deco:
    """Serve PATCH requests for ``path`` with the decorated method."""
    return route("PATCH", path, **options)


def websocket(path: str) -> Deco:
    """Serve WebSocket connections on ``path``: ``async def chat(self, ws, room: str)``.

    The parameter named ``ws`` (or annotated ``aiohttp.web.WebSocketResponse``) receives
    aiohttp's prepared WebSocket; other parameters come from the path and the query.
    """
    _check_path(path)

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.iscoroutinefunction(inspect.unwrap(fn)):
            raise TypeError(f"{fn.__qualname__}: a WebSocket handler must be an async def method")
        return _mark(Route(WEBSOCKET, path))(fn)

    return deco


def collect(cls: type) -> list[Route]:
    """Every route of ``cls`` (subclasses override their bases' routes), with handler names."""
    seen: dict[tuple[str, str], Route] = {}
    for klass in reversed(cls.__mro__):
        for name, fn in vars(klass).items():
            for r in getattr(fn, ROUTES_ATTR, ()):
                seen[(r.method, r.path)] = Route(
                    r.method, r.path, name, r.media_type, r.status_code, r.summary
                )
    return list(seen.values())


def path_params(path: str) -> set[str]:
    """The ``{name}`` parameters of an aiohttp path."""
    from aiohttp.web_urldispatcher import DynamicResource

    if "{" not in path:
        return set()
    return set(DynamicResource(path)._pattern.groupindex)
