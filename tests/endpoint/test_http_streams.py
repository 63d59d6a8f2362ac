"""Streaming answers (async generators, server-sent events) and WebSockets (issue 17 item 4)."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import ray
from endpoint_helpers import request

import sideband
from sideband.http import HTTPError, ServerSentEvent


@ray.remote(num_cpus=0)
@sideband.http.expose()
class Feed:
    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.closed = 0
        self.runs = 0

    @sideband.http.get("/held")
    async def held(self) -> AsyncIterator[str]:
        self.runs += 1
        yield "first\n"
        await self.released.wait()  # set by a Ray call: the first chunk must be out already
        yield "second\n"

    @sideband.http.get("/rows")
    async def rows(self, n: int = 3) -> AsyncIterator[dict]:
        for i in range(n):
            yield {"i": i}

    @sideband.http.get("/sse", media_type="text/event-stream")
    async def sse(self) -> AsyncIterator[object]:
        yield "plain\ntwo lines"
        yield ServerSentEvent({"k": 1}, event="update", id="7", retry_ms=500)

    @sideband.http.get("/forever")
    async def forever(self) -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"x" * 1024
                await asyncio.sleep(0.001)
        finally:
            self.closed += 1

    @sideband.http.get("/refuse")
    async def refuse(self, why: str = "teapot") -> AsyncIterator[str]:
        if why == "teapot":
            raise HTTPError(418, "I'm a teapot")
        raise RuntimeError("bug before the first item")
        yield ""  # pragma: no cover

    @sideband.http.websocket("/ws/{room}")
    async def chat(self, ws, room: str, shout: bool = False) -> None:  # noqa: ANN001
        async for msg in ws:
            if msg.data == "boom":
                raise RuntimeError("handler bug")
            text = f"{room}: {msg.data}"
            await ws.send_str(text.upper() if shout else text)

    async def release(self) -> None:
        self.released.set()

    async def stats(self) -> dict:
        return {"closed": self.closed, "runs": self.runs}


@pytest.fixture(scope="module")
def feed(ray_session: None):
    a = Feed.remote()
    yield a
    ray.kill(a)


def _conn(url: str) -> http.client.HTTPConnection:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=20)


def test_async_generator_streams_chunks_as_yielded(feed) -> None:
    conn = _conn(sideband.http.url(feed))
    try:
        conn.request("GET", "/held")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
        assert resp.getheader("Content-Type").startswith("text/plain")
        assert resp.readline() == b"first\n"  # arrives while the generator is still waiting
        ray.get(feed.release.remote())
        assert resp.read() == b"second\n"
    finally:
        conn.close()


def test_ndjson_sse_and_errors_before_the_first_item(feed) -> None:
    url = sideband.http.url(feed)
    status, body = request(url + "/rows?n=3")
    assert status == 200
    assert [json.loads(line) for line in body.splitlines()] == [{"i": 0}, {"i": 1}, {"i": 2}]
    conn = _conn(url)
    try:
        conn.request("GET", "/sse")
        resp = conn.getresponse()
        assert resp.getheader("Content-Type") == "text/event-stream"
        assert resp.getheader("Cache-Control") == "no-cache"
        assert resp.read().decode() == (
            'data: plain\ndata: two lines\n\nevent: update\nid: 7\nretry: 500\ndata: {"k":1}\n\n'
        )
    finally:
        conn.close()
    assert request(url + "/refuse") == (418, {"detail": "I'm a teapot"})
    status, body = request(url + "/refuse?why=bug")
    assert status == 500 and "RuntimeError" in body["detail"]
    assert request(url + "/rows?n=x")[0] == 422
    runs = ray.get(feed.stats.remote())["runs"]
    conn = _conn(url)
    try:  # HEAD: the headers only, without running the generator
        conn.request("HEAD", "/held")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b""
    finally:
        conn.close()
    assert ray.get(feed.stats.remote())["runs"] == runs


def test_client_going_away_closes_the_generator(feed) -> None:
    before = ray.get(feed.stats.remote())["closed"]
    conn = _conn(sideband.http.url(feed))
    conn.request("GET", "/forever")
    resp = conn.getresponse()
    assert len(resp.read(10_000)) == 10_000
    conn.close()
    resp.close()
    deadline = time.monotonic() + 10  # the server notices at its next write
    while ray.get(feed.stats.remote())["closed"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ray.get(feed.stats.remote())["closed"] == before + 1


async def _ws(url: str, path: str, messages: list[str], **kwargs) -> list:  # noqa: ANN003
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url + path, **kwargs) as ws:
            out = []
            for m in messages:
                await ws.send_str(m)
                msg = await ws.receive(timeout=10)
                out.append(
                    msg.data if msg.type == aiohttp.WSMsgType.TEXT else ("close", ws.close_code)
                )
            return out


def test_websocket_echo_with_path_and_query(feed) -> None:
    url = sideband.http.url(feed)
    assert asyncio.run(_ws(url, "/ws/lobby", ["hi", "there"])) == ["lobby: hi", "lobby: there"]
    assert asyncio.run(_ws(url, "/ws/r2?shout=true", ["hey"])) == ["R2: HEY"]
    # A handler bug closes that socket with 1011; the endpoint keeps serving.
    assert asyncio.run(_ws(url, "/ws/x", ["boom"])) == [("close", 1011)]
    assert asyncio.run(_ws(url, "/ws/x", ["ok"])) == ["x: ok"]
    # Bad arguments are refused before the upgrade; a plain GET is told to upgrade.
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        asyncio.run(_ws(url, "/ws/x?shout=maybe", []))
    assert info.value.status == 422
    assert request(url + "/ws/x")[0] == 426


def test_websocket_cross_site_handshake_is_refused(feed) -> None:
    url = sideband.http.url(feed)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        asyncio.run(_ws(url, "/ws/x", [], origin="http://attacker.example"))
    assert info.value.status == 403
    port = url.rsplit(":", 1)[1]
    assert asyncio.run(_ws(url, "/ws/x", ["same"], origin=f"http://127.0.0.1:{port}")) == [
        "x: same"
    ]


def test_websocket_needs_the_token_off_loopback(ray_session: None) -> None:
    @ray.remote(num_cpus=0)
    @sideband.http.expose(auth="token")
    class Private:
        @sideband.http.websocket("/ws")
        async def echo(self, ws) -> None:  # noqa: ANN001
            async for msg in ws:
                await ws.send_str(msg.data)

    a = Private.remote()
    try:
        url = sideband.http.url(a)
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            asyncio.run(_ws(url, "/ws", []))
        assert info.value.status == 401
        assert asyncio.run(_ws(url, "/ws", ["ok"], headers=sideband.http.headers(a))) == ["ok"]
    finally:
        ray.kill(a)


def test_graceful_exit_closes_websockets_going_away(ray_session: None) -> None:
    @ray.remote(num_cpus=0)
    @sideband.http.expose(drain_timeout_s=5)
    class Room:
        @sideband.http.websocket("/ws")
        async def hold(self, ws) -> None:  # noqa: ANN001
            async for msg in ws:
                await ws.send_str(msg.data)

    a = Room.remote()
    url = sideband.http.url(a)

    async def run() -> int | None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url + "/ws") as ws:
                await ws.send_str("in")
                assert (await ws.receive(timeout=10)).data == "in"
                a.__ray_terminate__.remote()
                msg = await ws.receive(timeout=20)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                return ws.close_code

    assert asyncio.run(run()) == 1001
