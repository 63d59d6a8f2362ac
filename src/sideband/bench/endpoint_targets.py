"""The servers and load generators that ``sideband bench endpoints`` measures (see there).

Run as ``python -m sideband.bench.endpoint_targets plain-server`` (prints its port, serves until
killed) or ``... loadgen http|ws URL SECONDS CONNECTIONS`` (prints JSON: rps, p50, p99).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any


def plain_server() -> None:
    """A plain aiohttp process serving the same handler; prints its port, serves until killed."""
    from aiohttp import web

    state = {"n": 0}

    async def value(request: web.Request) -> web.Response:
        return web.Response(text=str(state["n"]))

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    async def run() -> None:
        app = web.Application()
        app.router.add_get("/", value)
        app.router.add_get("/ws", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        print(site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(run())


def counter_class(metrics: str | None = "ray") -> Any:
    import ray

    import sideband

    @ray.remote(num_cpus=0)
    @sideband.http.expose(metrics=metrics)
    class BenchCounter:
        def __init__(self) -> None:
            self.n = 0

        @sideband.http.get("/")
        async def value(self) -> str:
            return str(self.n)

        @sideband.http.websocket("/ws")
        async def echo(self, ws: Any) -> None:
            async for msg in ws:
                await ws.send_str(msg.data)

    return BenchCounter


def serve_app(max_ongoing: int) -> Any:
    from ray import serve

    # max_ongoing_requests at the load's concurrency: Serve's default (5) queues the rest in the
    # proxy and measures far worse; this is Serve at its best for this load.
    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=max_ongoing)
    class ServeCounter:
        def __init__(self) -> None:
            self.n = 0

        async def __call__(self, request: Any) -> str:
            return str(self.n)

    return ServeCounter.bind()  # type: ignore[attr-defined]  # a Serve deployment


def raw_ws_class() -> Any:
    """The control: aiohttp's own WebSocket echo in a Ray actor, without sideband."""
    import ray

    @ray.remote(num_cpus=0)
    class RawAiohttpActor:
        async def start(self) -> int:
            from aiohttp import web

            async def echo(request: web.Request) -> web.WebSocketResponse:
                ws = web.WebSocketResponse()
                await ws.prepare(request)
                async for msg in ws:
                    await ws.send_str(msg.data)
                return ws

            app = web.Application()
            app.router.add_get("/ws", echo)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    return RawAiohttpActor


def loadgen(kind: str, url: str, duration: float, connections: int) -> None:
    """Child process: ``connections`` clients for ``duration`` s; prints JSON.

    ``http``: keep-alive GETs; ``ws``: WebSockets, each echoing one 16-byte message at a time.
    """
    import aiohttp

    lat: list[float] = []

    async def http(session: aiohttp.ClientSession, stop: float) -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            async with session.get(url) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{url} answered {r.status}")
            lat.append(time.perf_counter() - t0)

    async def ws(session: aiohttp.ClientSession, stop: float) -> None:
        async with session.ws_connect(url) as sock:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                await sock.send_str("x" * 16)
                if (await sock.receive()).type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"{url} closed the WebSocket")
                lat.append(time.perf_counter() - t0)

    async def run() -> float:
        worker = http if kind == "http" else ws
        conn = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=conn) as session:
            t0 = time.perf_counter()
            await asyncio.gather(*(worker(session, t0 + duration) for _ in range(connections)))
            return time.perf_counter() - t0

    elapsed = asyncio.run(run())
    print(json.dumps({"rps": len(lat) / elapsed, **percentiles(lat)}))


def percentiles(lat: list[float]) -> dict[str, float]:
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return {"p50": q[49], "p99": q[98]}


if __name__ == "__main__":
    if sys.argv[1] == "plain-server":
        plain_server()
    else:
        loadgen(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
