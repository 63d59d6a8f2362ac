"""Map request data (path, query, JSON body) onto a method's parameters, by name and type.

Shared by HTTP routes, WebSockets and the generic gRPC call. Every field is checked and all bad
ones are reported together in one :class:`FieldError`, which the servers turn into 422
(``{"detail": [...]}``) / INVALID_ARGUMENT. Conversion rules live in
:mod:`sideband.endpoint.convert`.

FastAPI's body rule: when exactly one parameter is a model (a dataclass or a pydantic model), the
JSON body *is* that model, and the other parameters come from the path and the query. Otherwise
the body's keys are parameter names, like the query's.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sideband.endpoint.convert import convert
from sideband.endpoint.typeinfo import (
    MISSING,
    FieldError,
    Param,
    hints_of,
    is_model,
    is_union,
    unwrap,
)

__all__ = ["Binder", "FieldError", "Param", "Parameter", "convert", "type_name"]


@dataclass(frozen=True)
class Parameter:
    name: str
    annotation: Any
    required: bool
    default: Any
    source: str  # "path", "query/body", "body" (the whole body) or "request"

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
    tp, _ = unwrap(tp)
    if tp is inspect.Parameter.empty or tp is Any:
        return "any"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _is_request_type(tp: Any) -> bool:
    try:
        from aiohttp import web

        return isinstance(tp, type) and issubclass(tp, (web.BaseRequest, web.WebSocketResponse))
    except Exception:
        return False


def is_list(tp: Any) -> bool:
    """``list``/``tuple``/``set`` of anything, or a union with one (``list[int] | None``)."""
    tp, _ = unwrap(tp)
    if tp in (list, tuple, set, frozenset) or typing.get_origin(tp) in (
        list,
        tuple,
        set,
        frozenset,
    ):
        return True
    if is_union(tp):
        return any(is_list(a) for a in typing.get_args(tp))
    return False


class Binder:
    """The parameters of one method and how to fill them from a request."""

    def __init__(
        self,
        fn: Callable[..., Any],
        path_params: set[str] = frozenset(),  # type: ignore[assignment]
        special: tuple[str, ...] = ("request",),
        model_body: bool = True,
    ) -> None:
        sig = inspect.signature(fn)
        # Unresolvable string annotations: no conversion rather than failing.
        hints = hints_of(fn)
        self.params: dict[str, Parameter] = {}
        self.var_kw = False
        self.request_param: str | None = None
        self.returns = hints.get("return", sig.return_annotation)
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
            if name in special or _is_request_type(ann):
                self.request_param = name
                continue
            src = "path" if name in path_params else "query/body"
            required = p.default is p.empty
            self.params[name] = Parameter(name, ann, required, None if required else p.default, src)
        missing = set(path_params) - set(names)
        if missing and not self.var_kw:
            raise TypeError(
                f"{fn.__qualname__}: path parameter(s) {sorted(missing)} are not parameters of the method"
            )
        models = [p for p in self.params.values() if p.source != "path" and is_model(p.annotation)]
        self.body_param: str | None = None
        if model_body and len(models) == 1:
            m = models[0]
            self.body_param = m.name
            self.params[m.name] = Parameter(m.name, m.annotation, m.required, m.default, "body")
        self.needs_nothing = not self.params and not self.var_kw and self.request_param is None

    def bind(
        self,
        path: Mapping[str, str] | None = None,
        query: Any = None,
        body: Any = None,
        request: Any = None,
    ) -> dict[str, Any]:
        """Build the keyword arguments; text (path, query) is converted, JSON kept as sent.

        Raises :class:`FieldError` listing every bad field (``loc`` starts with its source).
        """
        kwargs: dict[str, Any] = {}
        errors: list[FieldError] = []
        seen: set[str] = set()
        body_model = self.body_param
        if body_model is not None:
            p = self.params[body_model]
            if body is not None:
                try:
                    kwargs[body_model] = convert(body, p.annotation, body_model, False, ("body",))
                except FieldError as e:
                    errors.append(e)
            elif p.required:
                errors.append(FieldError(body_model, "field required", "missing", loc=("body",)))
            body = None
        elif body is not None and not isinstance(body, Mapping):
            raise FieldError(
                "body",
                "the JSON body must be an object of named arguments",
                "dict_type",
                loc=("body",),
            )
        for where, values, text in (
            ("path", path, True),
            ("query", query, True),
            ("body", body, False),
        ):
            if not values:
                continue
            for name in dict.fromkeys(values):  # a query's keys repeat in some multidicts
                known = self.params.get(name)
                loc = (where, name)
                if (known is None and not self.var_kw) or (
                    known is not None and known.source == "body"
                ):
                    errors.append(
                        FieldError(
                            name, "unknown field", "extra_forbidden", _input(values, name), loc
                        )
                    )
                    continue
                if name in kwargs:
                    errors.append(
                        FieldError(
                            name,
                            "given twice (in more than one of path, query, body)",
                            "value_error",
                            loc=loc,
                        )
                    )
                    continue
                seen.add(name)
                ann = known.annotation if known else Any
                if text and where == "query":
                    raw = values.getall(name) if hasattr(values, "getall") else [values[name]]
                    value = raw if is_list(ann) else raw[-1]
                else:
                    value = values[name]
                try:
                    kwargs[name] = convert(value, ann, name, text, loc)
                except FieldError as e:
                    errors.append(e)
        for name, p in self.params.items():
            if name not in seen and p.required and p.source != "body":
                where = "path" if p.source == "path" else ("body" if body else "query")
                errors.append(FieldError(name, "field required", "missing", loc=(where, name)))
        if errors:
            raise errors[0] if len(errors) == 1 else FieldError("", "", errors=errors)
        if self.request_param is not None:
            kwargs[self.request_param] = request
        return kwargs

    def describe(self) -> list[dict[str, Any]]:
        return [p.describe() for p in self.params.values()]


def _input(values: Any, name: str) -> Any:
    try:
        v = values[name]
    except Exception:
        return MISSING
    return v if isinstance(v, (str, int, float, bool, type(None))) else MISSING
