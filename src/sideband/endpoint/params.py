"""Map request data (path, query, JSON body) onto a method's parameters, by name and type.

Shared by HTTP routes and the generic gRPC call. A bad or missing field raises
:class:`FieldError`, which the servers turn into 422 / INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class FieldError(Exception):
    """One request field is missing, unknown or of the wrong type."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Param:
    name: str
    annotation: Any
    required: bool
    default: Any
    source: str  # "path", "query/body" or "request"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "in": self.source,
            "type": type_name(self.annotation),
            "required": self.required,
        }
        if not self.required:
            out["default"] = self.default if _jsonable(self.default) else repr(self.default)
        return out


def _jsonable(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def type_name(tp: Any) -> str:
    if tp is inspect.Parameter.empty or tp is Any:
        return "any"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _is_request_type(tp: Any) -> bool:
    try:
        from aiohttp import web

        return isinstance(tp, type) and issubclass(tp, web.BaseRequest)
    except Exception:
        return False


class Binder:
    """The parameters of one method and how to fill them from a request."""

    def __init__(self, fn: Callable[..., Any], path_params: set[str] = frozenset()) -> None:
        sig = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn)
        except Exception:
            # Unresolvable string annotations: fall back to no conversion rather than failing.
            hints = {}
        self.params: dict[str, Param] = {}
        self.var_kw = False
        self.request_param: str | None = None
        names = list(sig.parameters)
        for i, (name, p) in enumerate(sig.parameters.items()):
            if (i == 0 and name == "self") or name.startswith("_ray_"):
                continue  # Ray's tracing wrapper adds _ray_trace_ctx to actor methods
            if p.kind is p.VAR_KEYWORD:
                self.var_kw = True
                continue
            if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
                raise TypeError(
                    f"{fn.__qualname__}: *args and positional-only parameters cannot be mapped from a request"
                )
            ann = hints.get(name, p.annotation)
            if name == "request" or _is_request_type(ann):
                self.request_param = name
                continue
            src = "path" if name in path_params else "query/body"
            required = p.default is p.empty
            self.params[name] = Param(name, ann, required, None if required else p.default, src)
        missing = set(path_params) - set(names)
        if missing and not self.var_kw:
            raise TypeError(
                f"{fn.__qualname__}: path parameter(s) {sorted(missing)} are not parameters of the method"
            )
        self.needs_nothing = not self.params and not self.var_kw and self.request_param is None

    def bind(
        self,
        path: Mapping[str, str] | None = None,
        query: Any = None,
        body: Mapping[str, Any] | None = None,
        request: Any = None,
    ) -> dict[str, Any]:
        """Build the keyword arguments; text (path, query) is converted, JSON kept as sent."""
        kwargs: dict[str, Any] = {}
        for source, values, text in ((path, path, True), (query, query, True), (body, body, False)):
            if not values:
                continue
            for name in dict.fromkeys(values):  # a query's keys repeat in some multidicts
                p = self.params.get(name)
                if p is None and not self.var_kw:
                    raise FieldError(name, "unknown field")
                if name in kwargs:
                    raise FieldError(name, "given twice (in more than one of path, query, body)")
                if text and source is query:
                    raw = query.getall(name) if hasattr(query, "getall") else [query[name]]
                    ann = p.annotation if p else Any
                    value = raw if _is_list(ann) else raw[-1]
                else:
                    value = values[name]
                kwargs[name] = convert(value, p.annotation if p else Any, name, text)
        for name, p in self.params.items():
            if name not in kwargs:
                if p.required:
                    raise FieldError(name, "field required")
        if self.request_param is not None:
            kwargs[self.request_param] = request
        return kwargs

    def describe(self) -> list[dict[str, Any]]:
        return [p.describe() for p in self.params.values()]


def _is_list(tp: Any) -> bool:
    """``list``, ``list[T]``, or a union with one of them (``list[int] | None``)."""
    if tp is list or typing.get_origin(tp) is list:
        return True
    origin = typing.get_origin(tp)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return any(_is_list(a) for a in typing.get_args(tp))
    return False


def convert(value: Any, tp: Any, field: str, text: bool) -> Any:
    """Convert ``value`` to annotation ``tp``; ``text`` when it came from the URL (a string)."""
    if tp is inspect.Parameter.empty or tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(value, arg, field, text)
            except FieldError as e:
                errors.append(e.message)
        raise FieldError(field, "; ".join(errors))
    if origin is typing.Literal:
        for choice in typing.get_args(tp):
            try:
                if convert(value, type(choice), field, text) == choice:
                    return choice
            except FieldError:
                pass
        raise FieldError(field, f"must be one of {list(typing.get_args(tp))}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise FieldError(field, f"expected a boolean, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise FieldError(field, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise FieldError(field, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise FieldError(field, f"expected a string, got {value!r}")
    if tp is bytes:
        if isinstance(value, str):
            return value.encode()
        raise FieldError(field, f"expected a string, got {value!r}")
    if _is_list(tp):
        if isinstance(value, str) and text:
            value = [value]
        if not isinstance(value, list):
            raise FieldError(field, f"expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [convert(v, item_tp, f"{field}[{i}]", text) for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise FieldError(field, f"expected an object, got {value!r}")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise FieldError(field, f"expected {tp.__name__}, got {value!r}")
    return value
