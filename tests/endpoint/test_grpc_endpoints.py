"""gRPC endpoints: a real generated servicer, the generic call, health, reflection, auth, lifecycle."""

from __future__ import annotations

import asyncio
import functools
import socket
import sys

import grpc
import pytest
import ray
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from sb_greeter import add_greeter, generate, load

import sideband
from sideband.errors import EndpointNotFoundError, MissingExtraError


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return generate(str(tmp_path_factory.mktemp("sb_greeter")))


def _make_classes(gen_dir: str) -> dict[str, type]:
    add = functools.partial(add_greeter, gen_dir)

    @ray.remote(num_cpus=0)
    @sideband.grpc.expose(servicers=[add])
    class AsyncGreeter:
        def __init__(self) -> None:
            self.calls = 0
            self.pb2 = load(gen_dir)[0]

        async def SayHello(self, request, context):  # noqa: N802, ANN001, ANN201 - the RPC's name
            if not request.name:
                raise ValueError("name is empty")
            self.calls += 1
            return self.pb2.HelloReply(message=f"hello {request.name} #{self.calls}")

        async def Countdown(self, request, context):  # noqa: N802, ANN001, ANN201
            for i in range(request.times, 0, -1):
                await asyncio.sleep(0)
                yield self.pb2.HelloReply(message=f"{request.name} {i}")

        async def add(self, k: int, times: int = 1) -> int:
            self.calls += k * times
            return self.calls

        def fail(self) -> None:
            raise KeyError("nothing here")

        def count(self) -> int:
            return self.calls

    @ray.remote(num_cpus=0)
    @sideband.grpc.expose(servicers=[add], methods=["add", "count"])
    @sideband.http.expose()
    class SyncGreeter:
        def __init__(self) -> None:
            self.calls = 0
            self.pb2 = load(gen_dir)[0]

        def SayHello(self, request, context):  # noqa: N802, ANN001, ANN201
            self.calls += 1
            return self.pb2.HelloReply(message=f"hi {request.name}")

        @sideband.http.post("/add")
        def add(self, k: int) -> int:
            self.calls += k
            return self.calls

        def count(self) -> int:
            return self.calls

        def secret(self) -> str:
            return "not exposed over gRPC"

    return {"AsyncGreeter": AsyncGreeter, "SyncGreeter": SyncGreeter}


@pytest.fixture(scope="module")
def classes(gen_dir: str, ray_session: None) -> dict[str, type]:
    return _make_classes(gen_dir)


@pytest.fixture(scope="module")
def agreeter(classes):
    a = classes["AsyncGreeter"].remote()
    yield a
    ray.kill(a)


def _stub(gen_dir: str, target: str):  # noqa: ANN202
    channel = grpc.insecure_channel(target)
    return channel, load(gen_dir)[1].GreeterStub(channel)


def test_generated_servicer_async_actor(agreeter, gen_dir: str) -> None:
    pb2 = load(gen_dir)[0]
    channel, stub = _stub(gen_dir, sideband.grpc.target(agreeter))
    with channel:
        first = stub.SayHello(pb2.HelloRequest(name="ray"), timeout=10).message
        assert first.startswith("hello ray #")
        assert ray.get(agreeter.count.remote()) >= 1  # one actor state for gRPC and Ray
        replies = [
            r.message for r in stub.Countdown(pb2.HelloRequest(name="t", times=3), timeout=10)
        ]
        assert replies == ["t 3", "t 2", "t 1"]
        with pytest.raises(grpc.RpcError) as info:
            stub.SayHello(pb2.HelloRequest(name=""), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "name is empty" in info.value.details()
        assert stub.SayHello(pb2.HelloRequest(name="again"), timeout=10).message.startswith(
            "hello again"
        )


def test_generic_call(agreeter) -> None:
    before = sideband.grpc.call(agreeter, "count")
    assert sideband.grpc.call(agreeter, "add", k=2, times=3) == before + 6
    assert sideband.grpc.client(agreeter, timeout_s=5).call("count") == before + 6
    with pytest.raises(sideband.grpc.EndpointCallError) as info:
        sideband.grpc.call(agreeter, "add", k="two")
    assert info.value.code == "INVALID_ARGUMENT" and "k" in info.value.details
    with pytest.raises(sideband.grpc.EndpointCallError) as info:
        sideband.grpc.call(agreeter, "add")
    assert info.value.code == "INVALID_ARGUMENT" and "field required" in info.value.details
    with pytest.raises(sideband.grpc.EndpointCallError) as info:
        sideband.grpc.call(agreeter, "nope")
    assert info.value.code == "UNIMPLEMENTED"
    with pytest.raises(sideband.grpc.EndpointCallError) as info:
        sideband.grpc.call(agreeter, "fail")
    assert info.value.code == "NOT_FOUND" and "KeyError" in info.value.details
    assert sideband.grpc.call(agreeter, "count") == before + 6


def test_sync_actor_with_grpc_and_http(classes, gen_dir: str) -> None:
    from endpoint_helpers import request

    a = classes["SyncGreeter"].remote()
    try:
        pb2 = load(gen_dir)[0]
        channel, stub = _stub(gen_dir, sideband.grpc.target(a))
        with channel:
            assert stub.SayHello(pb2.HelloRequest(name="x"), timeout=10).message == "hi x"
        assert request(sideband.http.url(a) + "/add", {"k": 5}) == (200, 6)
        assert sideband.grpc.call(a, "add", k=1) == 7
        with pytest.raises(sideband.grpc.EndpointCallError) as info:
            sideband.grpc.call(a, "secret")
        assert info.value.code == "UNIMPLEMENTED"
        protocols = {
            e["protocol"] for e in sideband.endpoints() if e["actor_id"] == a._actor_id.hex()
        }
        assert protocols == {"http", "grpc"}
    finally:
        ray.kill(a)


def test_health_and_reflection_with_grpc_clients(agreeter) -> None:
    with grpc.insecure_channel(sideband.grpc.target(agreeter)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "sbtest.Greeter", "sideband.v1.Actor"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"sbtest.Greeter", "sideband.v1.Actor", "grpc.health.v1.Health"} <= services
        actor_file = db.FindFileContainingSymbol("sideband.v1.Actor")
        assert [s.name for s in actor_file.service] == ["Actor"]
        assert {m.name for m in actor_file.message_type} == {"CallRequest", "CallReply"}
        greeter_file = db.FindFileContainingSymbol("sbtest.Greeter")
        assert {m.name for m in greeter_file.service[0].method} == {"SayHello", "Countdown"}


def test_token_in_metadata(gen_dir: str, ray_session: None) -> None:
    @ray.remote(num_cpus=0)
    @sideband.grpc.expose(host="0.0.0.0")
    class Public:
        def ping(self) -> str:
            return "pong"

    @ray.remote(num_cpus=0)
    @sideband.grpc.expose(auth="token")
    class Guarded:
        def ping(self) -> str:
            return "pong"

    a, b = Public.remote(), Guarded.remote()
    try:
        assert sideband.grpc.url(a).startswith(f"grpc://{ray.util.get_node_ip_address()}:")
        # Tests use loopback only: same port on 127.0.0.1.
        local = "127.0.0.1:" + sideband.grpc.target(a).rsplit(":", 1)[1]
        from sideband.endpoint import generic_proto

        req_cls, rep_cls = generic_proto.messages()
        with grpc.insecure_channel(local) as channel:
            stub = channel.unary_unary(
                generic_proto.CALL,
                request_serializer=req_cls.SerializeToString,
                response_deserializer=rep_cls.FromString,
            )
            with pytest.raises(grpc.RpcError) as info:
                stub(req_cls(method="ping"), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as info:
                stub(
                    req_cls(method="ping"), timeout=10, metadata=[("authorization", "Bearer wrong")]
                )
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = stub(req_cls(method="ping"), timeout=10, metadata=sideband.grpc.metadata(a))
            assert reply.result_json == '"pong"'
            # Health checks need no token; reflection does.
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
            with pytest.raises(grpc.RpcError):
                ProtoReflectionDescriptorDatabase(channel).get_services()
        # The client reads the token from the registry.
        assert sideband.grpc.token(b) and sideband.grpc.call(b, "ping") == "pong"
    finally:
        ray.kill(a)
        ray.kill(b)


def test_lifecycle_taken_port_and_kill(ray_session: None) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]

        @ray.remote(num_cpus=0)
        @sideband.grpc.expose(port=taken)
        class Fixed:
            def ping(self) -> str:
                return "pong"

        a = Fixed.remote()
        with pytest.raises(ray.exceptions.RayActorError, match="could not listen"):
            ray.get(a.ping.remote(), timeout=60)

    @ray.remote(num_cpus=0)
    @sideband.grpc.expose()
    class Free:
        def ping(self) -> str:
            return "pong"

    b = Free.remote()
    assert sideband.grpc.call(b, "ping") == "pong"
    ray.kill(b)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(b.ping.remote(), timeout=30)
    with pytest.raises(EndpointNotFoundError, match="dead"):
        sideband.grpc.call(b, "ping")


def test_graceful_exit_drains_grpc(ray_session: None) -> None:
    import threading
    import time

    @ray.remote(num_cpus=0)
    @sideband.grpc.expose(drain_timeout_s=5)
    class SlowRpc:
        def __init__(self) -> None:
            self.in_flight = 0

        async def slow(self, seconds: float) -> str:
            self.in_flight += 1
            await asyncio.sleep(seconds)
            return "finished"

        async def active(self) -> int:
            return self.in_flight

    a = SlowRpc.remote()
    aid = a._actor_id.hex()
    sideband.grpc.target(a)
    got: dict[str, object] = {}
    client = threading.Thread(target=lambda: got.update(r=sideband.grpc.call(a, "slow", seconds=1)))
    client.start()
    deadline = time.monotonic() + 10
    while ray.get(a.active.remote()) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    a.__ray_terminate__.remote()
    client.join(timeout=30)
    assert got["r"] == "finished"
    from sideband import _kv
    from sideband.endpoint import registry

    assert _kv.get(registry.key(aid, "grpc")) is None
    with pytest.raises(EndpointNotFoundError):
        sideband.grpc.target(a, timeout_s=5)


def _grpc_creds(cert: str, key: str) -> grpc.ServerCredentials:
    with open(cert, "rb") as c, open(key, "rb") as k:
        return grpc.ssl_server_credentials([(k.read(), c.read())])


def test_tls(ray_session: None, tmp_path) -> None:  # noqa: ANN001
    from endpoint_helpers import self_signed_cert

    cert, key = self_signed_cert(str(tmp_path))

    @ray.remote(num_cpus=0)
    @sideband.grpc.expose(ssl_credentials=functools.partial(_grpc_creds, cert, key))
    class Secure:
        def ping(self) -> str:
            return "pong"

    a = Secure.remote()
    try:
        assert sideband.grpc.url(a).startswith("grpcs://127.0.0.1:")
        with open(cert, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        assert sideband.grpc.client(a, credentials=creds).call("ping") == "pong"
        with pytest.raises(sideband.grpc.EndpointCallError) as info:
            sideband.grpc.client(a, timeout_s=5).call("ping")  # plaintext against TLS
        assert info.value.code == "UNAVAILABLE"
    finally:
        ray.kill(a)


def test_import_does_not_load_grpcio() -> None:
    import subprocess

    code = "import sys, sideband, sideband.grpc; print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "grpc", None)
    with pytest.raises(MissingExtraError, match=r"sideband\[grpc\]"):
        sideband.grpc.expose()


def test_generic_call_deep_json_is_invalid_argument(agreeter) -> None:
    """Issue 13 point 6: the gRPC JSON path answers a 100 kB nested body INVALID_ARGUMENT."""
    from sideband.endpoint import generic_proto

    request_cls, reply_cls = generic_proto.messages()
    deep = "[" * 50_000 + "]" * 50_000
    with grpc.insecure_channel(sideband.grpc.target(agreeter)) as channel:
        stub = channel.unary_unary(
            generic_proto.CALL,
            request_serializer=request_cls.SerializeToString,
            response_deserializer=reply_cls.FromString,
        )
        for kwargs_json in ('{"k": ' + deep + "}", deep, "{not json", '"\\ud800'):
            with pytest.raises(grpc.RpcError) as info:
                stub(request_cls(method="add", kwargs_json=kwargs_json), timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, kwargs_json[:20]
        assert "nested too deeply" in _deep_details(stub, request_cls, deep)
    assert sideband.grpc.call(agreeter, "count") >= 0  # still serving


def _deep_details(stub, request_cls, deep: str) -> str:  # noqa: ANN001
    try:
        stub(request_cls(method="add", kwargs_json=deep), timeout=10)
    except grpc.RpcError as e:
        return e.details()
    return ""
