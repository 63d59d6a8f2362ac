"""Which gRPC code an exception raised by an actor method becomes, and JSON encoding of results.

gRPC maps by builtin type so that ordinary Python code gets sensible codes (a ValueError is
INVALID_ARGUMENT). HTTP does not: there an uncaught exception is a bug in the handler (500), and
``sideband.http.HTTPError(status, detail)`` chooses any other status, as in FastAPI.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import uuid
from typing import Any

_GRPC = (
    (PermissionError, "PERMISSION_DENIED"),
    (NotImplementedError, "UNIMPLEMENTED"),
    (TimeoutError, "DEADLINE_EXCEEDED"),
    (LookupError, "NOT_FOUND"),
    (ValueError, "INVALID_ARGUMENT"),
)


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
    if isinstance(o, enum.Enum):
        return o.value
    if isinstance(o, (dt.datetime, dt.date, dt.time)):
        return o.isoformat()
    if isinstance(o, dt.timedelta):
        return o.total_seconds()
    if isinstance(o, (uuid.UUID, decimal.Decimal)):
        return str(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
    dump = getattr(o, "model_dump", None)  # pydantic models
    if callable(dump):
        return dump(mode="json")
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def dumps(value: Any) -> bytes:
    return json.dumps(value, default=_default, separators=(",", ":")).encode()
