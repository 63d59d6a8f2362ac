"""Raw TCP endpoints for Ray actors: ``@sideband.tcp.expose()``, ``@sideband.tcp.handler``,
discovery and clients that send the token for you.

See :mod:`sideband.endpoint.tcp` and docs/endpoints.md.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

from sideband.endpoint import registry
from sideband.endpoint.tcp import HELLO, expose, handler

__all__ = ["address", "connect", "expose", "handler", "open_connection", "token", "url"]


def url(actor: Any, timeout_s: float = 30.0, namespace: str | None = None) -> str:
    """``tcp://host:port`` (``tls://`` with TLS) of ``actor``'s TCP endpoint, from any process."""
    return registry.lookup(actor, "tcp", timeout_s, namespace)["url"]


def token(actor: Any, timeout_s: float = 30.0, namespace: str | None = None) -> str | None:
    """The token ``actor``'s TCP endpoint requires, or None if it requires none."""
    return registry.lookup(actor, "tcp", timeout_s, namespace).get("token")


def address(actor: Any, timeout_s: float = 30.0, namespace: str | None = None) -> tuple[str, int]:
    """``(host, port)`` of ``actor``'s TCP endpoint."""
    host, port = url(actor, timeout_s, namespace).split("://", 1)[1].rsplit(":", 1)
    return host.strip("[]"), int(port)


def _hello(entry: dict[str, Any]) -> bytes:
    tok = entry.get("token")
    return HELLO + tok.encode() + b"\n" if tok else b""


def connect(
    actor: Any,
    timeout_s: float = 30.0,
    namespace: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> socket.socket:
    """A connected blocking socket to ``actor``'s TCP endpoint, token already sent."""
    entry = registry.lookup(actor, "tcp", timeout_s, namespace)
    host, port = entry["url"].split("://", 1)[1].rsplit(":", 1)
    host = host.strip("[]")
    sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    if ssl_context is not None:
        sock = ssl_context.wrap_socket(sock, server_hostname=host)
    hello = _hello(entry)
    if hello:
        sock.sendall(hello)
    return sock


async def open_connection(
    actor: Any,
    timeout_s: float = 30.0,
    namespace: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    **kwargs: Any,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` to ``actor``'s TCP endpoint, token already sent."""
    entry = await asyncio.to_thread(registry.lookup, actor, "tcp", timeout_s, namespace)
    host, port = entry["url"].split("://", 1)[1].rsplit(":", 1)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host.strip("[]"), int(port), ssl=ssl_context, **kwargs), timeout_s
    )
    hello = _hello(entry)
    if hello:
        writer.write(hello)
        await writer.drain()
    return reader, writer
