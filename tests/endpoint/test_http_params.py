"""Argument binding and conversion (no Ray needed): the rules behind 422 answers."""

from __future__ import annotations

from typing import Literal, Optional

import pytest
from multidict import MultiDict

from sideband.endpoint.params import Binder, FieldError, convert


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
