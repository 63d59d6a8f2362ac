"""Raw TCP endpoints (issue 17 item 4): lifecycle, discovery and token rules of HTTP."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
import time
from pathlib import Path

import pytest
import ray
from endpoint_helpers import port_is_free

import sideband
from sideband import _kv
from sideband.endpoint import registry
from sideband.errors import EndpointNotFoundError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tcp_kv.py"


class _Echo:
    def __init__(self) -> None:
        self.connections = 0
        self.received = b""

    @sideband.tcp.handler
    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while data := await reader.read(65536):
            self.received += data
            writer.write(data)
            await writer.drain()

    async def stats(self) -> tuple[int, bytes]:
        return self.connections, self.received


@ray.remote(num_cpus=0)
@sideband.tcp.expose(host="0.0.0.0")
class Echo(_Echo):
    pass


@ray.remote(num_cpus=0)
@sideband.tcp.expose()
class LocalEcho(_Echo):
    pass


def _wait_port_free(port: int) -> bool:
    deadline = time.monotonic() + 10
    while not port_is_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _recv_all(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _closed_without_data(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_echo_discovery_and_token(ray_session: None) -> None:
    a = Echo.remote()
    try:
        url = sideband.tcp.url(a)
        assert url.startswith("tcp://")
        tok = sideband.tcp.token(a)
        assert tok and len(tok) >= 32
        listed = next(e for e in sideband.endpoints() if e["actor_id"] == a._actor_id.hex())
        assert listed["protocol"] == "tcp" and tok not in str(listed)
        host, port = sideband.tcp.address(a)
        with sideband.tcp.connect(a, timeout_s=10) as s:
            s.sendall(b"ping")
            assert _recv_all(s, 4) == b"ping"

        async def aio() -> bytes:
            reader, writer = await sideband.tcp.open_connection(a, timeout_s=10)
            writer.write(b"pong")
            await writer.drain()
            data = await reader.readexactly(4)
            writer.close()
            return data

        assert asyncio.run(aio()) == b"pong"
        # Without the token line, or with a wrong one: dropped before the handler runs.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"ping-without-token-" + b"x" * 40 + b"\n")
            assert _closed_without_data(s)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"sideband-token " + b"w" * len(tok) + b"\n")
            assert _closed_without_data(s)
        connections, received = ray.get(a.stats.remote())
        assert connections == 2 and received == b"pingpong"
    finally:
        ray.kill(a)


def test_http_sent_by_a_browser_never_reaches_the_handler(ray_session: None) -> None:
    a = LocalEcho.remote()
    try:
        assert sideband.tcp.token(a) is None  # loopback: no token, like HTTP
        host, port = sideband.tcp.address(a)
        # What a page's fetch("http://127.0.0.1:port/", {method: "POST", body}) sends.
        attack = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n\r\nSET x 1"
        for cut in (len(attack), 3):  # in one segment, and split inside the method
            with socket.create_connection((host, port), timeout=10) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(attack[:cut])
                if cut < len(attack):
                    time.sleep(0.05)  # let the first piece arrive alone
                    try:
                        s.sendall(attack[cut:])
                    except OSError:
                        pass
                assert _closed_without_data(s)
        with sideband.tcp.connect(a, timeout_s=10) as s:
            s.sendall(b"GETTING started")  # not a request line: a raw protocol's data
            assert _recv_all(s, 15) == b"GETTING started"
        assert ray.get(a.stats.remote())[1] == b"GETTING started"
    finally:
        ray.kill(a)


def test_fixed_port_taken_kill_and_graceful_exit(ray_session: None) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]

        @ray.remote(num_cpus=0)
        @sideband.tcp.expose(port=taken)
        class Fixed:
            @sideband.tcp.handler
            async def serve(self, reader, writer) -> None:  # noqa: ANN001
                writer.close()

            def ping(self) -> str:
                return "pong"

        f = Fixed.remote()
        with pytest.raises(ray.exceptions.RayActorError, match="EndpointStartError"):
            ray.get(f.ping.remote(), timeout=60)

    a = LocalEcho.remote()
    aid, port = a._actor_id.hex(), sideband.tcp.address(a)[1]
    ray.kill(a)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(a.stats.remote(), timeout=30)
    with pytest.raises(EndpointNotFoundError, match="dead"):
        sideband.tcp.url(a, timeout_s=5)
    assert _kv.get(registry.key(aid, "tcp")) is None  # pruned
    assert _wait_port_free(port)

    b = LocalEcho.remote()
    sock = sideband.tcp.connect(b, timeout_s=10)
    bid, bport = b._actor_id.hex(), sideband.tcp.address(b)[1]
    b.__ray_terminate__.remote()  # graceful: the open connection is closed after the drain
    assert _closed_without_data(sock)
    sock.close()
    with pytest.raises(EndpointNotFoundError):
        sideband.tcp.url(b, timeout_s=5)
    assert _kv.get(registry.key(bid, "tcp")) is None  # the actor removed its own entry
    assert _wait_port_free(bport)


def test_decoration_errors() -> None:
    with pytest.raises(TypeError, match="exactly one"):

        @sideband.tcp.expose()
        class NoHandler:
            pass

    with pytest.raises(TypeError, match="async def"):

        class Sync:
            @sideband.tcp.handler
            def serve(self, reader, writer) -> None:  # noqa: ANN001
                pass


def test_tcp_example(ray_session: None) -> None:
    from ray import cloudpickle

    spec = importlib.util.spec_from_file_location("example_tcp_kv", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)
    assert module.main() == {"replies": ["OK", "blue", "ERR unknown command"], "ray": "blue"}
