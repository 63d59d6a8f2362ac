"""Convert one request value to a parameter's annotation, or raise :class:`FieldError`.

Values come as text (path, query: ``text=True``) or as JSON. Supported: ``int``, ``float``,
``bool``, ``str``, ``bytes``, enums (by value), ``datetime``/``date``/``time`` (ISO 8601),
``timedelta`` (seconds), ``UUID``, ``Decimal``, ``list[T]``, ``tuple[T, ...]``, ``set[T]``,
``dict[K, V]``, ``Optional``/unions, ``Literal``, dataclasses (from a JSON object, field by
field), pydantic models (when pydantic is installed and the model imported), and constraints
through ``typing.Annotated`` (:class:`Param`, ``annotated_types`` objects, ``pydantic.Field``).
Error types and messages follow pydantic's (``int_parsing``, ``missing``, ...), so FastAPI users
recognise the ``{"detail": [...]}`` answers built from them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import inspect
import typing
import uuid
from typing import Any

from sideband.endpoint.typeinfo import (
    MISSING,
    FieldError,
    Param,
    check,
    err,
    field_required,
    hints_of,
    is_union,
    jsonable_input,
    pydantic_model,
    unwrap,
)

__all__ = ["FieldError", "Param", "convert"]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def convert(value: Any, tp: Any, field: str, text: bool, loc: tuple[Any, ...] | None = None) -> Any:
    """Convert ``value`` to annotation ``tp``; ``text`` when it came from the URL (a string)."""
    loc = (field,) if loc is None else loc
    base, cons = unwrap(tp)
    out = _convert(value, base, field, text, loc)
    if cons:
        check(out, cons, field, loc)
    return out


def _convert(value: Any, tp: Any, field: str, text: bool, loc: tuple[Any, ...]) -> Any:
    if tp is inspect.Parameter.empty or tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if is_union(tp):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(value, arg, field, text, loc)
            except FieldError as e:
                errors.append(e.message)
        raise err(field, loc, "union_error", "; ".join(errors) or "no type matched", value)
    if tp is type(None):
        if value is None or (text and value in ("", "null")):
            return None
        raise err(field, loc, "none_required", "Input should be None", value)
    if origin is typing.Literal:
        for choice in typing.get_args(tp):
            try:
                if convert(value, type(choice), field, text, loc) == choice:
                    return choice
            except FieldError:
                pass
        choices = list(typing.get_args(tp))
        raise err(field, loc, "literal_error", f"must be one of {choices}, got {value!r}", value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum(value, tp, field, text, loc)
    scalar = _SCALARS.get(tp)
    if scalar is not None:
        return scalar(value, field, text, loc)
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set, frozenset):
        return _sequence(value, tp, field, text, loc)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise err(field, loc, "dict_type", f"expected an object, got {value!r}", value)
        args = typing.get_args(tp)
        if not args:
            return value
        ktp, vtp = args
        return {
            convert(k, ktp, field, True, (*loc, k)): convert(
                v, vtp, f"{field}.{k}", text, (*loc, k)
            )
            for k, v in value.items()
        }
    if pydantic_model(tp):
        return _pydantic(value, tp, field, loc)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(value, tp, field, text, loc)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise err(field, loc, "is_instance_of", f"expected {tp.__name__}, got {value!r}", value)
    return value


def _bool(value: Any, field: str, text: bool, loc: tuple[Any, ...]) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise err(field, loc, "bool_parsing", f"expected a boolean, got {value!r}", value)


def _int(value: Any, field: str, text: bool, loc: tuple[Any, ...]) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise err(field, loc, "int_parsing", f"expected an integer, got {value!r}", value)


def _float(value: Any, field: str, text: bool, loc: tuple[Any, ...]) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise err(field, loc, "float_parsing", f"expected a number, got {value!r}", value)


def _str(value: Any, field: str, text: bool, loc: tuple[Any, ...]) -> str:
    if isinstance(value, str):
        return value
    raise err(field, loc, "string_type", f"expected a string, got {value!r}", value)


def _bytes(value: Any, field: str, text: bool, loc: tuple[Any, ...]) -> bytes:
    if isinstance(value, str):
        return value.encode()
    raise err(field, loc, "bytes_type", f"expected a string, got {value!r}", value)


def _iso(parse: Any, what: str, kind: str) -> Any:
    def conv(value: Any, field: str, text: bool, loc: tuple[Any, ...]) -> Any:
        if isinstance(value, str):
            s = value.strip()
            if s[-1:] in ("Z", "z"):
                s = s[:-1] + "+00:00"  # Python 3.10's fromisoformat does not take "Z"
            try:
                return parse(s)
            except ValueError:
                pass
        raise err(
            field, loc, f"{kind}_parsing", f"expected an ISO 8601 {what}, got {value!r}", value
        )

    return conv


def _timedelta(value: Any, field: str, text: bool, loc: tuple[Any, ...]) -> dt.timedelta:
    try:
        seconds = _float(value, field, text, loc)
        return dt.timedelta(seconds=seconds)
    except (FieldError, OverflowError, ValueError):
        pass
    raise err(field, loc, "time_delta_parsing", f"expected seconds, got {value!r}", value)


def _uuid(value: Any, field: str, text: bool, loc: tuple[Any, ...]) -> uuid.UUID:
    if isinstance(value, str):
        try:
            return uuid.UUID(value.strip())
        except ValueError:
            pass
    raise err(field, loc, "uuid_parsing", f"expected a UUID, got {value!r}", value)


def _decimal(value: Any, field: str, text: bool, loc: tuple[Any, ...]) -> decimal.Decimal:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        try:
            d = decimal.Decimal(str(value).strip())
            if d.is_finite():
                return d
        except decimal.InvalidOperation:
            pass
    raise err(field, loc, "decimal_parsing", f"expected a decimal number, got {value!r}", value)


_SCALARS: dict[Any, Any] = {
    bool: _bool,
    int: _int,
    float: _float,
    str: _str,
    bytes: _bytes,
    dt.datetime: _iso(dt.datetime.fromisoformat, "date-time", "datetime"),
    dt.date: _iso(dt.date.fromisoformat, "date", "date"),
    dt.time: _iso(dt.time.fromisoformat, "time", "time"),
    dt.timedelta: _timedelta,
    uuid.UUID: _uuid,
    decimal.Decimal: _decimal,
}


def _enum(value: Any, tp: type[enum.Enum], field: str, text: bool, loc: tuple[Any, ...]) -> Any:
    for member in tp:
        v = member.value
        if value == v and type(value) is not bool or value is v:
            return member
        if text and isinstance(value, str) and isinstance(v, (int, float, str)):
            try:
                if _SCALARS[type(v)](value, field, text, loc) == v:
                    return member
            except (FieldError, KeyError):
                pass
    choices = [m.value for m in tp]
    raise err(field, loc, "enum", f"must be one of {choices}, got {value!r}", value)


def _sequence(value: Any, tp: Any, field: str, text: bool, loc: tuple[Any, ...]) -> Any:
    origin = typing.get_origin(tp) or tp
    if isinstance(value, str) and text:
        value = [value]
    if not isinstance(value, list):
        raise err(field, loc, "list_type", f"expected a list, got {value!r}", value)
    args = typing.get_args(tp)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(args) != len(value):
            msg = f"expected {len(args)} items, got {len(value)}"
            raise err(field, loc, "tuple_length", msg, value)
        return tuple(
            convert(v, a, f"{field}[{i}]", text, (*loc, i))
            for i, (v, a) in enumerate(zip(value, args))
        )
    item_tp = args[0] if args else Any
    items = [convert(v, item_tp, f"{field}[{i}]", text, (*loc, i)) for i, v in enumerate(value)]
    if origin in (set, frozenset):
        try:
            return origin(items)
        except TypeError:
            raise err(field, loc, "set_type", "items must be hashable", value) from None
    return tuple(items) if origin is tuple else items


def _dataclass(value: Any, tp: type, field: str, text: bool, loc: tuple[Any, ...]) -> Any:
    if isinstance(value, tp):
        return value
    if not isinstance(value, dict):
        raise err(field, loc, "model_type", f"expected an object for {tp.__name__}", value)
    hints = hints_of(tp)
    kwargs: dict[str, Any] = {}
    errors: list[FieldError] = []
    names = set()
    for f in dataclasses.fields(tp):
        if not f.init:
            continue
        names.add(f.name)
        sub = (*loc, f.name)
        if f.name in value:
            try:
                kwargs[f.name] = convert(value[f.name], hints.get(f.name, Any), f.name, text, sub)
            except FieldError as e:
                errors.append(e)
        elif field_required(f):
            errors.append(FieldError(f.name, "field required", "missing", loc=sub))
    for k in value:
        if k not in names:
            errors.append(
                FieldError(str(k), "unknown field", "extra_forbidden", value[k], (*loc, k))
            )
    if errors:
        raise FieldError(field, "", loc=loc, errors=errors)
    try:
        return tp(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ validation
        raise err(field, loc, "value_error", str(e), value) from None


def _pydantic(value: Any, tp: type, field: str, loc: tuple[Any, ...]) -> Any:
    import pydantic

    if isinstance(value, tp):
        return value
    try:
        return tp.__pydantic_validator__.validate_python(value)  # type: ignore[attr-defined]
    except pydantic.ValidationError as e:
        errors = [
            FieldError(
                ".".join(map(str, item["loc"])) or field,
                item["msg"],
                item["type"],
                jsonable_input(item.get("input", MISSING)) if "input" in item else MISSING,
                (*loc, *item["loc"]),
            )
            for item in e.errors(include_url=False)
        ]
        raise FieldError(field, "", loc=loc, errors=errors) from None
