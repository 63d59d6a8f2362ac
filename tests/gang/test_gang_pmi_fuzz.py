"""Property-based tests of the PMI line parser and line buffer (bounded examples and time)."""

from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sideband.gang.pmi_wire import (  # noqa: E402
    MAX_LINE,
    LineBuffer,
    LineError,
    format_line,
    parse_line,
)

_FAST = settings(max_examples=300, deadline=None)
_key = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789-", min_size=1, max_size=20)
# Values as MPICH writes them (business cards: host$port#name$...): printable, no space or "=".
_value = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="="),
    max_size=60,
)


@_FAST
@given(st.binary(max_size=3 * MAX_LINE))
def test_any_bytes_parse_or_raise_line_error(data: bytes) -> None:
    try:
        fields = parse_line(data)
    except LineError:
        return
    assert next(iter(fields)) == "cmd" and fields["cmd"]
    assert len(data) <= MAX_LINE


@_FAST
@given(st.text(alphabet="cmd= abcxyz_019$#", max_size=80))
def test_near_miss_text_parses_or_raises_line_error(text: str) -> None:
    try:
        parse_line(text.encode())
    except LineError:
        pass


@_FAST
@given(_value.filter(bool), st.dictionaries(_key.filter(lambda k: k != "cmd"), _value, max_size=6))
def test_format_then_parse_round_trips(cmd: str, rest: dict[str, str]) -> None:
    fields = {"cmd": cmd, **rest}
    line = format_line(fields)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_line(line[:-1]) == fields


@_FAST
@given(
    st.lists(st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")), max_size=20),
    st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=10),
)
def test_line_buffer_is_chunking_invariant(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    buf, out, pos, i = LineBuffer(), [], 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        out += buf.feed(stream[pos : pos + step])
        assert buf.pending <= MAX_LINE
        pos, i = pos + step, i + 1
    assert out == lines and buf.pending == 0


@_FAST
@given(st.integers(min_value=MAX_LINE + 1, max_value=8 * MAX_LINE), st.integers(1, 4096))
def test_line_buffer_refuses_long_lines_in_bounded_memory(size: int, step: int) -> None:
    buf = LineBuffer()
    with pytest.raises(LineError):
        for pos in range(0, size, step):
            buf.feed(b"y" * min(step, size - pos))
            assert buf.pending <= MAX_LINE
