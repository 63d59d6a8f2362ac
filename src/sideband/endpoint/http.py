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

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sideband.endpoint import addresses, registry
from sideband.endpoint import auth as _auth
from sideband.endpoint import host as _host
from sideband.endpoint.http_server import HttpServer
from sideband.endpoint.params import Binder
from sideband.endpoint.routes import WEBSOCKET, Route, collect, path_params
from sideband.endpoint.typeinfo import collect_hints, remember

# --- expose ------------------------------------------------------------------------------------


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
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    ws_heartbeat_s: float | None = None
    metrics: str = "ray"
    title: str | None = None
    protocol: str = "http"
    routes: list[Route] = field(default_factory=list)
    hints: dict[Any, dict[str, Any]] = field(default_factory=dict)

    def prepare(self, cls: type) -> None:
        for r in collect(cls):
            fn = inspect.unwrap(getattr(cls, r.name))
            collect_hints(fn, self.hints)
            if inspect.isgeneratorfunction(fn):
                raise TypeError(
                    f"{cls.__name__}.{r.name} is a generator: streaming routes must be async "
                    "generators (async def ... yield)"
                )
            try:
                Binder(fn, path_params(r.path), ("ws",) if r.method == WEBSOCKET else ("request",))
            except TypeError as e:
                raise TypeError(
                    f"{cls.__name__}.{r.name} cannot serve {r.method} {r.path}: {e}"
                ) from None
            self.routes.append(r)
        self.title = self.title or cls.__name__

    async def start(self, host: _host.Host) -> Any:
        remember(self.hints)
        server = HttpServer(self, host)
        await server.start()
        return server


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
    allowed_hosts: Iterable[str] = (),
    cors_origins: Iterable[str] = (),
    ws_heartbeat_s: float | None = None,
    metrics: str | None = "ray",
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
        allowed_hosts: ``Host`` names accepted besides loopback ones (a loopback endpoint
            refuses any other ``Host``: DNS rebinding); ``["*"]`` turns the check off.
        cors_origins: origins (``"https://app.example"``) whose pages may call the endpoint
            (CORS); ``["*"]`` for any. Default: none, and cross-origin state-changing requests
            get 403.
        ws_heartbeat_s: WebSocket ping interval (None: no pings).
        metrics: "ray" exports request metrics through ``ray.util.metrics`` (batched) and
            serves ``/-/metrics``; "local" only serves ``/-/metrics``; None counts nothing.
    """
    if metrics not in ("ray", "local", None):
        raise ValueError(f"metrics must be 'ray', 'local' or None, not {metrics!r}")
    for name, values in (("allowed_hosts", allowed_hosts), ("cors_origins", cors_origins)):
        if isinstance(values, str):
            raise TypeError(f"{name} takes a list of strings, not one string ({values!r})")
    _auth.check_mode(auth, token)
    _auth.check_ssl_arg(ssl_context)
    spec = HttpSpec(
        host=host,
        ports=addresses.ports(port),
        auth=auth,
        token=token,
        ssl_context=ssl_context,
        max_body_bytes=int(max_body_bytes),
        request_timeout_s=float(request_timeout_s),
        drain_timeout_s=float(drain_timeout_s),
        allowed_hosts=tuple(allowed_hosts),
        cors_origins=tuple(cors_origins),
        ws_heartbeat_s=None if ws_heartbeat_s is None else float(ws_heartbeat_s),
        metrics=metrics or "off",
    )

    def deco(c: Any) -> Any:
        return _host.install(c, spec)

    return deco if cls is None else deco(cls)


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
