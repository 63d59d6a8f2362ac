"""Property-based tests of the HTTP parameter binder and body parser (issue 13: fuzz the parsers).

Bounded in examples (and no deadline per example, for a loaded 2-core machine); no Ray needed.
Whatever arrives, the binder either returns arguments of the annotated types or raises
FieldError with FastAPI-shaped details, and the body parser either returns JSON or BadBody:
nothing else can escape to become a 500.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import uuid
from typing import Annotated, Literal, Optional

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import MultiDict

from sideband.endpoint.handlers import BadBody, parse_json
from sideband.endpoint.params import Binder, FieldError, Param, convert
from sideband.endpoint.status import dumps

BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Point:
    x: int
    y: float = 0.0
    tag: str | None = None


@dataclasses.dataclass
class Shape:
    name: Annotated[str, Param(min_length=1, max_length=8)]
    points: list[Point]
    color: Color = Color.RED


def handler(
    self,  # noqa: ANN001
    n: Annotated[int, Param(ge=0, le=100)],
    x: float = 0.0,
    flag: bool = False,
    tags: list[int] | None = None,
    when: dt.datetime | None = None,
    ident: uuid.UUID | None = None,
    color: Color = Color.RED,
    level: Level = Level.LOW,
    mode: Literal["a", "b"] = "a",
    extra: Optional[dict[str, int]] = None,  # noqa: UP045
) -> None:
    pass


BINDER = Binder(handler)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
names = st.sampled_from(list(BINDER.params) + ["unknown", "request", ""])


def _check_types(kwargs: dict) -> None:
    assert isinstance(kwargs["n"], int) and 0 <= kwargs["n"] <= 100
    for name, tp in (("x", float), ("flag", bool), ("color", Color), ("level", Level)):
        if name in kwargs:
            assert isinstance(kwargs[name], tp), name
    if kwargs.get("tags") is not None:
        assert all(isinstance(t, int) and not isinstance(t, bool) for t in kwargs["tags"])
    if kwargs.get("when") is not None:
        assert isinstance(kwargs["when"], dt.datetime)
    if "mode" in kwargs:
        assert kwargs["mode"] in ("a", "b")


def _details_ok(e: FieldError) -> None:
    details = e.details()
    assert details, e
    for d in details:
        assert set(d) <= {"type", "loc", "msg", "input"} and isinstance(d["loc"], list)
        assert d["loc"][0] in ("path", "query", "body")
    json.loads(dumps({"detail": details}))  # always serialisable


@BOUNDED
@given(st.dictionaries(names, json_values, max_size=6))
def test_json_body_binds_or_reports(body: dict) -> None:
    try:
        kwargs = BINDER.bind(None, None, body)
    except FieldError as e:
        _details_ok(e)
    else:
        _check_types(kwargs)


@BOUNDED
@given(st.lists(st.tuples(names, st.text(max_size=30)), max_size=8))
def test_query_text_binds_or_reports(pairs: list) -> None:
    try:
        kwargs = BINDER.bind(None, MultiDict(pairs), None)
    except FieldError as e:
        _details_ok(e)
    else:
        _check_types(kwargs)


@BOUNDED
@given(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.datetimes(), st.uuids())
def test_text_round_trips(n: int, x: float, when: dt.datetime, ident: uuid.UUID) -> None:
    assert convert(str(n), int, "n", True) == n
    assert convert(repr(x), float, "x", True) == x
    assert convert(when.isoformat(), dt.datetime, "w", True) == when
    assert convert(str(ident), uuid.UUID, "u", True) == ident
    assert convert(str(int(Level.HIGH)), Level, "l", True) is Level.HIGH


points = st.builds(
    Point,
    x=st.integers(),
    y=st.floats(allow_nan=False, allow_infinity=False),
    tag=st.none() | st.text(max_size=5),
)
shapes = st.builds(
    Shape,
    name=st.text(min_size=1, max_size=8),
    points=st.lists(points, max_size=3),
    color=st.sampled_from(Color),
)


@BOUNDED
@given(shapes)
def test_dataclasses_round_trip_through_json(shape: Shape) -> None:
    def create(self, shape: Shape) -> None:  # noqa: ANN001
        pass

    binder = Binder(create)
    assert binder.body_param == "shape"  # the lone model is the body, as in FastAPI
    assert binder.bind(None, None, json.loads(dumps(shape)))["shape"] == shape


@BOUNDED
@given(json_values)
def test_dataclass_from_any_json(value: object) -> None:
    try:
        out = convert(value, Shape, "shape", False)
    except FieldError as e:
        assert e.details()
    else:
        assert isinstance(out, Shape) and 1 <= len(out.name) <= 8


@BOUNDED
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_body_parser_never_escapes(raw: bytes) -> None:
    try:
        parse_json(raw)
    except BadBody as e:
        assert e.status == 400 and e.detail[0]["type"] == "json_invalid"


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=1_000, max_value=200_000), st.sampled_from("[{"))
def test_any_depth_is_400_never_recursion(depth: int, opener: str) -> None:
    raw = (opener if opener == "[" else '{"a":') * depth
    try:
        parse_json(raw.encode())
    except BadBody as e:
        assert e.status == 400
