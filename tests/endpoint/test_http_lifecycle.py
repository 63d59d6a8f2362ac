"""HTTP endpoints: ports, readiness failures, discovery, kill, restart and graceful drain."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import ray
from endpoint_helpers import free_port, port_is_free, request

import sideband
from sideband import _kv
from sideband.endpoint import registry
from sideband.errors import EndpointNotFoundError


@ray.remote(num_cpus=0)
@sideband.http.expose()
class Cell:
    def __init__(self, value: int = 0) -> None:
        self.value = value

    @sideband.http.get("/")
    def get(self) -> int:
        return self.value

    def pid(self) -> int:
        import os

        return os.getpid()


@ray.remote(num_cpus=0)
@sideband.http.expose(drain_timeout_s=5)
class Slow:
    def __init__(self) -> None:
        self.in_flight = 0

    async def active(self) -> int:
        return self.in_flight

    @sideband.http.get("/slow")
    async def slow(self, seconds: float) -> str:
        self.in_flight += 1
        await asyncio.sleep(seconds)
        return "finished"

    def leave(self) -> None:
        ray.actor.exit_actor()


@ray.remote(num_cpus=0)
@sideband.http.expose(drain_timeout_s=5)
class SlowSync:
    """A sync actor: its handler runs on the endpoint's worker thread, holding the actor lock."""

    @sideband.http.get("/slow")
    def slow(self, seconds: float, flag: str) -> str:
        open(flag, "w").close()  # tells the test the request is in the handler
        time.sleep(seconds)
        return "finished"

    def leave(self) -> None:
        ray.actor.exit_actor()


def _wait_dead(actor) -> None:
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.get.remote(), timeout=30)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _wait_port_free(port: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if port_is_free(port):
            return True
        time.sleep(0.05)
    return False


def test_ten_actors_on_one_node(ray_session: None) -> None:
    actors = [Cell.remote(i) for i in range(10)]
    try:
        # Generous: ten worker processes start at once on a 2-core machine.
        urls = [sideband.http.url(a, timeout_s=120) for a in actors]
        assert len(set(urls)) == 10
        assert [request(u + "/")[1] for u in urls] == list(range(10))
        listed = {e["actor_id"]: e for e in sideband.endpoints()}
        for a, u in zip(actors, urls):
            e = listed[a._actor_id.hex()]
            assert e == {
                "actor_id": a._actor_id.hex(),
                "name": None,
                "class": "Cell",
                "protocol": "http",
                "url": u,
            }
    finally:
        for a in actors:
            ray.kill(a)


def test_taken_fixed_port_fails_construction(ray_session: None) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]

        @ray.remote(num_cpus=0)
        @sideband.http.expose(port=taken)
        class Fixed:
            def ping(self) -> str:
                return "pong"

        a = Fixed.remote()
        with pytest.raises(ray.exceptions.RayActorError) as info:
            ray.get(a.ping.remote(), timeout=60)
        text = str(info.value)
        assert "EndpointStartError" in text and f"127.0.0.1:{taken}" in text and "port=0" in text
        with pytest.raises(EndpointNotFoundError, match="dead"):
            sideband.http.url(a, timeout_s=5)


def test_bad_host_fails_construction(ray_session: None) -> None:
    @ray.remote(num_cpus=0)
    @sideband.http.expose(host="203.0.113.7")  # TEST-NET-3: never an address of this node
    class Elsewhere:
        def ping(self) -> str:
            return "pong"

    a = Elsewhere.remote()
    with pytest.raises(ray.exceptions.RayActorError, match="Check the host"):
        ray.get(a.ping.remote(), timeout=60)


def test_fixed_port_and_port_range(ray_session: None) -> None:
    fixed = free_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        low = blocker.getsockname()[1]

        @ray.remote(num_cpus=0)
        @sideband.http.expose(port=(low, low + 20))
        class Ranged:
            @sideband.http.get("/")
            def hi(self) -> str:
                return "hi"

        @ray.remote(num_cpus=0)
        @sideband.http.expose(port=fixed)
        class Fixed:
            @sideband.http.get("/")
            def hi(self) -> str:
                return "hi"

        a, b = Ranged.remote(), Fixed.remote()
        try:
            port = _port(sideband.http.url(a))
            assert low < port <= low + 20
            assert sideband.http.url(b) == f"http://127.0.0.1:{fixed}"
            assert request(sideband.http.url(b) + "/") == (200, "hi")
        finally:
            ray.kill(a)
            ray.kill(b)


def test_kill_removes_endpoint_and_frees_port(ray_session: None) -> None:
    a = Cell.remote(1)
    url = sideband.http.url(a)
    aid = a._actor_id.hex()
    ray.kill(a)
    _wait_dead(a)
    with pytest.raises(EndpointNotFoundError, match="dead"):
        sideband.http.url(a)
    assert aid not in {e["actor_id"] for e in sideband.endpoints()}
    assert _kv.get(registry.key(aid, "http")) is None  # pruned, not only hidden
    assert _wait_port_free(_port(url))


def test_restart_re_registers(ray_session: None) -> None:
    a = Cell.options(max_restarts=1).remote(5)
    try:
        url = sideband.http.url(a)
        first_pid = ray.get(a.pid.remote())
        ray.kill(a, no_restart=False)
        deadline = time.monotonic() + 60
        while True:
            try:
                if ray.get(a.pid.remote(), timeout=30) != first_pid:
                    break
            except ray.exceptions.RayActorError:
                pass
            assert time.monotonic() < deadline, "actor did not restart"
            time.sleep(0.1)
        new_url = sideband.http.url(a)
        assert request(new_url + "/") == (200, 5)
        listed = [e for e in sideband.endpoints() if e["actor_id"] == a._actor_id.hex()]
        assert [e["url"] for e in listed] == [new_url]
        if new_url != url:
            assert _wait_port_free(_port(url))
    finally:
        ray.kill(a)


def test_named_actor_discovery(ray_session: None) -> None:
    a = Cell.options(name="sideband-test-cell", namespace="sb-endpoints").remote(9)
    try:
        url = sideband.http.url("sideband-test-cell", namespace="sb-endpoints")
        assert url == sideband.http.url(a)
        assert request(url + "/") == (200, 9)
        e = next(e for e in sideband.endpoints() if e["url"] == url)
        assert e["name"] == "sideband-test-cell"
    finally:
        ray.kill(a)
    with pytest.raises(EndpointNotFoundError, match="no actor named"):
        sideband.http.url("sideband-no-such-actor")


def test_actor_without_endpoint(ray_session: None) -> None:
    @ray.remote(num_cpus=0)
    class Plain:
        def ping(self) -> str:
            return "pong"

    a = Plain.remote()
    try:
        ray.get(a.ping.remote())
        with pytest.raises(EndpointNotFoundError, match="expose"):
            sideband.http.url(a, timeout_s=0.2)
    finally:
        ray.kill(a)


@pytest.mark.parametrize("how", ["exit_actor", "terminate"])
def test_graceful_exit_drains_and_unregisters(ray_session: None, how: str) -> None:
    a = Slow.remote()
    url = sideband.http.url(a)
    aid = a._actor_id.hex()
    got: dict[str, object] = {}
    client = threading.Thread(target=lambda: got.update(r=request(url + "/slow?seconds=1")))
    client.start()
    deadline = time.monotonic() + 10
    while ray.get(a.active.remote()) == 0:  # wait until the request is in the handler
        assert time.monotonic() < deadline
        time.sleep(0.02)
    if how == "exit_actor":
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(a.leave.remote())
    else:
        a.__ray_terminate__.remote()
    client.join(timeout=30)
    assert got["r"] == (200, "finished")
    assert _kv.get(registry.key(aid, "http")) is None  # the actor removed its own entry
    with pytest.raises(EndpointNotFoundError):
        sideband.http.url(a, timeout_s=5)
    assert _wait_port_free(_port(url))


def test_graceful_exit_drains_sync_actor(ray_session: None, tmp_path) -> None:  # noqa: ANN001
    a = SlowSync.remote()
    url = sideband.http.url(a)
    aid = a._actor_id.hex()
    flag = tmp_path / "entered"
    got: dict[str, object] = {}
    client = threading.Thread(
        target=lambda: got.update(r=request(f"{url}/slow?seconds=1&flag={flag}"))
    )
    client.start()
    deadline = time.monotonic() + 10
    while not flag.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    a.__ray_terminate__.remote()
    client.join(timeout=30)
    assert got["r"] == (200, "finished")
    with pytest.raises(EndpointNotFoundError):
        sideband.http.url(a, timeout_s=5)
    assert _kv.get(registry.key(aid, "http")) is None
    assert _wait_port_free(_port(url))
