"""gRPC endpoints: a ``grpc.aio`` server inside a Ray actor, with the HTTP side's lifecycle.

Two ways in, on one server:

* your generated servicers: ``servicers=[greeter_pb2_grpc.add_GreeterServicer_to_server]``;
  each RPC is served by the actor method of the same name, ``def SayHello(self, request,
  context)`` (async generator methods serve server-streaming RPCs on async actors);
* the generic ``sideband.v1.Actor/Call`` service: any exposed method, with JSON keyword
  arguments; :func:`sideband.endpoint.grpc_client.call` is its client.

The standard health service (grpcio-health-checking) and reflection (grpcio-reflection) are
always on. Needs the ``sideband[grpc]`` extra; grpcio is imported only when used.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sideband.endpoint import addresses, generic_proto
from sideband.endpoint import auth as _auth
from sideband.endpoint import host as _host
from sideband.endpoint.params import Binder, FieldError
from sideband.endpoint.status import dumps, grpc_code_name
from sideband.endpoint.typeinfo import collect_hints, remember
from sideband.errors import EndpointStartError, MissingExtraError

_HEALTH_PREFIX = "/grpc.health.v1.Health/"


def _grpc() -> Any:
    try:
        import grpc
        import grpc.aio  # noqa: F401
        import grpc_health.v1.health  # noqa: F401
        import grpc_reflection.v1alpha.reflection  # noqa: F401
    except ImportError as e:
        raise MissingExtraError(
            f"gRPC endpoints need grpcio, grpcio-health-checking and grpcio-reflection ({e}). "
            "Install them with: pip install 'sideband[grpc]'"
        ) from e
    return grpc


# --- expose ------------------------------------------------------------------------------------


@dataclass
class GrpcSpec:
    """The arguments of :func:`expose`, recorded on the class and started in each instance."""

    host: str
    ports: list[int]
    auth: str | None
    token: str | None
    servicers: list[Callable[[Any, Any], None]]
    generic: bool
    methods: list[str] | None
    ssl_credentials: Callable[[], Any] | None
    max_message_bytes: int
    drain_timeout_s: float
    protocol: str = "grpc"
    callable_methods: list[str] = field(default_factory=list)
    hints: dict[Any, dict[str, Any]] = field(default_factory=dict)

    def prepare(self, cls: type) -> None:
        if self.methods is not None:
            missing = [m for m in self.methods if not callable(getattr(cls, m, None))]
            if missing:
                raise TypeError(f"{cls.__name__} has no method(s) {missing} to expose over gRPC")
            names = list(self.methods)
        else:
            names = sorted(
                {
                    name
                    for klass in cls.__mro__
                    if klass is not object
                    for name, fn in vars(klass).items()
                    if not name.startswith("_") and inspect.isfunction(fn)
                }
            )
        for name in names:
            fn = inspect.unwrap(getattr(cls, name))
            collect_hints(fn, self.hints)  # resolved here: see convert.collect_hints
            try:
                Binder(fn)
            except TypeError:
                continue  # e.g. *args: not callable with JSON keyword arguments
            self.callable_methods.append(name)

    async def start(self, host: _host.Host) -> GrpcServer:
        remember(self.hints)
        server = GrpcServer(self, host)
        await server.start()
        return server


def expose(
    cls: type | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | tuple[int, int] | Iterable[int] = 0,
    auth: str | None = "auto",
    token: str | None = None,
    servicers: Iterable[Callable[[Any, Any], None]] = (),
    generic: bool = True,
    methods: Iterable[str] | None = None,
    ssl_credentials: Callable[[], Any] | None = None,
    max_message_bytes: int = 4 << 20,
    drain_timeout_s: float = 5.0,
) -> Any:
    """Class decorator: serve the actor over gRPC from inside each actor.

    Args:
        host, port, auth, token, drain_timeout_s: as for :func:`sideband.http.expose`; the
            token travels as ``authorization: Bearer <token>`` metadata.
        servicers: generated ``add_XServicer_to_server`` functions; the actor's methods of the
            same names implement the RPCs.
        generic: also serve ``sideband.v1.Actor/Call`` (JSON arguments) for :func:`call`.
        methods: the methods the generic service may call (default: every public method).
        ssl_credentials: zero-argument function returning ``grpc.ServerCredentials`` (TLS).
        max_message_bytes: largest request or reply message.
    """
    _grpc()
    _auth.check_mode(auth, token)
    if ssl_credentials is not None and not callable(ssl_credentials):
        raise TypeError(
            "ssl_credentials must be a zero-argument function returning grpc.ServerCredentials"
        )
    spec = GrpcSpec(
        host=host,
        ports=addresses.ports(port),
        auth=auth,
        token=token,
        servicers=list(servicers),
        generic=generic,
        methods=None if methods is None else list(methods),
        ssl_credentials=ssl_credentials,
        max_message_bytes=int(max_message_bytes),
        drain_timeout_s=float(drain_timeout_s),
    )

    def deco(c: Any) -> Any:
        return _host.install(c, spec)

    return deco if cls is None else deco(cls)


# --- the server --------------------------------------------------------------------------------


async def _abort(context: Any, exc: BaseException) -> None:
    import grpc

    await context.abort(grpc.StatusCode[grpc_code_name(exc)], f"{type(exc).__name__}: {exc}")


class _Recorder:
    """A stand-in for the server that notes which services a generated add_* function adds."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self.names: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        for h in handlers:
            name = getattr(h, "service_name", None)
            if callable(name) and name() not in self.names:
                self.names.append(name())
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service_name: str, handlers: Any) -> None:
        if service_name not in self.names:
            self.names.append(service_name)
        self._server.add_registered_method_handlers(service_name, handlers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class _Servicer:
    """What a generated add_* function sees: each RPC name maps to the actor method of that name."""

    def __init__(self, host: _host.Host) -> None:
        self._host = host

    def __getattr__(self, name: str) -> Any:
        import grpc

        host = self._host
        fn = host.method(name) if callable(getattr(host.instance, name, None)) else None
        if fn is None:

            async def unimplemented(request: Any, context: Any) -> Any:
                await context.abort(
                    grpc.StatusCode.UNIMPLEMENTED, f"{host.cls_name} has no method {name}"
                )

            return unimplemented
        raw = inspect.unwrap(getattr(type(host.instance), name))
        if inspect.isasyncgenfunction(raw):

            async def stream(request: Any, context: Any) -> Any:
                try:
                    async for item in fn(request, context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as e:
                    await _abort(context, e)

            return stream

        async def unary(request: Any, context: Any) -> Any:
            try:
                return await host.call(lambda: fn(request, context), {})
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                await _abort(context, e)

        return unary


def _interceptor(policy: _auth.AuthPolicy) -> Any:
    import grpc

    msg = "this endpoint requires 'authorization: Bearer <token>' metadata; get it with sideband.grpc.token(actor)"

    async def deny_unary(request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, msg)

    async def deny_stream(request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, msg)
        yield  # pragma: no cover - makes this an async generator

    class TokenInterceptor(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            handler = await continuation(details)
            if handler is None or details.method.startswith(_HEALTH_PREFIX):
                return handler
            header = next(
                (v for k, v in details.invocation_metadata or () if k == "authorization"), None
            )
            if policy.header_ok(header):
                return handler
            if handler.unary_unary:
                return grpc.unary_unary_rpc_method_handler(deny_unary)
            if handler.stream_unary:
                return grpc.stream_unary_rpc_method_handler(deny_unary)
            if handler.unary_stream:
                return grpc.unary_stream_rpc_method_handler(deny_stream)
            return grpc.stream_stream_rpc_method_handler(deny_stream)

    return TokenInterceptor()


class GrpcServer:
    """One running grpc.aio server of one actor."""

    protocol = "grpc"

    def __init__(self, spec: GrpcSpec, host: _host.Host) -> None:
        self.spec = spec
        self.host = host
        self.what = f"gRPC endpoint of {host.describe()}"
        self.policy = _auth.resolve(spec.auth, spec.token, spec.host, self.what)
        self.token = self.policy.token
        self.url = ""
        self.extra: dict[str, Any] = {}
        self.server: Any = None
        self.health: Any = None
        self.services: list[str] = []

    async def start(self) -> None:
        grpc = _grpc()
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        spec = self.spec
        n = spec.max_message_bytes
        self.server = server = grpc.aio.server(
            interceptors=[_interceptor(self.policy)] if self.policy.required else [],
            options=[
                # gRPC sets SO_REUSEPORT by default: a taken port would then "succeed".
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", n),
                ("grpc.max_send_message_length", n),
            ],
        )
        for add in spec.servicers:
            rec = _Recorder(server)
            add(_Servicer(self.host), rec)
            self.services += rec.names
        if spec.generic:
            server.add_generic_rpc_handlers((self._generic_handler(),))
            self.services.append(generic_proto.SERVICE)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [*self.services, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        creds = None
        if spec.ssl_credentials is not None:
            try:
                creds = spec.ssl_credentials()
            except Exception as e:
                raise EndpointStartError(
                    f"{self.what}: ssl_credentials factory failed: {e!r}"
                ) from e
        port, last = 0, None
        bind_host = f"[{spec.host}]" if ":" in spec.host else spec.host
        for p in spec.ports:
            try:
                addr = f"{bind_host}:{p}"
                port = (
                    server.add_secure_port(addr, creds) if creds else server.add_insecure_port(addr)
                )
            except RuntimeError as e:
                last = e
                port = 0
            if port:
                break
        if not port:
            ports = spec.ports[0] if len(spec.ports) == 1 else f"{spec.ports[0]}..{spec.ports[-1]}"
            raise EndpointStartError(
                f"{self.what} could not listen on {spec.host}:{ports} ({last or 'bind failed'}). "
                "The port may be taken (choose another, or port=0 for a free one) or the host "
                "may not be an address of this node."
            )
        await server.start()
        for name in ("", *self.services):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.url = addresses.url(
            "grpcs" if creds else "grpc", addresses.advertised_host(spec.host), port
        )
        self.extra = {
            "port": port,
            "bind_host": spec.host,
            "tls": creds is not None,
            "generic": spec.generic,
            "services": self.services,
        }

    async def stop(self) -> None:
        if self.server is None:
            return
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        await self.server.stop(self.spec.drain_timeout_s)
        self.server = None

    def _generic_handler(self) -> Any:
        import grpc

        request_cls, reply_cls = generic_proto.messages()
        host = self.host
        binders = {
            # Keyword arguments by name: FastAPI's lone-model-is-the-body rule is HTTP's only.
            name: Binder(inspect.unwrap(getattr(type(host.instance), name)), model_body=False)
            for name in self.spec.callable_methods
        }

        async def call(request: Any, context: Any) -> Any:
            binder = binders.get(request.method)
            if binder is None:
                await context.abort(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"{host.cls_name} exposes no method {request.method!r} over gRPC; "
                    f"exposed: {sorted(binders)}",
                )
            try:
                body = json.loads(request.kwargs_json) if request.kwargs_json else {}
                if not isinstance(body, dict):
                    raise FieldError("kwargs_json", "must be a JSON object of named arguments")
                kwargs = binder.bind(body=body)  # type: ignore[union-attr]
            except (FieldError, ValueError, RecursionError) as e:
                # RecursionError: JSON nested deeper than the parser can follow.
                msg = (
                    "kwargs_json is nested too deeply" if isinstance(e, RecursionError) else str(e)
                )
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, msg)
            try:
                result = await host.call(host.method(request.method), kwargs)
                return reply_cls(result_json=dumps(result).decode())
            except grpc.aio.AbortError:
                raise
            except Exception as e:
                await _abort(context, e)

        return grpc.method_handlers_generic_handler(
            generic_proto.SERVICE,
            {
                "Call": grpc.unary_unary_rpc_method_handler(
                    call,
                    request_deserializer=request_cls.FromString,
                    response_serializer=reply_cls.SerializeToString,
                )
            },
        )
