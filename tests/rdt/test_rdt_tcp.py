"""The TCP pull (consumers on other hosts), on loopback: values, authentication, failures."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
import ray
from rdt_helpers import Consumer, Producer

from sideband.errors import CollectiveError, CollectiveTimeoutError, PeerLostError
from sideband.rdt import exports, fetch, remote

pytestmark = pytest.mark.timeout(180)

MIB = 1 << 20


@pytest.fixture(scope="module")
def tcp_pair(ray_session: None) -> Iterator[tuple]:
    a, b = Producer.remote(), Consumer.remote()
    ray.get([a.configure.remote(serve=True), b.configure.remote(same_host=False, timeout_s=10)])
    yield a, b
    for x in (a, b):
        ray.kill(x)


def test_pull_over_tcp(tcp_pair: tuple) -> None:
    a, b = tcp_pair
    for n in (4, 1 << 16, 4 * MIB):
        assert ray.get(b.total.remote(a.full.remote(n, 2.0))) == 2.0 * n
    got = ray.get(b.describe.remote(a.make.remote("mixed")))
    assert got["e"] == ("tensor", (5, 4), "torch.float32", 190.0)
    # The consumer mapped nothing of the producer's: the bytes came over the socket.
    assert ray.get(b.stats.remote())["peer_mappings"] == 0


def test_producer_killed_before_a_tcp_fetch(tcp_pair: tuple) -> None:
    _, b = tcp_pair
    a = Producer.remote()
    ray.get(a.configure.remote(serve=True))
    ref = a.full.remote(4 * MIB)
    ray.wait([ref], fetch_local=False)
    ray.kill(a)
    time.sleep(1)
    t0 = time.monotonic()
    with pytest.raises(ray.exceptions.RayTaskError, match="PeerLostError"):
        ray.get(b.total.remote(ref), timeout=30)
    assert time.monotonic() - t0 < 10


# --- the protocol, in this process ---------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[str, SimpleNamespace]]:
    """An object exported by this process and the metadata a remote consumer would get."""
    remote_settings = remote.SETTINGS.serve
    remote.SETTINGS.serve = True
    obj_id = f"test-{time.time_ns()}"
    arr = np.arange(2 * MIB, dtype=np.uint8)
    meta, ex = exports.export(obj_id, [arr])
    md = SimpleNamespace(
        who="test producer",
        tcp=remote.advertise(obj_id),
        offsets=ex.offsets,
        sizes=ex.sizes,
    )
    yield obj_id, md
    exports.release(obj_id)
    remote.SETTINGS.serve = remote_settings


def _parts(md: SimpleNamespace) -> list:
    return [(off, np.zeros(n, np.uint8)) for off, n in zip(md.offsets, md.sizes)]


def test_pull_checks_the_token(served: tuple) -> None:
    obj_id, md = served
    parts = _parts(md)
    remote.pull(obj_id, md, parts, lambda: None, 5.0)
    assert np.array_equal(parts[0][1], np.arange(2 * MIB, dtype=np.uint8))
    host, port, token = md.tcp
    md.tcp = (host, port, bytes(32))
    with pytest.raises(PeerLostError, match="connection closed"):
        remote.pull(obj_id, md, _parts(md), lambda: None, 5.0)


def test_freed_object_is_refused(served: tuple) -> None:
    obj_id, md = served
    exports.release(obj_id)
    with pytest.raises(PeerLostError, match="no longer holds"):
        remote.pull(obj_id, md, _parts(md), lambda: None, 5.0)


def _fake_server(behaviour: str) -> tuple[socket.socket, threading.Thread]:
    """A producer that answers the handshake, sends part of the bytes, then closes or stalls."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        conn.sendall(bytes(16))
        conn.recv(4096)
        conn.sendall(remote._REPLY.pack(0, 4 * MIB) + bytes(MIB))
        if behaviour == "stall":
            time.sleep(4)
        conn.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return srv, t


@pytest.mark.parametrize("behaviour", ["close", "stall"])
def test_producer_lost_mid_stream(behaviour: str) -> None:
    srv, t = _fake_server(behaviour)
    md = SimpleNamespace(who="fake producer", tcp=(*srv.getsockname(), bytes(32)))
    parts = [(0, np.zeros(4 * MIB, np.uint8))]
    t0 = time.monotonic()
    want = PeerLostError if behaviour == "close" else CollectiveTimeoutError
    try:
        with pytest.raises(want):
            remote.pull("x", md, parts, lambda: None, 2.0)
        assert time.monotonic() - t0 < 4
    finally:
        t.join()
        srv.close()


def test_abort_ends_a_fetch() -> None:
    srv, t = _fake_server("stall")
    md = SimpleNamespace(who="fake producer", tcp=(*srv.getsockname(), bytes(32)))
    obj_id = f"abort-{time.time_ns()}"
    check = fetch._checker(obj_id, md.who)
    threading.Timer(0.5, lambda: (fetch.abort(obj_id), remote.abort(obj_id))).start()
    try:
        with pytest.raises(CollectiveError, match="aborted"):
            remote.pull(obj_id, md, [(0, np.zeros(4 * MIB, np.uint8))], check, 30.0)
    finally:
        t.join()
        srv.close()
