"""The OpenAPI 3.1 document of one HTTP endpoint (``GET /-/openapi.json``), built from its routes.

Parameters that fit in a URL (scalars, enums, datetimes, UUIDs, lists of them) are documented as
query parameters for GET, HEAD, DELETE and WebSocket routes; everything else, and every
parameter of POST/PUT/PATCH, as properties of a JSON object body (the binder accepts either
place). A lone model parameter is the body itself, as in FastAPI.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from sideband.endpoint.params import Binder, Parameter
from sideband.endpoint.responses import SSE, stream_media_type
from sideband.endpoint.routes import WEBSOCKET, Route
from sideband.endpoint.schema import SchemaBuilder

# ``server`` below is the sideband.endpoint.http_server.HttpServer calling us (not imported:
# that module imports this one).
HttpServer = Any

_QUERY_METHODS = ("GET", "HEAD", "DELETE", WEBSOCKET)
_URL_TYPES = {"boolean", "integer", "number", "string"}

_VALIDATION_ERROR = {
    "title": "ValidationError",
    "type": "object",
    "required": ["loc", "msg", "type"],
    "properties": {
        "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
        "msg": {"type": "string"},
        "type": {"type": "string"},
        "input": {},
    },
}
_HTTP_VALIDATION_ERROR = {
    "title": "HTTPValidationError",
    "type": "object",
    "properties": {
        "detail": {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}}
    },
}
_ERROR = {"title": "Error", "type": "object", "properties": {"detail": {}}}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sideband")
    except PackageNotFoundError:
        return "0"


def _url_fit(schema: dict[str, Any], b: SchemaBuilder) -> bool:
    """Whether values of ``schema`` can be written in a query string."""
    if "$ref" in schema:
        target = b.components.get(schema["$ref"].rsplit("/", 1)[1], {})
        return "enum" in target
    if "anyOf" in schema:
        return all(_url_fit(s, b) or s.get("type") == "null" for s in schema["anyOf"])
    if schema.get("type") == "array":
        items = schema.get("items", {})
        return items.get("type") in _URL_TYPES or "enum" in items
    return schema.get("type") in _URL_TYPES or "enum" in schema


def _openapi_path(path: str) -> str:
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)


def _param_schema(b: SchemaBuilder, p: Parameter) -> dict[str, Any]:
    s = b.schema(p.annotation)
    if not p.required and _jsonable(p.default):
        s = {**s, "default": p.default}
    return s


def _jsonable(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _response(b: SchemaBuilder, r: Route, binder: Binder, fn: Any) -> dict[str, Any]:
    if r.method == WEBSOCKET:
        return {"101": {"description": "Switching Protocols (WebSocket)"}}
    returns = binder.returns
    if inspect.isasyncgenfunction(fn):
        media = r.media_type or stream_media_type(returns)
        desc = "server-sent events" if media.startswith(SSE) else "a chunked stream"
        content = {media.split(";")[0]: {"schema": {"type": "string"}}}
        return {str(r.status_code): {"description": desc, "content": content}}
    if returns is str:
        media, schema = r.media_type or "text/plain", {"type": "string"}
    elif returns is bytes:
        media, schema = r.media_type or "application/octet-stream", {"type": "string"}
    elif returns is inspect.Parameter.empty or _is_response(returns):
        media, schema = r.media_type or "application/json", {}
    else:
        media, schema = r.media_type or "application/json", b.schema(returns)
    return {
        str(r.status_code): {
            "description": "Successful Response",
            "content": {media.split(";")[0]: {"schema": schema}},
        }
    }


def _is_response(tp: Any) -> bool:
    from aiohttp import web

    return isinstance(tp, type) and issubclass(tp, web.StreamResponse)


def operation(b: SchemaBuilder, r: Route, binder: Binder, fn: Any) -> dict[str, Any]:
    """The OpenAPI operation object of one route."""
    doc = inspect.getdoc(fn) or ""
    op: dict[str, Any] = {"operationId": f"{r.name}_{r.method.lower()}"}
    summary = r.summary or (doc.splitlines()[0] if doc else r.name.replace("_", " "))
    op["summary"] = summary
    if doc:
        op["description"] = doc
    params: list[dict[str, Any]] = []
    body_props: dict[str, Any] = {}
    body_required: list[str] = []
    body_schema: dict[str, Any] | None = None
    body_needed = False
    for p in binder.params.values():
        s = _param_schema(b, p)
        if p.source == "path":
            params.append({"name": p.name, "in": "path", "required": True, "schema": s})
        elif p.source == "body":
            body_schema, body_needed = b.schema(p.annotation), p.required
        elif r.method in _QUERY_METHODS and _url_fit(s, b):
            q: dict[str, Any] = {"name": p.name, "in": "query", "required": p.required, "schema": s}
            if s.get("type") == "array":
                q.update(style="form", explode=True)
            params.append(q)
        else:
            body_props[p.name] = s
            if p.required:
                body_required.append(p.name)
    if body_schema is None and (body_props or (binder.var_kw and r.method not in _QUERY_METHODS)):
        body_schema = {"type": "object", "properties": body_props}
        body_schema["additionalProperties"] = binder.var_kw
        if body_required:
            body_schema["required"] = body_required
        body_needed = bool(body_required)
    if params:
        op["parameters"] = params
    if body_schema is not None and r.method != WEBSOCKET:
        op["requestBody"] = {
            "required": body_needed,
            "content": {"application/json": {"schema": body_schema}},
        }
    responses = _response(b, r, binder, fn)
    if binder.params:
        responses["422"] = {
            "description": "Validation Error",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
            },
        }
    op["responses"] = responses
    return op


def document(server: HttpServer) -> dict[str, Any]:
    """The endpoint's OpenAPI 3.1 document."""
    b = SchemaBuilder()
    paths: dict[str, dict[str, Any]] = {}
    for r, binder in server.binders:
        fn = inspect.unwrap(getattr(type(server.host.instance), r.name))
        method = "get" if r.method == WEBSOCKET else r.method.lower()
        op = operation(b, r, binder, fn)
        if r.method == WEBSOCKET:
            op["description"] = ("WebSocket. " + op.get("description", "")).strip()
        paths.setdefault(_openapi_path(r.path), {})[method] = op
    b.components.setdefault("ValidationError", _VALIDATION_ERROR)
    b.components.setdefault("HTTPValidationError", _HTTP_VALIDATION_ERROR)
    b.components.setdefault("Error", _ERROR)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": server.spec.title or server.host.cls_name,
            "version": _version(),
            "description": f"HTTP endpoint of Ray actor {server.host.cls_name}, served by sideband.",
        },
        "paths": paths,
        "components": {"schemas": b.components},
    }
    if server.url:
        doc["servers"] = [{"url": server.url}]
    if server.policy.required:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
