"""A typed HTTP endpoint in a Ray actor: dataclasses, enums, UUIDs, datetimes, constraints,
an OpenAPI 3.1 document, server-sent events and a WebSocket, all on one stateful actor.

FastAPI users will recognise the shapes: a lone dataclass parameter is the JSON body, bad fields
answer 422 ``{"detail": [...]}``, ``HTTPError(404, ...)`` picks a status, and
``/-/openapi.json`` describes every route (load it into Swagger UI or generate a client).

Run: python examples/http_typed.py
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import ray

import sideband
from sideband.http import HTTPError, Param, ServerSentEvent


class Kind(enum.Enum):
    TOOL = "tool"
    PART = "part"


@dataclasses.dataclass
class Item:
    """What a client sends to create an item."""

    name: Annotated[str, Param(min_length=1, max_length=40)]
    price: Annotated[float, Param(ge=0)]
    kind: Kind = Kind.PART
    tags: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Stored:
    """An item as stored: with its id and creation time."""

    id: uuid.UUID
    created: dt.datetime
    item: Item


@ray.remote(num_cpus=0)
@sideband.http.expose()
class Inventory:
    def __init__(self) -> None:
        self.items: dict[uuid.UUID, Stored] = {}

    @sideband.http.post("/items", status_code=201)
    async def create(self, item: Item) -> Stored:
        """Store an item."""
        stored = Stored(uuid.uuid4(), dt.datetime.now(dt.timezone.utc), item)
        self.items[stored.id] = stored
        return stored

    @sideband.http.get("/items/{item_id}")
    async def read(self, item_id: uuid.UUID) -> Stored:
        """One item by id."""
        if item_id not in self.items:
            raise HTTPError(404, f"no item {item_id}")
        return self.items[item_id]

    @sideband.http.get("/items")
    async def search(
        self,
        kind: Kind | None = None,
        limit: Annotated[int, Param(ge=1, le=100)] = 10,
        since: dt.datetime | None = None,
    ) -> list[Stored]:
        """Items of one kind, newest first."""
        found = [s for s in self.items.values() if kind is None or s.item.kind == kind]
        if since is not None:
            if since.tzinfo is None:
                since = since.replace(tzinfo=dt.timezone.utc)
            found = [s for s in found if s.created >= since]
        return sorted(found, key=lambda s: s.created, reverse=True)[:limit]

    @sideband.http.delete("/items/{item_id}")
    async def remove(self, item_id: uuid.UUID) -> None:
        """Delete an item (deleting a missing one is not an error)."""
        self.items.pop(item_id, None)

    @sideband.http.get("/events", media_type="text/event-stream")
    async def events(
        self, n: Annotated[int, Param(ge=0, le=50)] = 3
    ) -> AsyncIterator[ServerSentEvent]:
        """Server-sent events: the item count, n times."""
        for i in range(n):
            yield ServerSentEvent({"count": len(self.items)}, event="count", id=str(i))
            await asyncio.sleep(0)

    @sideband.http.websocket("/ws")
    async def echo(self, ws, prefix: str = "") -> None:  # noqa: ANN001 - aiohttp's WebSocket
        """Echo every text message back, with a prefix."""
        async for msg in ws:
            await ws.send_str(prefix + msg.data)

    async def count(self) -> int:
        return len(self.items)


def _call(url: str, body: dict | None = None, method: str | None = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def _websocket(url: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url + "/ws?prefix=echo:%20") as ws:
            await ws.send_str("hello")
            return (await ws.receive()).data


def main() -> dict[str, object]:
    if not ray.is_initialized():
        ray.init()
    inv = Inventory.remote()
    try:
        url = sideband.http.url(inv)
        created, stored = _call(url + "/items", {"name": "hammer", "price": 9.5, "kind": "tool"})
        print("POST /items ->", created, stored)
        status, bad = _call(url + "/items", {"name": "", "price": -1, "kind": "nail"})
        print("POST /items (bad) ->", status, [d["loc"] for d in bad["detail"]])  # type: ignore[index]
        missing = _call(url + f"/items/{uuid.uuid4()}")
        found = _call(url + "/items?kind=tool&limit=5")[1]
        with urllib.request.urlopen(url + "/events?n=2", timeout=10) as resp:
            events = resp.read().decode()
        doc = json.loads(urllib.request.urlopen(url + "/-/openapi.json", timeout=10).read())
        print("OpenAPI", doc["openapi"], "paths:", sorted(doc["paths"]))
        echoed = asyncio.run(_websocket(url))
        print("WebSocket ->", echoed)
        return {
            "created": created,
            "stored": stored,
            "bad": bad,
            "missing": missing,
            "found": found,
            "events": events,
            "openapi": doc,
            "echo": echoed,
            "count": ray.get(inv.count.remote()),
        }
    finally:
        ray.kill(inv)


if __name__ == "__main__":
    main()
