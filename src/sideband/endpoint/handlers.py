"""The request handlers of HTTP routes: plain answers, streams and WebSockets.

Per request: token check, JSON body (415 unless the content type is JSON, 400 when it cannot be
parsed, depth included), binding (422 listing every bad field), the call under the actor's
concurrency model, the answer. An ``HTTPError`` keeps its status; any other exception is a bug
in the handler: 500, logged with its traceback. Deadlines come from the server's watchdog
(plain answers only: streams and WebSockets live as long as the client wants).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from sideband.endpoint import host as _host
from sideband.endpoint.params import Binder, FieldError
from sideband.endpoint.responses import (
    SSE,
    chunk_bytes,
    error,
    sse_bytes,
    stream_media_type,
    to_response,
)
from sideband.endpoint.routes import Route
from sideband.errors import HTTPError

# ``server`` below is the sideband.endpoint.http_server.HttpServer calling us (not imported:
# that module imports this one).
HttpServer = Any


class BadBody(Exception):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(str(detail))
        self.status, self.detail = status, detail


def _is_json(ctype: str) -> bool:
    return ctype == "application/json" or (
        ctype.startswith("application/") and ctype.endswith("+json")
    )


async def read_json(request: web.Request) -> Any:
    """The request's JSON body (None when empty), or :class:`BadBody` (400, 413, 415)."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise BadBody(413, e.text or "request body too large") from None
    if not raw:
        return None
    if not _is_json(request.content_type):
        # A browser sends text/plain or form bodies cross-site without asking (no preflight):
        # parsing them as JSON would let any web page call the actor.
        raise BadBody(415, f"Content-Type must be application/json, not {request.content_type!r}")
    return parse_json(raw)


def parse_json(raw: bytes | str) -> Any:
    """``json.loads`` whose every failure, nesting depth included, is :class:`BadBody` 400."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        msg = "JSON nested too deeply" if isinstance(e, RecursionError) else f"invalid JSON: {e}"
        raise BadBody(400, [{"type": "json_invalid", "loc": ["body"], "msg": msg}]) from None


def _internal(server: HttpServer, route: Route, e: BaseException) -> web.Response:
    _host.logger.error(
        "%s: %s %s failed",
        server.what,
        route.method,
        route.path,
        exc_info=(type(e), e, e.__traceback__),
    )
    return error(
        500,
        f"Internal Server Error: {type(e).__name__} in {server.host.cls_name}.{route.name} "
        f"(the traceback is in the log of {server.host.describe()})",
    )


def _http_error(e: HTTPError) -> web.Response:
    return error(e.status, e.detail, e.headers)


async def _arguments(
    request: web.Request, binder: Binder, wants_input: bool, ws: Any = None
) -> dict:
    if not (wants_input or request.query or request.body_exists):
        return {}
    body = None
    if request.body_exists and ws is None:
        if binder.request_param is not None and not _is_json(request.content_type):
            body = None  # the handler reads this body itself through ``request``
        else:
            body = await read_json(request)
    return binder.bind(request.match_info, request.query, body, request if ws is None else ws)


def make_handler(server: HttpServer, route: Route, fn: Callable[..., Any], binder: Binder) -> Any:
    """The aiohttp handler of one route."""
    raw = inspect.unwrap(getattr(type(server.host.instance), route.name))
    if inspect.isasyncgenfunction(raw):
        return _stream_handler(server, route, fn, binder)
    host, policy, observe = server.host, server.policy, server.metrics.observe
    timeout_s = server.spec.request_timeout_s
    what, path, method = server.what, route.path, route.method
    status_ok, media_type = route.status_code, route.media_type
    wants_input = not binder.needs_nothing
    watchdog = server.watchdog
    inflight = watchdog.inflight
    direct = host.direct(fn)
    current_task = asyncio.current_task
    refuse, cors = server.web.refuse, server.web.cors_enabled

    async def handler(request: web.Request) -> web.StreamResponse:
        bad = refuse(request)
        if bad is not None:
            return bad
        t0 = time.perf_counter()
        task = current_task()
        inflight[task] = t0  # type: ignore[index]
        try:
            if policy.required and not policy.header_ok(request.headers.get("Authorization")):
                resp = server.denied()
            else:
                kwargs = (
                    await _arguments(request, binder, wants_input)
                    if wants_input or request.query or request.body_exists
                    else {}
                )
                if direct:
                    result = await fn(**kwargs)
                else:
                    result = await host.call(fn, kwargs)
                resp = to_response(result, status_ok, media_type)
        except FieldError as e:
            resp = error(422, e.details())
        except BadBody as e:
            resp = error(e.status, e.detail)
        except HTTPError as e:
            resp = _http_error(e)
        except web.HTTPException as e:
            resp = error(e.status, e.text or e.reason)
        except asyncio.CancelledError:
            if not watchdog.timed_out(task):  # type: ignore[arg-type]
                raise
            resp = error(504, f"{what}: {fn.__name__} took longer than {timeout_s:g} s")
        except Exception as e:
            resp = _internal(server, route, e)
        finally:
            del inflight[task]  # type: ignore[arg-type]
        observe(path, method, resp.status, time.perf_counter() - t0)
        return server.web.add_cors(request, resp) if cors else resp

    return handler


def _stream_handler(
    server: HttpServer, route: Route, fn: Callable[..., Any], binder: Binder
) -> Any:
    """An async generator method: a chunked answer, each item sent as soon as it is yielded."""
    policy, observe = server.policy, server.metrics.observe
    media_type = route.media_type or stream_media_type(binder.returns)
    frame = sse_bytes if media_type.startswith(SSE) else chunk_bytes
    wants_input = not binder.needs_nothing

    async def handler(request: web.Request) -> web.StreamResponse:
        bad = server.web.refuse(request)
        if bad is not None:
            return bad
        t0 = time.perf_counter()
        if policy.required and not policy.header_ok(request.headers.get("Authorization")):
            return server.denied()
        try:
            kwargs = await _arguments(request, binder, wants_input)
        except FieldError as e:
            return error(422, e.details())
        except BadBody as e:
            return error(e.status, e.detail)
        headers = {
            "Content-Type": media_type,
            **server.web.cors_headers(request.headers.get("Origin")),
        }
        if media_type.startswith(SSE):
            headers["Cache-Control"] = "no-cache"
        resp = web.StreamResponse(status=route.status_code, headers=headers)
        if request.method == "HEAD":
            return resp
        agen = fn(**kwargs)
        status = route.status_code
        try:
            first = await agen.__anext__()  # errors before the first item still get a status
        except StopAsyncIteration:
            first = None
        except HTTPError as e:
            return _http_error(e)
        except Exception as e:
            return _internal(server, route, e)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        server.streams.add(resp)
        try:
            if first is not None:
                await resp.write(frame(first))
                async for item in agen:
                    await resp.write(frame(item))
            await resp.write_eof()
        except ConnectionError:
            status = 499  # the client went away (nginx's code for it)
        except asyncio.CancelledError:
            status = 499
            raise
        except Exception as e:
            status = 500
            _host.logger.error("%s: stream %s failed", server.what, route.path, exc_info=e)
            if request.transport is not None:
                request.transport.close()  # no final chunk: the client sees the stream broken
        finally:
            server.streams.discard(resp)
            await agen.aclose()
            observe(route.path, route.method, status, time.perf_counter() - t0)
        return resp

    return handler


def make_ws_handler(
    server: HttpServer, route: Route, fn: Callable[..., Any], binder: Binder
) -> Any:
    """A WebSocket route: checks first (token, arguments), then aiohttp's WebSocketResponse."""
    policy, observe, spec = server.policy, server.metrics.observe, server.spec

    async def handler(request: web.Request) -> web.StreamResponse:
        bad = server.web.refuse(request)  # the Origin check stops cross-site WebSockets
        if bad is not None:
            return bad
        t0 = time.perf_counter()
        if policy.required and not policy.header_ok(request.headers.get("Authorization")):
            return server.denied()
        ws = web.WebSocketResponse(max_msg_size=spec.max_body_bytes, heartbeat=spec.ws_heartbeat_s)
        try:
            kwargs = await _arguments(request, binder, True, ws)
        except FieldError as e:
            return error(422, e.details())
        if not ws.can_prepare(request).ok:
            return error(
                426, "this route serves WebSocket connections only", {"Upgrade": "websocket"}
            )
        await ws.prepare(request)
        server.websockets.add(ws)
        status = 101
        try:
            await fn(**kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            status = 500
            _host.logger.error("%s: WebSocket %s failed", server.what, route.path, exc_info=e)
            await ws.close(code=1011, message=b"internal error")
        finally:
            server.websockets.discard(ws)
            if not ws.closed:
                await ws.close()
            observe(route.path, "WEBSOCKET", status, time.perf_counter() - t0)
        return ws

    return handler
