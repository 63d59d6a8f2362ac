"""Argument binding and conversion (no Ray needed): the rules behind 422 answers."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal, Optional

import annotated_types
import pytest
from multidict import MultiDict

from sideband.endpoint.params import Binder, FieldError, convert
from sideband.http import Param


def test_scalars_from_text_and_json() -> None:
    assert convert("5", int, "k", True) == 5
    assert convert(5.0, int, "k", False) == 5
    assert convert("2.5", float, "x", True) == 2.5
    assert convert(2, float, "x", False) == 2.0
    assert convert("yes", bool, "b", True) is True
    assert convert("0", bool, "b", True) is False
    assert convert("é", bytes, "s", True) == "é".encode()
    for value, tp in (
        ("x", int),
        (True, int),
        (5.5, int),
        ("nan?", float),
        ("maybe", bool),
        (3, str),
    ):
        with pytest.raises(FieldError) as info:
            convert(value, tp, "f", False)
        assert info.value.field == "f"


def test_containers_optional_literal() -> None:
    assert convert(["1", "2"], list[int], "t", True) == [1, 2]
    assert convert("7", list[int], "t", True) == [7]
    with pytest.raises(FieldError, match=r"t\[1\]"):
        convert([1, "x"], list[int], "t", False)
    assert convert(None, Optional[int], "o", False) is None  # noqa: UP045 - both spellings
    assert convert("3", int | None, "o", True) == 3
    assert convert("b", Literal["a", "b"], "l", True) == "b"
    with pytest.raises(FieldError, match="one of"):
        convert("c", Literal["a", "b"], "l", True)
    assert convert({"a": 1}, dict, "d", False) == {"a": 1}
    with pytest.raises(FieldError):
        convert([1], dict[str, int], "d", False)


def test_binder_sources_and_errors() -> None:
    def handler(self, key: str, n: int, tags: list[str] | None = None, request=None):  # noqa: ANN001, ANN202
        pass

    b = Binder(handler, {"key"})
    assert b.request_param == "request"
    kwargs = b.bind({"key": "k1"}, MultiDict([("tags", "a"), ("tags", "b")]), {"n": 3}, "REQ")
    assert kwargs == {"key": "k1", "n": 3, "tags": ["a", "b"], "request": "REQ"}
    with pytest.raises(FieldError, match="n: field required"):
        b.bind({"key": "k"}, MultiDict(), None)
    with pytest.raises(FieldError, match="given twice"):
        b.bind({"key": "k"}, MultiDict([("n", "1")]), {"n": 2})
    with pytest.raises(FieldError, match="unknown field"):
        b.bind({"key": "k"}, MultiDict(), {"n": 1, "extra": 0})
    described = {p["name"]: p for p in b.describe()}
    assert described["key"]["in"] == "path" and described["tags"]["required"] is False

    def kw(self, **anything):  # noqa: ANN001, ANN003, ANN202
        pass

    assert Binder(kw).bind(None, None, {"free": 1}) == {"free": 1}
    with pytest.raises(TypeError, match="path parameter"):
        Binder(handler, {"missing"})


def test_typed_values_enums_datetimes_uuids() -> None:
    import datetime as dt
    import enum
    import uuid

    class Kind(enum.Enum):
        A = "a"
        B = 2

    assert convert("a", Kind, "k", True) is Kind.A
    assert convert("2", Kind, "k", True) is Kind.B  # text converted to the member's type
    assert convert(2, Kind, "k", False) is Kind.B
    with pytest.raises(FieldError) as info:
        convert("c", Kind, "k", True)
    assert info.value.type == "enum"
    when = convert("2026-12-01T10:00:00Z", dt.datetime, "w", True)
    assert when == dt.datetime(2026, 12, 1, 10, tzinfo=dt.timezone.utc)
    assert convert("2026-12-01", dt.date, "d", True) == dt.date(2026, 12, 1)
    assert convert(1.5, dt.timedelta, "t", False) == dt.timedelta(seconds=1.5)
    u = uuid.uuid4()
    assert convert(str(u), uuid.UUID, "u", True) == u
    for value, tp, kind in (
        ("yesterday", dt.datetime, "datetime_parsing"),
        ("nope", uuid.UUID, "uuid_parsing"),
        (True, int, "int_parsing"),
    ):
        with pytest.raises(FieldError) as info:
            convert(value, tp, "f", True)
        assert info.value.type == kind and info.value.details()[0]["input"] == value


@dataclasses.dataclass
class Inner:
    n: Annotated[int, annotated_types.Gt(0)]


@dataclasses.dataclass
class Outer:
    name: Annotated[str, Param(min_length=2, pattern="^[a-z]+$")]
    inner: Inner
    tags: list[str] = dataclasses.field(default_factory=list)


def test_dataclass_fields_and_constraints() -> None:
    out = convert({"name": "ab", "inner": {"n": 3}}, Outer, "o", False, ("body",))
    assert out == Outer("ab", Inner(3))
    with pytest.raises(FieldError) as info:
        convert({"name": "A", "inner": {"n": 0}, "x": 1}, Outer, "o", False, ("body",))
    assert [(d["loc"], d["type"]) for d in info.value.details()] == [
        (["body", "name"], "string_too_short"),
        (["body", "inner", "n"], "greater_than"),
        (["body", "x"], "extra_forbidden"),
    ]
    with pytest.raises(FieldError) as info:
        convert({"inner": {}}, Outer, "o", False, ("body",))
    assert {tuple(d["loc"]) for d in info.value.details()} == {
        ("body", "name"),
        ("body", "inner", "n"),
    }


try:
    import pydantic
except ImportError:  # pydantic is optional: sideband[http]
    pydantic = None
else:

    class M(pydantic.BaseModel):
        a: int = pydantic.Field(ge=1)


@pytest.mark.skipif(pydantic is None, reason="pydantic not installed")
def test_pydantic_models_when_installed() -> None:
    def handler(self, m: M, q: int = 0):  # noqa: ANN001, ANN202
        pass

    b = Binder(handler)
    assert b.body_param == "m"
    assert b.bind(None, MultiDict([("q", "2")]), {"a": 5}) == {"m": M(a=5), "q": 2}
    with pytest.raises(FieldError) as info:
        b.bind(None, None, {"a": 0})
    assert info.value.details() == [
        {
            "type": "greater_than_equal",
            "loc": ["body", "a"],
            "msg": "Input should be greater than or equal to 1",
            "input": 0,
        }
    ]
