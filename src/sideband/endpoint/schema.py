"""JSON Schema (2020-12, as OpenAPI 3.1 uses it) of the annotations :mod:`.convert` accepts.

Models (dataclasses, pydantic models) become ``#/components/schemas/<Name>`` references, so
nested and recursive models are described once.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime as dt
import decimal
import enum
import inspect
import typing
import uuid
from typing import Any

from sideband.endpoint.typeinfo import field_required, hints_of, is_union, pydantic_model, unwrap

REF = "#/components/schemas/"

_SCALARS: dict[Any, dict[str, Any]] = {
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    bytes: {"type": "string"},
    dt.datetime: {"type": "string", "format": "date-time"},
    dt.date: {"type": "string", "format": "date"},
    dt.time: {"type": "string", "format": "time"},
    dt.timedelta: {"type": "number", "description": "seconds"},
    uuid.UUID: {"type": "string", "format": "uuid"},
    decimal.Decimal: {"type": "string", "pattern": r"^-?\d+(\.\d+)?$"},
}

_KEYWORDS = {
    "gt": "exclusiveMinimum",
    "ge": "minimum",
    "lt": "exclusiveMaximum",
    "le": "maximum",
    "multiple_of": "multipleOf",
    "pattern": "pattern",
    "description": "description",
}


def _json_type(v: Any) -> str | None:
    for tp, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string")):
        if isinstance(v, tp):
            return name
    return None


class SchemaBuilder:
    """Schemas of annotations, collecting the models they refer to in ``components``."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def schema(self, tp: Any) -> dict[str, Any]:
        base, cons = unwrap(tp)
        out = dict(self._schema(base))
        for name, value in cons.items():
            if name in ("min_length", "max_length"):
                kind = out.get("type")
                key = {"string": "Length", "array": "Items", "object": "Properties"}.get(str(kind))
                if key:
                    out[("min" if name == "min_length" else "max") + key] = value
            elif name in _KEYWORDS:
                out[_KEYWORDS[name]] = value
        return out

    def _schema(self, tp: Any) -> dict[str, Any]:
        if tp is inspect.Parameter.empty or tp is Any or tp is object:
            return {}
        if tp is type(None):
            return {"type": "null"}
        if is_union(tp):
            return {"anyOf": [self.schema(a) for a in typing.get_args(tp)]}
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is typing.Literal:
            types = {_json_type(a) for a in args}
            out: dict[str, Any] = {"enum": list(args)}
            if len(types) == 1 and None not in types:
                out["type"] = types.pop()
            return out
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return self._enum(tp)
        if tp in _SCALARS:
            return _SCALARS[tp]
        if origin in (list, set, frozenset) or tp in (list, set, frozenset):
            out = {"type": "array", "items": self.schema(args[0]) if args else {}}
            if (origin or tp) in (set, frozenset):
                out["uniqueItems"] = True
            return out
        if origin is tuple or tp is tuple:
            if not args or (len(args) == 2 and args[1] is Ellipsis):
                return {"type": "array", "items": self.schema(args[0]) if args else {}}
            n = len(args)
            items = [self.schema(a) for a in args]
            return {"type": "array", "prefixItems": items, "minItems": n, "maxItems": n}
        if tp is dict or origin in (dict, collections.abc.Mapping):
            out = {"type": "object"}
            if len(args) == 2:
                out["additionalProperties"] = self.schema(args[1])
            return out
        if pydantic_model(tp) and not dataclasses.is_dataclass(tp):
            return self._pydantic(tp)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self._dataclass(tp)
        return {}

    def _enum(self, tp: type[enum.Enum]) -> dict[str, Any]:
        name = tp.__name__
        if name not in self.components:
            values = [m.value for m in tp]
            out: dict[str, Any] = {"title": name, "enum": values}
            types = {_json_type(v) for v in values}
            if len(types) == 1 and None not in types:
                out["type"] = types.pop()
            self.components[name] = out
        return {"$ref": REF + name}

    def _dataclass(self, tp: type) -> dict[str, Any]:
        name = tp.__name__
        if name in self.components:
            return {"$ref": REF + name}
        self.components[name] = {}  # placeholder: recursive fields refer to it
        hints = hints_of(tp)
        props: dict[str, Any] = {}
        required = []
        for f in dataclasses.fields(tp):
            if not f.init:
                continue
            props[f.name] = self.schema(hints.get(f.name, Any))
            if field_required(f):
                required.append(f.name)
        out = {"title": name, "type": "object", "properties": props, "additionalProperties": False}
        if required:
            out["required"] = required
        if tp.__doc__ and not tp.__doc__.startswith(f"{name}("):
            out["description"] = inspect.cleandoc(tp.__doc__).split("\n\n")[0]
        self.components[name] = out
        return {"$ref": REF + name}

    def _pydantic(self, tp: type) -> dict[str, Any]:
        name = tp.__name__
        if name not in self.components:
            doc = tp.model_json_schema(ref_template=REF + "{model}")  # type: ignore[attr-defined]
            for k, v in doc.pop("$defs", {}).items():
                self.components.setdefault(k, v)
            self.components[name] = doc
        return {"$ref": REF + name}
