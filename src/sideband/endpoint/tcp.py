"""Raw TCP endpoints: an asyncio stream server inside a Ray actor, with HTTP's lifecycle.

::

    @ray.remote(num_cpus=0)
    @sideband.tcp.expose()
    class Echo:
        @sideband.tcp.handler
        async def serve(self, reader, writer):  # one call per connection
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()

    reader, writer = await sideband.tcp.open_connection(actor)  # or sideband.tcp.connect(actor)

Same rules as HTTP: a free port (or a fixed one, a range), listening before ``__init__``
returns, discovery through the registry (``tcp://host:port``), gone on exit or death, and a
token off loopback. A raw stream has no headers, so a client proves the token with one line,
``sideband-token <token>\\n``, before its first byte (the helpers send it). A connection whose
first bytes are an HTTP request line is dropped: a web page can make a browser send HTTP to
any loopback port, and that must not reach a raw protocol handler as data.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sideband.endpoint import addresses
from sideband.endpoint import auth as _auth
from sideband.endpoint import host as _host

_HANDLER = "__sideband_tcp_handler__"
HELLO = b"sideband-token "
_HTTP_START = re.compile(rb"^(GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|CONNECT|TRACE) ")
_PEEK = 8  # bytes needed to recognise an HTTP request line


def handler(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark the method that serves each connection: ``async def m(self, reader, writer)``."""
    if not inspect.iscoroutinefunction(inspect.unwrap(fn)):
        raise TypeError(f"{fn.__qualname__}: a TCP handler must be an async def method")
    setattr(fn, _HANDLER, True)
    return fn


class _GuardedReader(asyncio.StreamReader):
    """A StreamReader that drops the connection if its first bytes are an HTTP request line.

    Until the first bytes decide it, they are held back (a client that sends ``"GE"`` and waits
    waits for ever), so that no part of a request line reaches the handler.
    """

    _held = b""
    _decided = False

    def feed_data(self, data: bytes) -> None:  # type: ignore[override]
        if not self._decided:
            self._held += data
            head = self._held[:_PEEK]
            if _HTTP_START.match(head):
                transport = getattr(self, "_transport", None)
                self._held = b""
                self.set_exception(ConnectionResetError("HTTP request on a raw TCP endpoint"))
                if transport is not None:
                    transport.abort()
                return
            if len(head) < _PEEK and any(m.startswith(head) for m in _METHOD_PREFIXES):
                return  # could still become "POST ": wait for more
            self._decided = True
            data, self._held = self._held, b""
        super().feed_data(data)

    def feed_eof(self) -> None:
        if not self._decided and self._held:
            self._decided = True
            super().feed_data(self._held)
        super().feed_eof()


_METHOD_PREFIXES = (
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
)


@dataclass
class TcpSpec:
    """The arguments of :func:`expose`, recorded on the class and started in each instance."""

    host: str
    ports: list[int]
    auth: str | None
    token: str | None
    ssl_context: Callable[[], Any] | None
    drain_timeout_s: float
    hello_timeout_s: float
    max_connections: int
    limit: int
    handler_name: str | None = None
    protocol: str = "tcp"
    names: list[str] = field(default_factory=list)

    def prepare(self, cls: type) -> None:
        marked = sorted(
            {n for k in cls.__mro__ for n, f in vars(k).items() if getattr(f, _HANDLER, False)}
        )
        if self.handler_name is None:
            if len(marked) != 1:
                raise TypeError(
                    f"{cls.__name__}: mark exactly one method with @sideband.tcp.handler "
                    f"(found {marked or 'none'}), or pass handler='method'"
                )
            self.handler_name = marked[0]
        fn = getattr(cls, self.handler_name, None)
        if fn is None or not inspect.iscoroutinefunction(inspect.unwrap(fn)):
            raise TypeError(f"{cls.__name__}.{self.handler_name} must be an async def method")

    async def start(self, host: _host.Host) -> TcpServer:
        server = TcpServer(self, host)
        await server.start()
        return server


class TcpServer:
    """One running asyncio server of one actor."""

    protocol = "tcp"

    def __init__(self, spec: TcpSpec, host: _host.Host) -> None:
        self.spec, self.host = spec, host
        self.what = f"TCP endpoint of {host.describe()}"
        self.policy = _auth.resolve(spec.auth, spec.token, spec.host, self.what)
        self.token = self.policy.token
        self.url = ""
        self.extra: dict[str, Any] = {}
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.writers: set[asyncio.StreamWriter] = set()
        self.fn = host.method(spec.handler_name or "")

    async def start(self) -> None:
        spec = self.spec
        ssl_ctx = _auth.make_ssl_context(spec.ssl_context, self.what)
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.StreamReaderProtocol:
            reader = _GuardedReader(limit=spec.limit, loop=loop)
            return asyncio.StreamReaderProtocol(reader, self._connected, loop=loop)

        last: OSError | None = None
        for port in spec.ports:
            try:
                self.server = await loop.create_server(
                    factory, spec.host, port, ssl=ssl_ctx, backlog=1024, reuse_address=True
                )
            except OSError as e:
                last = e
                if e.errno == errno.EADDRINUSE and len(spec.ports) > 1:
                    continue
                break
            bound = self.server.sockets[0].getsockname()[1]
            host = addresses.advertised_host(spec.host)
            self.url = addresses.url("tls" if ssl_ctx else "tcp", host, bound)
            self.extra = {"port": bound, "bind_host": spec.host, "tls": ssl_ctx is not None}
            return
        raise addresses.listen_error(self.what, spec.host, spec.ports, last) from last

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self.tasks) >= self.spec.max_connections:
            writer.close()  # over the cap: refuse rather than queue without bound
            return
        self.tasks.add(task)  # type: ignore[arg-type]
        self.writers.add(writer)
        try:
            if self.policy.required and not await self._hello(reader):
                return
            await self.fn(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        except Exception:
            _host.logger.exception("%s: the connection handler failed", self.what)
        finally:
            self.tasks.discard(task)  # type: ignore[arg-type]
            self.writers.discard(writer)
            writer.close()

    async def _hello(self, reader: asyncio.StreamReader) -> bool:
        """Read ``sideband-token <token>\\n`` within the deadline; False drops the client."""
        expected = HELLO + self.token.encode() + b"\n"  # type: ignore[union-attr]
        try:
            line = await asyncio.wait_for(
                reader.readexactly(len(expected)), self.spec.hello_timeout_s
            )
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return False
        if hmac.compare_digest(line, expected):
            return True
        _host.logger.warning("%s: a connection without the right token was dropped", self.what)
        return False

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()  # no new connections
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=self.spec.drain_timeout_s)
            for w in list(self.writers):
                w.close()
            for t in pending:
                t.cancel()
        await self.server.wait_closed()
        self.server = None


def expose(
    cls: type | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | tuple[int, int] | Iterable[int] = 0,
    auth: str | None = "auto",
    token: str | None = None,
    ssl_context: Callable[[], Any] | None = None,
    handler: str | None = None,
    drain_timeout_s: float = 5.0,
    hello_timeout_s: float = 10.0,
    max_connections: int = 1024,
    limit: int = 1 << 16,
) -> Any:
    """Class decorator: serve raw TCP connections from inside each actor.

    Args:
        host, port, auth, token, ssl_context, drain_timeout_s: as for
            :func:`sideband.http.expose`.
        handler: the method serving each connection (default: the one marked with
            :func:`handler`), ``async def m(self, reader, writer)`` with asyncio streams.
        hello_timeout_s: how long a client may take to send its token line.
        max_connections: connections beyond this are closed at once.
        limit: the StreamReader's buffer limit (``readline`` raises past it).
    """
    _auth.check_mode(auth, token)
    _auth.check_ssl_arg(ssl_context)
    spec = TcpSpec(
        host=host,
        ports=addresses.ports(port),
        auth=auth,
        token=token,
        ssl_context=ssl_context,
        drain_timeout_s=float(drain_timeout_s),
        hello_timeout_s=float(hello_timeout_s),
        max_connections=int(max_connections),
        limit=int(limit),
        handler_name=handler,
    )

    def deco(c: Any) -> Any:
        return _host.install(c, spec)

    return deco if cls is None else deco(cls)
