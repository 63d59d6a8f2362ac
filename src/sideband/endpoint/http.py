"""HTTP endpoints: an aiohttp server inside a Ray actor, ready when the actor is constructed.

::

    @ray.remote(num_cpus=0)
    @sideband.http.expose()
    class Counter:
        def __init__(self):
            self.n = 0

        @sideband.http.get("/")
        def value(self) -> int:
            return self.n

        @sideband.http.post("/add")
        def add(self, k: int = 1) -> int:
            self.n += k
            return self.n

    c = Counter.remote()
    sideband.http.url(c)  # 'http://127.0.0.1:40123', accepting already
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sideband.endpoint import auth as _auth
from sideband.endpoint import host as _host
from sideband.endpoint import registry
from sideband.endpoint.metrics import Metrics
from sideband.endpoint.params import Binder, FieldError
from sideband.endpoint.status import dumps, http_status
from sideband.endpoint.watchdog import Watchdog
from sideband.errors import EndpointStartError

_ROUTES = "__sideband_routes__"
_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
_BUILTIN_PREFIX = "/-/"

# --- route decorators --------------------------------------------------------------------------


def route(method: str, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Serve ``method`` requests for ``path`` (``/items/{key}`` style parameters) with the method."""
    method = method.upper()
    if method not in _METHODS:
        raise ValueError(f"HTTP method must be one of {_METHODS}, not {method!r}")
    if not path.startswith("/"):
        raise ValueError(f"route path must start with '/', got {path!r}")
    if path.startswith(_BUILTIN_PREFIX):
        raise ValueError(f"paths under {_BUILTIN_PREFIX} are reserved for sideband's built-ins")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        routes = fn.__dict__.setdefault(_ROUTES, [])
        routes.append((method, path))
        return fn

    return deco


def get(path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Serve GET requests for ``path`` with the decorated method."""
    return route("GET", path)


def post(path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Serve POST requests for ``path`` with the decorated method."""
    return route("POST", path)


def put(path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Serve PUT requests for ``path`` with the decorated method."""
    return route("PUT", path)


def delete(path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Serve DELETE requests for ``path`` with the decorated method."""
    return route("DELETE", path)


def patch(path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Serve PATCH requests for ``path`` with the decorated method."""
    return route("PATCH", path)


# --- expose ------------------------------------------------------------------------------------


def _ports(port: int | tuple[int, int] | Iterable[int]) -> list[int]:
    if isinstance(port, int):
        ports = [port]
    elif isinstance(port, tuple) and len(port) == 2 and all(isinstance(p, int) for p in port):
        ports = list(range(port[0], port[1] + 1))  # an inclusive (low, high) range
    else:
        ports = [int(p) for p in port]
    if not ports or any(not 0 <= p <= 65535 for p in ports):
        raise ValueError(f"port must be 0, a port, a (low, high) range or ports, got {port!r}")
    return ports


def advertised_host(bind_host: str) -> str:
    """The address clients should use: the node's IP when bound to every interface."""
    if bind_host in ("0.0.0.0", "::", ""):
        import ray

        return ray.util.get_node_ip_address()
    return bind_host


def _url(scheme: str, host: str, port: int) -> str:
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


@dataclass
class HttpSpec:
    """The arguments of :func:`expose`, recorded on the class and started in each instance."""

    host: str
    ports: list[int]
    auth: str | None
    token: str | None
    ssl_context: Callable[[], Any] | None
    max_body_bytes: int
    request_timeout_s: float
    drain_timeout_s: float
    protocol: str = "http"
    routes: list[tuple[str, str, str]] = field(default_factory=list)

    def prepare(self, cls: type) -> None:
        seen: dict[tuple[str, str], str] = {}
        for klass in reversed(cls.__mro__):
            for name, fn in vars(klass).items():
                for method, path in getattr(fn, _ROUTES, ()):
                    seen[(method, path)] = name
        for (method, path), name in seen.items():
            fn = inspect.unwrap(getattr(cls, name))
            try:
                Binder(fn, _path_params(path))
            except TypeError as e:
                raise TypeError(
                    f"{cls.__name__}.{name} cannot serve {method} {path}: {e}"
                ) from None
            self.routes.append((method, path, name))

    async def start(self, host: _host.Host) -> HttpServer:
        server = HttpServer(self, host)
        await server.start()
        return server


def _path_params(path: str) -> set[str]:
    from aiohttp.web_urldispatcher import DynamicResource

    if "{" not in path:
        return set()
    return set(DynamicResource(path)._pattern.groupindex)


def expose(
    cls: type | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | tuple[int, int] | Iterable[int] = 0,
    auth: str | None = "auto",
    token: str | None = None,
    ssl_context: Callable[[], Any] | None = None,
    max_body_bytes: int = 1 << 20,
    request_timeout_s: float = 60.0,
    drain_timeout_s: float = 5.0,
) -> Any:
    """Class decorator: serve the class's routes over HTTP from inside each actor.

    Args:
        host: address to bind; loopback by default. "0.0.0.0" binds every interface and
            advertises the node's IP.
        port: 0 (a free port, the default), a fixed port, an inclusive ``(low, high)`` range or
            any iterable of ports, tried in order.
        auth: "auto" requires a bearer token unless bound to loopback; "token" always requires
            one; None requires none (off loopback this logs a warning).
        token: the bearer token to require (default: generated per endpoint). Members of the
            cluster read it with :func:`token`.
        ssl_context: zero-argument function returning an ``ssl.SSLContext`` (serves HTTPS).
        max_body_bytes: larger request bodies get 413.
        request_timeout_s: a handler running longer gets 504.
        drain_timeout_s: on graceful actor exit, how long in-flight requests may take.
    """
    _auth.check_mode(auth, token)
    _auth.check_ssl_arg(ssl_context)
    spec = HttpSpec(
        host=host,
        ports=_ports(port),
        auth=auth,
        token=token,
        ssl_context=ssl_context,
        max_body_bytes=int(max_body_bytes),
        request_timeout_s=float(request_timeout_s),
        drain_timeout_s=float(drain_timeout_s),
    )

    def deco(c: Any) -> Any:
        return _host.install(c, spec)

    return deco if cls is None else deco(cls)


# --- the server --------------------------------------------------------------------------------


def _error(status: int, error: str, message: str, **extra: Any) -> Any:
    body = {"error": error, "message": message, **extra}
    return web.Response(status=status, body=dumps(body), content_type="application/json")


def to_response(result: Any) -> Any:
    """A handler's return value as a Response: str -> text, bytes -> octet-stream, else JSON."""
    if isinstance(result, web.StreamResponse):
        return result
    if isinstance(result, str):
        return web.Response(text=result)
    if isinstance(result, (bytes, bytearray, memoryview)):
        return web.Response(body=bytes(result), content_type="application/octet-stream")
    return web.Response(body=dumps(result), content_type="application/json")


class HttpServer:
    """One running aiohttp server of one actor."""

    protocol = "http"

    def __init__(self, spec: HttpSpec, host: _host.Host) -> None:
        self.spec = spec
        self.host = host
        what = f"HTTP endpoint of {host.describe()}"
        self.policy = _auth.resolve(spec.auth, spec.token, spec.host, what)
        self.token = self.policy.token
        self.what = what
        self.metrics = Metrics(
            "sideband_http", {"actor_class": host.cls_name, "actor_id": host.actor_id or ""}
        )
        self.routes_info: list[dict[str, Any]] = []
        self.url = ""
        self.extra: dict[str, Any] = {}
        self.runner: Any = None
        self.watchdog = Watchdog(spec.request_timeout_s)

    async def start(self) -> None:
        spec, host = self.spec, self.host
        ssl_ctx = _auth.make_ssl_context(spec.ssl_context, self.what)
        app = web.Application(client_max_size=spec.max_body_bytes)
        for method, path, name in spec.routes:
            bound = host.method(name)
            binder = Binder(inspect.unwrap(getattr(type(host.instance), name)), _path_params(path))
            app.router.add_route(method, path, self._handler(method, path, bound, binder))
            self.routes_info.append(
                {"method": method, "path": path, "handler": name, "params": binder.describe()}
            )
        app.router.add_get("/-/healthz", self._healthz)
        app.router.add_get("/-/routes", self._guard(self._routes))
        app.router.add_get("/-/metrics", self._guard(self._metrics))
        self.runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=spec.drain_timeout_s
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
                return
        await self.runner.cleanup()
        self.watchdog.stop()
        ports = spec.ports[0] if len(spec.ports) == 1 else f"{spec.ports[0]}..{spec.ports[-1]}"
        hint = (
            "Another process holds the port: choose another one, or port=0 for a free one."
            if last is not None and last.errno == errno.EADDRINUSE
            else "Check the host: it must be an address of this node, or 0.0.0.0."
        )
        raise EndpointStartError(
            f"{self.what} could not listen on {spec.host}:{ports}: {last}. {hint}"
        ) from last

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        self.watchdog.stop()

    # -- handlers ---------------------------------------------------------------------------

    def _denied(self) -> Any:
        resp = _error(
            401,
            "unauthorized",
            f"{self.what} requires 'Authorization: Bearer <token>'; "
            "get the token with sideband.http.token(actor)",
        )
        resp.headers["WWW-Authenticate"] = 'Bearer realm="sideband"'
        return resp

    def _guard(self, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        async def guarded(request: Any) -> Any:
            if self.policy.required and not self.policy.header_ok(
                request.headers.get("Authorization")
            ):
                return self._denied()
            return await handler(request)

        return guarded

    async def _healthz(self, request: Any) -> Any:
        if self.host.draining:
            return _error(503, "draining", f"{self.what} is shutting down")
        return to_response(
            {"status": "ok", "actor_id": self.host.actor_id, "class": self.host.cls_name}
        )

    async def _routes(self, request: Any) -> Any:
        return to_response(self.routes_info)

    async def _metrics(self, request: Any) -> Any:
        return web.Response(text=self.metrics.render(), content_type="text/plain")

    def _handler(
        self, method: str, path: str, fn: Callable[..., Any], binder: Binder
    ) -> Callable[[Any], Any]:
        host, policy, observe = self.host, self.policy, self.metrics.observe
        timeout_s = self.spec.request_timeout_s
        what = self.what
        wants_input = not binder.needs_nothing
        watchdog = self.watchdog
        inflight = watchdog.inflight
        direct = host.direct(fn)
        current_task = asyncio.current_task

        async def handler(request: web.Request) -> web.StreamResponse:
            t0 = time.perf_counter()
            task = current_task()
            inflight[task] = t0  # type: ignore[index]
            try:
                if policy.required and not policy.header_ok(request.headers.get("Authorization")):
                    resp = self._denied()
                else:
                    kwargs: dict[str, Any] = {}
                    if wants_input or request.query or request.body_exists:
                        body = await _read_json(request) if request.body_exists else None
                        if body is not None and not isinstance(body, dict):
                            raise FieldError(
                                "body", "the JSON body must be an object of named arguments"
                            )
                        kwargs = binder.bind(request.match_info, request.query, body, request)
                    if direct:
                        result = await fn(**kwargs)
                    else:
                        result = await host.call(fn, kwargs)
                    resp = to_response(result)
            except FieldError as e:
                resp = _error(422, "invalid_field", str(e), field=e.field)
            except _BadBody as e:
                resp = _error(e.status, e.error, e.message)
            except web.HTTPException as e:
                resp = _error(e.status, type(e).__name__, e.text or e.reason)
            except asyncio.CancelledError:
                if not watchdog.timed_out(task):  # type: ignore[arg-type]
                    raise
                resp = _error(
                    504, "timeout", f"{what}: {fn.__name__} took longer than {timeout_s:g} s"
                )
            except Exception as e:
                status = http_status(e)
                if status == 500:
                    _host.logger.exception("%s: %s %s failed", what, method, path)
                resp = _error(status, type(e).__name__, str(e), actor=host.actor_id)
            finally:
                del inflight[task]  # type: ignore[arg-type]
            observe(path, method, resp.status, time.perf_counter() - t0)
            return resp

        return handler


class _BadBody(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


async def _read_json(request: Any) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise _BadBody(413, "body_too_large", e.text or "request body too large") from None
    if not raw:
        return None
    # Any content type is read as JSON: curl -d sends form-encoded headers with JSON bodies.
    try:
        return json.loads(raw)
    except ValueError as e:
        raise _BadBody(400, "malformed_json", f"the body is not valid JSON: {e}") from None


# --- discovery ---------------------------------------------------------------------------------


def url(actor: Any, timeout_s: float = 30.0, namespace: str | None = None) -> str:
    """The base URL of ``actor``'s HTTP endpoint (a handle or an actor name), from any process.

    Waits up to ``timeout_s`` while the actor is created or restarted; raises
    :class:`~sideband.errors.EndpointNotFoundError` if it is dead or not exposed.
    """
    return registry.lookup(actor, "http", timeout_s, namespace)["url"]


def token(actor: Any, timeout_s: float = 30.0, namespace: str | None = None) -> str | None:
    """The bearer token ``actor``'s HTTP endpoint requires, or None if it requires none."""
    return registry.lookup(actor, "http", timeout_s, namespace).get("token")


def headers(actor: Any, timeout_s: float = 30.0, namespace: str | None = None) -> dict[str, str]:
    """The headers a request to ``actor`` needs: ``{"Authorization": "Bearer ..."}`` or ``{}``."""
    tok = token(actor, timeout_s, namespace)
    return {"Authorization": f"Bearer {tok}"} if tok else {}
