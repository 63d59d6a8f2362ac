"""What the binder knows about annotations: errors, constraints, models and resolved hints.

:class:`FieldError` carries FastAPI's error items; :class:`Param` (and ``annotated_types`` or
``pydantic.Field`` objects) put constraints in ``typing.Annotated``; hints are resolved once,
where the class is decorated. Used by :mod:`.convert` (values), :mod:`.params` (binding) and
:mod:`.schema` (JSON Schema).
"""

from __future__ import annotations

import dataclasses
import decimal
import logging
import re
import sys
import types
import typing
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("sideband.endpoint")

MISSING: Any = object()


class FieldError(Exception):
    """One request field (or several, in ``errors``) is missing, unknown or invalid."""

    def __init__(
        self,
        field: str,
        message: str,
        type: str = "value_error",  # noqa: A002 - pydantic's name for it
        input: Any = MISSING,  # noqa: A002
        loc: tuple[Any, ...] | None = None,
        errors: list[FieldError] | None = None,
    ) -> None:
        if errors:
            message = "; ".join(str(e) for e in errors)
            super().__init__(message)
        else:
            super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.type = type
        self.input = input
        self.loc = loc if loc is not None else (field,)
        self.errors = errors or []

    def details(self, prefix: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """FastAPI's ``detail`` items: ``{"type", "loc", "msg", "input"}``."""
        if self.errors:
            return [d for e in self.errors for d in e.details(prefix)]
        item: dict[str, Any] = {"type": self.type, "loc": [*prefix, *self.loc], "msg": self.message}
        if self.input is not MISSING:
            item["input"] = self.input
        return [item]


@dataclass(frozen=True)
class Param:
    """Constraints and documentation of a parameter: ``Annotated[int, Param(ge=1)]``.

    ``gt``/``ge``/``lt``/``le``/``multiple_of`` bound numbers; ``min_length``/``max_length``
    bound strings, bytes and lists; ``pattern`` is searched in strings (as in JSON Schema).
    ``annotated_types`` objects (``Gt(0)``, ``MaxLen(8)``) and ``pydantic.Field(...)`` work too.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    multiple_of: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    description: str | None = None


_CONSTRAINTS = ("gt", "ge", "lt", "le", "multiple_of", "min_length", "max_length", "pattern")


def constraints(metadata: tuple[Any, ...]) -> dict[str, Any]:
    """The constraints named by ``Annotated`` metadata, merged (later ones win)."""
    out: dict[str, Any] = {}
    for m in metadata:
        inner = getattr(m, "metadata", None)  # pydantic's FieldInfo holds annotated_types objects
        if isinstance(inner, list):
            out.update(constraints(tuple(inner)))
        for name in (*_CONSTRAINTS, "description"):
            v = getattr(m, name, None)
            if v is not None and not callable(v):
                out[name] = v
    return out


def unwrap(tp: Any) -> tuple[Any, dict[str, Any]]:
    """``Annotated[T, ...]`` -> (T, constraints); anything else -> (tp, {})."""
    if typing.get_origin(tp) is typing.Annotated:
        base, *meta = typing.get_args(tp)
        inner, more = unwrap(base)
        return inner, {**more, **constraints(tuple(meta))}
    return tp, {}


def is_union(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType)


def pydantic_model(tp: Any) -> bool:
    """A pydantic model or pydantic dataclass (never imports pydantic itself)."""
    if "pydantic" not in sys.modules or not isinstance(tp, type):
        return False
    return hasattr(tp, "__pydantic_validator__")


def is_model(tp: Any) -> bool:
    """A structured type read from a JSON object: a dataclass or a pydantic model."""
    tp, _ = unwrap(tp)
    return isinstance(tp, type) and (dataclasses.is_dataclass(tp) or pydantic_model(tp))


# Resolved annotations, by function or dataclass. Filled where the decorator runs (the driver,
# which can resolve ``from __future__ import annotations`` strings) and shipped to the actor
# with the class: a class pickled by value reaches the actor without its module's globals.
_HINTS: dict[Any, dict[str, Any]] = {}


def hints_of(obj: Any) -> dict[str, Any]:
    """``typing.get_type_hints(obj, include_extras=True)``, remembered; {} if unresolvable."""
    try:
        return _HINTS[obj]
    except (KeyError, TypeError):
        pass
    try:
        hints = typing.get_type_hints(obj, include_extras=True)
    except Exception:
        hints = {}
    try:
        _HINTS[obj] = hints
    except TypeError:
        pass
    return hints


def collect_hints(obj: Any, out: dict[Any, dict[str, Any]]) -> None:
    """Resolve the hints of ``obj`` and of every dataclass its annotations reach, into ``out``."""
    if obj in out:
        return
    hints = out[obj] = hints_of(obj)
    if not hints and getattr(obj, "__annotations__", None):
        logger.warning(
            "the annotations of %s cannot be resolved here (a type defined inside a function?): "
            "its values are passed on unconverted; define the types at module level",
            getattr(obj, "__qualname__", obj),
        )
    for tp in hints.values():
        _walk(tp, out)


def _walk(tp: Any, out: dict[Any, dict[str, Any]]) -> None:
    for arg in typing.get_args(tp):
        _walk(arg, out)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and tp not in out:
        collect_hints(tp, out)


def remember(hints: dict[Any, dict[str, Any]]) -> None:
    """Use hints resolved elsewhere (see :func:`collect_hints`)."""
    _HINTS.update(hints)


def err(field: str, loc: tuple[Any, ...], type_: str, msg: str, value: Any) -> FieldError:
    return FieldError(field, msg, type_, jsonable_input(value), loc)


def jsonable_input(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool, list, dict)):
        return value
    return repr(value)


def field_required(f: dataclasses.Field) -> bool:
    """No default and no factory. By type, not identity: a dataclass pickled by value (as Ray
    ships classes defined in scripts) carries copies of ``dataclasses.MISSING``."""
    missing = type(dataclasses.MISSING)
    return isinstance(f.default, missing) and isinstance(f.default_factory, missing)


def check(value: Any, cons: dict[str, Any], field: str, loc: tuple[Any, ...]) -> None:
    """Apply ``Annotated`` constraints to a converted value."""
    number = isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool)
    if number:
        for name, ok, type_, word in (
            ("gt", lambda v, c: v > c, "greater_than", "greater than"),
            ("ge", lambda v, c: v >= c, "greater_than_equal", "greater than or equal to"),
            ("lt", lambda v, c: v < c, "less_than", "less than"),
            ("le", lambda v, c: v <= c, "less_than_equal", "less than or equal to"),
        ):
            c = cons.get(name)
            if c is not None and not ok(value, c):
                raise err(field, loc, type_, f"Input should be {word} {c}", value)
        m = cons.get("multiple_of")
        if m and (value % m) != 0:
            raise err(field, loc, "multiple_of", f"Input should be a multiple of {m}", value)
    if isinstance(value, (str, bytes, list, tuple, set, frozenset, dict)):
        kind = "string" if isinstance(value, (str, bytes)) else "too"
        lo, hi = cons.get("min_length"), cons.get("max_length")
        if lo is not None and len(value) < lo:
            t = "string_too_short" if kind == "string" else "too_short"
            raise err(field, loc, t, f"should have at least {lo} items/characters", value)
        if hi is not None and len(value) > hi:
            t = "string_too_long" if kind == "string" else "too_long"
            raise err(field, loc, t, f"should have at most {hi} items/characters", value)
    pattern = cons.get("pattern")
    if pattern is not None and isinstance(value, str) and re.search(pattern, value) is None:
        msg = f"String should match pattern '{pattern}'"
        raise err(field, loc, "string_pattern_mismatch", msg, value)
