"""One running aiohttp server of one actor: routes, built-ins, start and graceful stop."""

from __future__ import annotations

import errno
import inspect
from typing import Any

from aiohttp import WSCloseCode, web

from sideband.endpoint import auth as _auth
from sideband.endpoint import host as _host
from sideband.endpoint.addresses import advertised_host, listen_error
from sideband.endpoint.addresses import url as _url
from sideband.endpoint.handlers import make_handler, make_ws_handler
from sideband.endpoint.metrics import Metrics
from sideband.endpoint.params import Binder
from sideband.endpoint.responses import error, to_response
from sideband.endpoint.routes import WEBSOCKET, path_params
from sideband.endpoint.watchdog import Watchdog
from sideband.endpoint.web_guard import WebPolicy


class HttpServer:
    """One running aiohttp server of one actor."""

    protocol = "http"

    def __init__(self, spec: Any, host: _host.Host) -> None:  # spec: http.HttpSpec
        self.spec = spec
        self.host = host
        what = f"HTTP endpoint of {host.describe()}"
        self.policy = _auth.resolve(spec.auth, spec.token, spec.host, what)
        self.token = self.policy.token
        self.what = what
        self.web = WebPolicy(
            spec.host, advertised_host(spec.host), spec.allowed_hosts, spec.cors_origins
        )
        labels = {"actor_class": host.cls_name, "actor_id": host.actor_id or ""}
        self.metrics = Metrics("sideband_http", labels, spec.metrics)
        self.routes_info: list[dict[str, Any]] = []
        self.binders: list[tuple[Any, Binder]] = []
        self.websockets: set[web.WebSocketResponse] = set()
        self.streams: set[web.StreamResponse] = set()
        self.url = ""
        self.extra: dict[str, Any] = {}
        self.runner: Any = None
        self.watchdog = Watchdog(spec.request_timeout_s)
        self._openapi: bytes | None = None

    def _build_app(self) -> web.Application:
        spec, host = self.spec, self.host
        app = web.Application(client_max_size=spec.max_body_bytes)
        methods: dict[str, list[str]] = {}
        for r in sorted(spec.routes, key=lambda r: r.path):
            bound = host.method(r.name)
            ws = r.method == WEBSOCKET
            raw = inspect.unwrap(getattr(type(host.instance), r.name))
            binder = Binder(raw, path_params(r.path), ("ws",) if ws else ("request",))
            self.binders.append((r, binder))
            if ws:
                app.router.add_route("GET", r.path, make_ws_handler(self, r, bound, binder))
                methods.setdefault(r.path, []).append("GET")
            else:
                handler = make_handler(self, r, bound, binder)
                app.router.add_route(r.method, r.path, handler)
                methods.setdefault(r.path, []).append(r.method)
                if r.method == "GET":
                    app.router.add_route("HEAD", r.path, handler)
                    methods[r.path].append("HEAD")
            self.routes_info.append(
                {"method": r.method, "path": r.path, "handler": r.name, "params": binder.describe()}
            )
        web_ = self.web
        for path, ms in methods.items():
            app.router.add_route("OPTIONS", path, web_.wrap(web_.options_handler(ms)))
        app.router.add_get("/-/healthz", web_.wrap(self._healthz))
        app.router.add_get("/-/routes", web_.wrap(self._guard(self._routes)))
        app.router.add_get("/-/metrics", web_.wrap(self._guard(self._metrics)))
        app.router.add_get("/-/openapi.json", web_.wrap(self._guard(self._openapi_json)))
        app.router.add_route("*", "/{_sideband_any_path:.*}", web_.fallback())  # 404 / 405
        return app

    async def start(self) -> None:
        spec = self.spec
        ssl_ctx = _auth.make_ssl_context(spec.ssl_context, self.what)
        self.runner = web.AppRunner(
            self._build_app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=spec.drain_timeout_s,
        )
        await self.runner.setup()
        self.watchdog.start()
        last: OSError | None = None
        for port in spec.ports:
            site = web.TCPSite(self.runner, spec.host, port, ssl_context=ssl_ctx, backlog=1024)
            try:
                await site.start()
            except OSError as e:
                last = e
                if e.errno == errno.EADDRINUSE and len(spec.ports) > 1:  # try the next port
                    continue
                break
            else:
                bound_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                scheme = "https" if ssl_ctx is not None else "http"
                self.url = _url(scheme, advertised_host(spec.host), bound_port)
                self.extra = {
                    "port": bound_port,
                    "bind_host": spec.host,
                    "tls": ssl_ctx is not None,
                }
                self.metrics.start()
                return
        await self.runner.cleanup()
        self.watchdog.stop()
        raise listen_error(self.what, spec.host, spec.ports, last) from last

    async def stop(self) -> None:
        # Open WebSockets would hold the drain for its whole timeout: tell them we are going.
        for ws in list(self.websockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        self.watchdog.stop()
        self.metrics.stop()

    # -- built-ins --------------------------------------------------------------------------

    def denied(self) -> web.Response:
        return error(
            401,
            f"Not authenticated: {self.what} requires 'Authorization: Bearer <token>'; "
            "get the token with sideband.http.token(actor)",
            {"WWW-Authenticate": 'Bearer realm="sideband"'},
        )

    def _authorized(self, request: web.Request) -> bool:
        return not self.policy.required or self.policy.header_ok(
            request.headers.get("Authorization")
        )

    def _guard(self, handler: Any) -> Any:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self._authorized(request):
                return self.denied()
            return await handler(request)

        return guarded

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        if self.host.draining:
            return error(503, f"{self.what} is shutting down")
        if not self._authorized(request):
            return to_response({"status": "ok"})  # load balancers need no more than this
        return to_response(
            {"status": "ok", "actor_id": self.host.actor_id, "class": self.host.cls_name}
        )

    async def _routes(self, request: web.Request) -> web.StreamResponse:
        return to_response(self.routes_info)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=self.metrics.render(), content_type="text/plain")

    async def _openapi_json(self, request: web.Request) -> web.StreamResponse:
        if self._openapi is None:
            from sideband.endpoint.openapi import document
            from sideband.endpoint.status import dumps

            self._openapi = dumps(document(self))
        return web.Response(body=self._openapi, content_type="application/json")
