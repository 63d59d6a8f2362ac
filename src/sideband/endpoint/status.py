"""Which HTTP status / gRPC code an exception raised by an actor method becomes.

The mapping is by builtin type so that ordinary Python code gets sensible answers without
knowing about HTTP: a ValueError is the caller's fault (400), a LookupError a missing thing (404).
"""

from __future__ import annotations

import json
from typing import Any

_HTTP = (
    (PermissionError, 403),
    (NotImplementedError, 501),
    (TimeoutError, 504),
    (LookupError, 404),
    (ValueError, 400),
)

_GRPC = (
    (PermissionError, "PERMISSION_DENIED"),
    (NotImplementedError, "UNIMPLEMENTED"),
    (TimeoutError, "DEADLINE_EXCEEDED"),
    (LookupError, "NOT_FOUND"),
    (ValueError, "INVALID_ARGUMENT"),
)


def http_status(exc: BaseException) -> int:
    for tp, status in _HTTP:
        if isinstance(exc, tp):
            return status
    return 500


def grpc_code_name(exc: BaseException) -> str:
    for tp, code in _GRPC:
        if isinstance(exc, tp):
            return code
    return "INTERNAL"


def _default(o: Any) -> Any:
    # numpy scalars and arrays are common return values of actor methods.
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def dumps(value: Any) -> bytes:
    return json.dumps(value, default=_default, separators=(",", ":")).encode()
