"""What a web page may make an endpoint do: the Host rule, the Origin rule and opt-in CORS.

A loopback endpoint needs no token, so it must not obey a page that a browser on the machine
loads from elsewhere (cross-site requests, DNS rebinding):

* **Host**: a loopback endpoint answers only requests whose ``Host`` is a loopback name or
  address (``localhost``, ``127.0.0.0/8``, ``::1``) or one of ``allowed_hosts``; a rebound DNS
  name arrives with the attacker's ``Host`` and gets 400.
* **Origin**: a state-changing request (any method but GET/HEAD/OPTIONS) and every WebSocket
  handshake carrying an ``Origin`` must come from the endpoint's own origin or from one of
  ``cors_origins``; others get 403. Requests without ``Origin`` are not from a browser page.
* **Content type**: a JSON body must say so (415 otherwise; see :mod:`.handlers`), so a
  cross-site "simple" ``text/plain`` form cannot pass as JSON.
* **CORS** is off unless ``cors_origins`` lists origins (or ``"*"``); then the answers carry
  ``Access-Control-Allow-Origin`` and preflights are answered.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from sideband.endpoint.auth import is_loopback
from sideband.endpoint.responses import error

SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
_LOOPBACK_NAMES = frozenset(("localhost", "localhost.", "127.0.0.1", "::1"))
_CACHE_MAX = 256


def host_name(header: str) -> str:
    """The host part of a ``Host`` header, lower-case, without port or brackets."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    if h.count(":") == 1:
        h = h.rsplit(":", 1)[0]
    return h.rstrip(".")


def _loopback_name(name: str) -> bool:
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class WebPolicy:
    """The Host, Origin and CORS rules of one HTTP endpoint."""

    def __init__(
        self,
        bind_host: str,
        advertised: str,
        allowed_hosts: Iterable[str] = (),
        cors_origins: Iterable[str] = (),
        cors_allow_headers: Iterable[str] = ("Authorization", "Content-Type"),
        cors_max_age_s: int = 600,
    ) -> None:
        allowed = [h.lower().rstrip(".") for h in allowed_hosts]
        self.any_host = "*" in allowed
        # Off loopback the token protects the endpoint; Host is checked only when asked.
        self.check_host = not self.any_host and (is_loopback(bind_host) or bool(allowed))
        self.names = frozenset(allowed) | {advertised.lower(), bind_host.lower()}
        self._seen: dict[str, bool] = {}
        origins = [o.rstrip("/") for o in cors_origins]
        self.cors_any = "*" in origins
        self.cors = frozenset(o.lower() for o in origins if o != "*")
        self.cors_enabled = self.cors_any or bool(self.cors)
        self.allow_headers = ", ".join(cors_allow_headers)
        self.max_age = str(int(cors_max_age_s))

    def host_ok(self, header: str | None) -> bool:
        if not self.check_host or header is None:
            return True  # HTTP/1.0 clients send no Host: not a browser
        ok = self._seen.get(header)
        if ok is None:
            name = host_name(header)
            ok = name in self.names or _loopback_name(name)
            if len(self._seen) < _CACHE_MAX:
                self._seen[header] = ok
        return ok

    def cors_allows(self, origin: str) -> bool:
        return self.cors_any or origin.lower() in self.cors

    def origin_ok(self, origin: str, request: Any) -> bool:
        """Same origin as the endpoint itself, or one CORS allows."""
        if self.cors_allows(origin) and origin != "null":
            return True
        host = request.headers.get("Host")
        return host is not None and origin.lower() == f"{request.scheme}://{host}".lower()

    def cors_headers(self, origin: str | None) -> dict[str, str]:
        if origin is None or not self.cors_enabled or not self.cors_allows(origin):
            return {}
        return {"Access-Control-Allow-Origin": "*" if self.cors_any else origin, "Vary": "Origin"}

    def refuse(self, request: web.Request) -> web.Response | None:
        """The answer refusing ``request`` (400 Host, 403 Origin), or None to serve it.

        Called first by every handler (a middleware would cost each request more).
        """
        headers = request.headers
        if self.check_host and not self.host_ok(headers.get("Host")):
            return error(400, "Invalid host header: this endpoint answers loopback names only")
        origin = headers.get("Origin")
        if (
            origin is not None
            and (request.method not in SAFE_METHODS or "Upgrade" in headers)
            and not self.origin_ok(origin, request)
        ):
            return error(
                403,
                f"Origin {origin!r} may not call this endpoint: add it to cors_origins to "
                "allow cross-origin requests",
            )
        return None

    def add_cors(self, request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
        if self.cors_enabled and not resp.prepared:
            resp.headers.update(self.cors_headers(request.headers.get("Origin")))
        return resp

    def wrap(self, handler: Any) -> Any:
        """``handler`` behind :meth:`refuse`, with CORS headers (built-ins, OPTIONS)."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            bad = self.refuse(request)
            if bad is not None:
                return bad
            return self.add_cors(request, await handler(request))

        return guarded

    def fallback(self) -> Any:
        """The last route, matching every path: FastAPI-shaped 404 and 405 answers."""

        async def not_found(request: web.Request) -> web.StreamResponse:
            allowed: set[str] = set()
            for resource in request.app.router.resources():
                if resource is not request.match_info.route.resource:
                    allowed |= (await resource.resolve(request))[1]
            if allowed:
                return error(405, "Method Not Allowed", {"Allow": ", ".join(sorted(allowed))})
            return error(404, "Not Found")

        return self.wrap(not_found)

    def options_handler(self, methods: list[str]) -> Any:
        """OPTIONS for one path: a CORS preflight answer, or the ``Allow`` list."""
        allow = ", ".join(sorted({*methods, "OPTIONS"}))

        async def options(request: web.Request) -> web.StreamResponse:
            origin = request.headers.get("Origin")
            wanted = request.headers.get("Access-Control-Request-Method")
            if origin is None or wanted is None:
                return web.Response(status=204, headers={"Allow": allow})
            if not self.cors_enabled or not self.cors_allows(origin):
                return error(403, f"CORS does not allow origin {origin!r} on this endpoint")
            return web.Response(
                status=204,
                headers={
                    **self.cors_headers(origin),
                    "Access-Control-Allow-Methods": allow,
                    "Access-Control-Allow-Headers": self.allow_headers,
                    "Access-Control-Max-Age": self.max_age,
                },
            )

        return options
