"""HTTP endpoints: routes, argument mapping, return types, errors and built-ins, sync and async."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import ray
from endpoint_helpers import request

import sideband


@ray.remote(num_cpus=0)
@sideband.http.expose()
class Store:
    """A sync actor with a route of every kind."""

    def __init__(self, start: int = 0) -> None:
        self.n = start
        self.items: dict[str, float] = {}

    @sideband.http.get("/")
    def value(self) -> int:
        return self.n

    @sideband.http.post("/add")
    def add(self, k: int = 1) -> int:
        self.n += k
        return self.n

    @sideband.http.put("/items/{key}")
    def put_item(self, key: str, value: float) -> dict:
        self.items[key] = value
        return {"key": key, "value": value}

    @sideband.http.get("/items/{key}")
    def get_item(self, key: str) -> float:
        if key not in self.items:
            raise sideband.http.HTTPError(404, f"no item {key!r}", {"X-Missing": key})
        return self.items[key]

    @sideband.http.get("/buggy/{key}")
    def buggy(self, key: str) -> float:
        return self.items[key]  # a KeyError here is a bug in the handler: 500

    @sideband.http.delete("/items/{key}")
    def del_item(self, key: str) -> None:
        del self.items[key]

    @sideband.http.get("/search")
    def search(self, tags: list[int], exact: bool = False, limit: int | None = None) -> dict:
        return {"tags": tags, "exact": exact, "limit": limit}

    @sideband.http.get("/text")
    def text(self) -> str:
        return "hello"

    @sideband.http.get("/bytes")
    def raw(self) -> bytes:
        return b"\x00\x01"

    @sideband.http.post("/fail")
    def fail(self, kind: str) -> None:
        raise {
            "value": ValueError("bad value"),
            "perm": sideband.http.HTTPError(403, {"why": "no"}),
            "boom": RuntimeError("boom"),
        }[kind]

    @sideband.http.get("/response")
    def response(self):  # noqa: ANN201 - returns an aiohttp Response
        from aiohttp import web

        return web.Response(status=201, text="made", headers={"X-Made": "yes"})

    def plain(self) -> int:
        """Not a route: only callable through Ray."""
        return self.n


@ray.remote(num_cpus=0)
@sideband.http.expose(max_body_bytes=1024)
class AsyncStore:
    """An async actor: handlers run on the actor's own event loop."""

    async def __init__(self) -> None:
        await asyncio.sleep(0)
        self.n = 0
        self.loop_thread = threading.current_thread().name

    @sideband.http.get("/")
    async def value(self) -> int:
        return self.n

    @sideband.http.post("/add")
    async def add(self, k: int = 1) -> int:
        self.n += k
        return self.n

    @sideband.http.post("/echo")
    async def echo(self, data: str) -> int:
        return len(data)

    @sideband.http.get("/thread")
    def thread(self) -> list:
        # A sync method of an async actor runs on the loop, as under Ray.
        return [threading.current_thread().name, self.loop_thread]


@ray.remote(num_cpus=0)
@sideband.http.expose(request_timeout_s=1.0)
class Sleepy:
    @sideband.http.get("/slow")
    async def slow(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"


@pytest.fixture(scope="module")
def store(ray_session: None):
    a = Store.remote(3)
    yield a
    ray.kill(a)


@pytest.fixture(scope="module")
def astore(ray_session: None):
    a = AsyncStore.remote()
    yield a
    ray.kill(a)


def test_request_right_after_construction_succeeds(ray_session: None) -> None:
    a = Store.remote(7)
    try:
        # No sleep, no ray.get first: url() waits for registration, which follows the bind.
        assert request(sideband.http.url(a) + "/") == (200, 7)
    finally:
        ray.kill(a)


def test_ready_once_any_method_returns(ray_session: None) -> None:
    a = AsyncStore.remote()
    try:
        ray.get(a.value.remote())
        entry = sideband.endpoints()
        url = next(e["url"] for e in entry if e["actor_id"] == a._actor_id.hex())
        assert request(url + "/")[0] == 200
    finally:
        ray.kill(a)


def test_routes_and_arguments(store) -> None:
    url = sideband.http.url(store)
    assert request(url + "/") == (200, 3)
    assert request(url + "/add", {"k": 4}) == (200, 7)
    assert request(url + "/add?k=2", method="POST") == (200, 9)
    assert request(url + "/add", method="POST") == (200, 10)
    assert request(url + "/items/a", {"value": "2.5"}, method="PUT") == (
        200,
        {"key": "a", "value": 2.5},
    )
    assert request(url + "/items/a") == (200, 2.5)
    assert request(url + "/items/a", method="DELETE") == (200, None)
    assert request(url + "/search?tags=1&tags=2&exact=true") == (
        200,
        {"tags": [1, 2], "exact": True, "limit": None},
    )
    assert request(url + "/search?tags=5&limit=3")[1]["limit"] == 3
    # Ray calls see the state HTTP changed: one actor, one state.
    assert ray.get(store.plain.remote()) == 10


def test_return_types(store) -> None:
    url = sideband.http.url(store)
    assert request(url + "/text") == (200, "hello")
    assert request(url + "/bytes") == (200, b"\x00\x01")
    status, body = request(url + "/response")
    assert (status, body) == (201, "made")


def test_bad_requests_get_4xx_and_actor_survives(store) -> None:
    url = sideband.http.url(store)
    status, body = request(url + "/add", {"k": "seven"})
    assert status == 422
    assert body["detail"] == [
        {
            "type": "int_parsing",
            "loc": ["body", "k"],
            "msg": "expected an integer, got 'seven'",
            "input": "seven",
        }
    ]
    status, body = request(url + "/add", raw=b'{"k": 1')
    assert status == 400 and body["detail"][0]["type"] == "json_invalid"
    status, body = request(url + "/add", {"nope": 1})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "nope"]
    assert body["detail"][0]["type"] == "extra_forbidden"
    status, body = request(url + "/add", raw=b"[1, 2]")
    assert status == 422 and body["detail"][0]["type"] == "dict_type"
    status, body = request(url + "/search")
    assert status == 422 and body["detail"][0]["loc"] == ["query", "tags"]
    assert body["detail"][0]["type"] == "missing"
    # Every bad field at once, as FastAPI reports them.
    status, body = request(url + "/search?tags=x&exact=maybe&limit=1.5")
    assert status == 422
    assert [d["loc"] for d in body["detail"]] == [
        ["query", "tags", 0],
        ["query", "exact"],
        ["query", "limit"],
    ]
    assert request(url + "/no/such/route") == (404, {"detail": "Not Found"})
    assert request(url + "/", method="DELETE") == (405, {"detail": "Method Not Allowed"})
    assert request(url + "/items/missing") == (404, {"detail": "no item 'missing'"})
    assert request(url + "/-/healthz")[0] == 200
    assert ray.get(store.plain.remote()) >= 3


def test_exceptions_become_json_errors(store) -> None:
    url = sideband.http.url(store)
    # An uncaught exception is a bug in the handler, whatever its type: 500, never 4xx.
    for kind in ("value", "boom"):
        status, body = request(url + "/fail", {"kind": kind})
        assert status == 500 and body["detail"].startswith("Internal Server Error: ")
        assert "Store.fail" in body["detail"]
        assert "bad value" not in body["detail"]  # the message stays in the actor's log
    assert request(url + "/fail", {"kind": "perm"}) == (403, {"detail": {"why": "no"}})
    status, body = request(url + "/buggy/nothing")
    assert status == 500 and "KeyError" in body["detail"]
    assert request(url + "/")[0] == 200


def test_async_actor_serves_on_its_loop(astore) -> None:
    url = sideband.http.url(astore)
    assert request(url + "/add", {"k": 2}) == (200, 2)
    assert ray.get(astore.value.remote()) == 2
    status, (handler_thread, init_thread) = request(url + "/thread")
    assert status == 200 and handler_thread == init_thread


def test_oversized_body(astore) -> None:
    url = sideband.http.url(astore)
    assert request(url + "/echo", {"data": "x" * 100}) == (200, 100)
    status, body = request(url + "/echo", {"data": "x" * 5000})
    assert status == 413 and "detail" in body
    assert request(url + "/echo", {"data": "y"}) == (200, 1)


def test_slow_handler_gets_504(ray_session: None) -> None:
    a = Sleepy.remote()
    try:
        url = sideband.http.url(a)
        status, body = request(url + "/slow?seconds=60", timeout=30)
        assert status == 504 and "took longer than 1 s" in body["detail"]
        assert request(url + "/-/healthz")[0] == 200  # still serving
        assert 'status="504"' in request(url + "/-/metrics")[1]
    finally:
        ray.kill(a)


def test_builtins(store) -> None:
    url = sideband.http.url(store)
    status, health = request(url + "/-/healthz")
    assert status == 200 and health["status"] == "ok" and health["class"] == "Store"
    status, routes = request(url + "/-/routes")
    assert status == 200
    by_path = {(r["method"], r["path"]): r for r in routes}
    assert ("PUT", "/items/{key}") in by_path
    params = {p["name"]: p for p in by_path[("PUT", "/items/{key}")]["params"]}
    assert params["key"]["in"] == "path" and params["value"]["type"] == "float"
    assert "plain" not in {r["handler"] for r in routes}
    request(url + "/")
    status, text = request(url + "/-/metrics")
    assert status == 200
    assert 'sideband_http_requests_total{actor_class="Store"' in text
    assert 'route="/",method="GET",status="200"}' in text
    assert "sideband_http_request_duration_seconds_bucket" in text


def test_sync_actor_http_and_ray_calls_do_not_interleave(ray_session: None) -> None:
    @ray.remote(num_cpus=0)
    @sideband.http.expose()
    class Guarded:
        def __init__(self) -> None:
            self.inside = 0
            self.overlaps = 0

        @sideband.http.post("/work")
        def work(self) -> int:
            return self._critical()

        def ray_work(self) -> int:
            return self._critical()

        def _critical(self) -> int:
            self.inside += 1
            if self.inside > 1:
                self.overlaps += 1
            time.sleep(0.002)
            self.inside -= 1
            return self.overlaps

    a = Guarded.remote()
    try:
        url = sideband.http.url(a)
        refs = [a.ray_work.remote() for _ in range(40)]
        threads = [
            threading.Thread(target=request, args=(url + "/work",), kwargs={"method": "POST"})
            for _ in range(40)
        ]
        for t in threads:
            t.start()
        ray.get(refs)
        for t in threads:
            t.join()
        assert request(url + "/work", method="POST") == (200, 0)
    finally:
        ray.kill(a)


def test_expose_above_ray_remote(ray_session: None) -> None:
    @sideband.http.expose()
    @ray.remote(num_cpus=0)
    class Outer:
        @sideband.http.get("/")
        def hi(self) -> str:
            return "hi"

    a = Outer.remote()
    try:
        assert request(sideband.http.url(a) + "/") == (200, "hi")
    finally:
        ray.kill(a)


def test_decoration_errors() -> None:
    with pytest.raises(ValueError, match="reserved"):
        sideband.http.get("/-/mine")
    with pytest.raises(TypeError, match="path parameter"):

        @sideband.http.expose()
        class Bad:
            @sideband.http.get("/x/{key}")
            def x(self) -> None: ...

    with pytest.raises(TypeError, match="SSLContext"):
        import ssl

        sideband.http.expose(ssl_context=ssl.create_default_context())
    with pytest.raises(ValueError, match="auth"):
        sideband.http.expose(auth="password")


def test_threaded_actor_handlers_run_concurrently_with_ray_calls(ray_session: None) -> None:
    @ray.remote(num_cpus=0, max_concurrency=4)
    @sideband.http.expose()
    class Threaded:
        def __init__(self) -> None:
            self.entered = threading.Event()
            self.released = threading.Event()

        @sideband.http.get("/wait")
        def wait(self) -> bool:
            self.entered.set()
            return self.released.wait(timeout=20)

        def is_waiting(self) -> bool:
            return self.entered.is_set()

        def release(self) -> None:
            self.released.set()

    a = Threaded.remote()
    try:
        url = sideband.http.url(a)
        got: dict[str, object] = {}
        client = threading.Thread(target=lambda: got.update(r=request(url + "/wait")))
        client.start()
        deadline = time.monotonic() + 10
        # Ray calls run while the HTTP handler blocks: no actor lock for threaded actors.
        while not ray.get(a.is_waiting.remote(), timeout=10):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        ray.get(a.release.remote(), timeout=10)
        client.join(timeout=30)
        assert got["r"] == (200, True)
    finally:
        ray.kill(a)
