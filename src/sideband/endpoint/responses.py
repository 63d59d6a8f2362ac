"""Responses: return values as HTTP answers, FastAPI-shaped errors, streams and server-sent events.

Errors are ``{"detail": ...}`` as in FastAPI: a list of ``{"type", "loc", "msg", "input"}``
items for bad fields (422) and bodies that cannot be parsed (400), a string otherwise.
"""

from __future__ import annotations

import collections.abc
import typing
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sideband.endpoint.status import dumps

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


def error(status: int, detail: Any, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON error answer: ``{"detail": detail}``."""
    return web.Response(
        status=status,
        body=dumps({"detail": detail}),
        content_type="application/json",
        headers=headers,
    )


def to_response(result: Any, status: int = 200, media_type: str | None = None) -> Any:
    """A handler's return value as a Response: str -> text, bytes -> octet-stream, else JSON."""
    if isinstance(result, web.StreamResponse):
        return result
    if status in (204, 304):
        return web.Response(status=status)  # no body allowed
    if isinstance(result, str):
        if media_type is None:
            return web.Response(text=result, status=status)
        return web.Response(
            body=result.encode(), status=status, headers={"Content-Type": media_type}
        )
    if isinstance(result, (bytes, bytearray, memoryview)):
        ctype = media_type or "application/octet-stream"
        return web.Response(body=bytes(result), status=status, headers={"Content-Type": ctype})
    if media_type is None:
        return web.Response(body=dumps(result), status=status, content_type="application/json")
    return web.Response(body=dumps(result), status=status, headers={"Content-Type": media_type})


@dataclass(frozen=True)
class ServerSentEvent:
    """One server-sent event, for generators of ``text/event-stream`` routes that need more
    than ``data`` (plain items are sent as ``data:`` lines; non-strings as JSON)."""

    data: Any = ""
    event: str | None = None
    id: str | None = None
    retry_ms: int | None = None


def _lines(field: str, text: str) -> str:
    return "".join(f"{field}: {line}\n" for line in text.replace("\r\n", "\n").split("\n"))


def sse_bytes(item: Any) -> bytes:
    """One item of an event stream, framed (``data: ...`` lines and a blank line)."""
    if isinstance(item, ServerSentEvent):
        out = ""
        if item.event is not None:
            out += _lines("event", item.event)
        if item.id is not None:
            out += _lines("id", item.id)
        if item.retry_ms is not None:
            out += f"retry: {int(item.retry_ms)}\n"
        data = item.data
    else:
        out, data = "", item
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    text = data if isinstance(data, str) else dumps(data).decode()
    return (out + _lines("data", text) + "\n").encode()


def chunk_bytes(item: Any) -> bytes:
    """One item of a plain stream: bytes as they are, text as UTF-8, else a JSON line."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode()
    return dumps(item) + b"\n"


def stream_media_type(returns: Any) -> str:
    """The content type of a stream from its return annotation (``AsyncIterator[str]``...)."""
    origin = typing.get_origin(returns)
    args = typing.get_args(returns)
    if origin in (collections.abc.AsyncIterator, collections.abc.AsyncGenerator) and args:
        if args[0] is str:
            return "text/plain; charset=utf-8"
        if args[0] is bytes:
            return "application/octet-stream"
        return NDJSON
    return "application/octet-stream"
