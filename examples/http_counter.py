"""Ray's out-of-band HTTP counter example, written with sideband.

Ray's docs start an aiohttp server inside ``__init__`` on a hard-coded ``127.0.0.1:25001``:
a second counter cannot bind, a request sent right away races the server's start, and nothing
tells a client where the server is. Here each counter gets a free port, is serving once it is
constructed, and is found with ``sideband.http.url``: run as many as you like.

Run: python examples/http_counter.py
"""

from __future__ import annotations

import json
import urllib.request

import ray

import sideband


@ray.remote(num_cpus=0)
@sideband.http.expose()  # loopback, a free port, ready when the actor is constructed
class Counter:
    def __init__(self) -> None:
        self.counter = 0

    @sideband.http.get("/")
    async def get(self) -> str:
        return str(self.counter)

    @sideband.http.post("/increment")
    async def add(self, by: int = 1) -> int:
        self.counter += by
        return self.counter

    async def increment(self) -> None:
        self.counter = self.counter + 1


def _http(url: str, body: dict | None = None) -> str:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode()


def main(n: int = 3) -> list[str]:
    """Start ``n`` counters, bump counter i by i+5 (Ray and HTTP), read each over HTTP."""
    if not ray.is_initialized():
        ray.init()
    counters = [Counter.remote() for _ in range(n)]
    try:
        for i, c in enumerate(counters):
            ray.get([c.increment.remote() for _ in range(5)])  # through Ray
            if i:
                _http(sideband.http.url(c) + "/increment", {"by": i})  # over HTTP
        values = [_http(sideband.http.url(c) + "/") for c in counters]
        for c, v in zip(counters, values):
            print(f"{sideband.http.url(c)} -> {v}")
        for e in sideband.endpoints():
            print(f"  {e['class']:<10} {e['actor_id']}  {e['url']}")
        assert values == [str(5 + i) for i in range(n)], values
        return values
    finally:
        for c in counters:
            ray.kill(c)


if __name__ == "__main__":
    main()
