"""The PMI-1 wire format: ``cmd=NAME key=value ...`` lines, parsed with bounded memory.

Everything here treats its input as hostile: a line is at most :data:`MAX_LINE` bytes, holds
printable ASCII only, and needs a ``cmd``. Anything else raises :class:`LineError` (internal: the
server closes that connection; it never reaches a user).
"""

from __future__ import annotations

#: PMI-1's own limits (keylen_max 256, vallen_max 1024, kvsname_max 256) plus room for the
#: command name: no line MPICH sends is longer.
MAX_LINE = 2048
_KEY_MAX = 256


class LineError(ValueError):
    """A line that is not PMI-1 (internal; the connection that sent it is closed)."""


def parse_line(line: bytes) -> dict[str, str]:
    """``b"cmd=put key=k value=v"`` (without its newline) -> ``{"cmd": "put", ...}``."""
    if len(line) > MAX_LINE:
        raise LineError(f"line of {len(line)} bytes is over {MAX_LINE}")
    if any(b < 0x20 or b > 0x7E for b in line):
        raise LineError("line holds bytes other than printable ASCII")
    fields: dict[str, str] = {}
    last = ""
    for tok in line.decode("ascii").split(" "):
        if not tok:
            continue
        key, eq, value = tok.partition("=")
        if not eq:
            # A word without "=" continues the previous value (abort messages hold spaces).
            if not last:
                raise LineError(f"token {tok[:40]!r} is not key=value")
            fields[last] += " " + tok
            continue
        if not key or len(key) > _KEY_MAX:
            raise LineError(f"token {tok[:40]!r} is not key=value")
        if key in fields:
            raise LineError(f"key {key[:40]!r} given twice")
        fields[key] = value
        last = key
    if not fields.get("cmd") or next(iter(fields)) != "cmd":
        raise LineError("line does not start with cmd=")
    return fields


def format_line(fields: dict[str, str]) -> bytes:
    """The inverse of :func:`parse_line`, newline included."""
    return (" ".join(f"{k}={v}" for k, v in fields.items()) + "\n").encode("ascii")


class LineBuffer:
    """Bytes in, complete lines out; never holds more than :data:`MAX_LINE` bytes of a line."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Lines completed by ``data`` (without newlines); LineError once a line is too long."""
        lines: list[bytes] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if len(self._buf) + nl - start > self.max_line:
                raise LineError(f"line over {self.max_line} bytes")
            self._buf += data[start:nl]
            lines.append(bytes(self._buf))
            self._buf.clear()
            start = nl + 1
        if len(self._buf) + len(data) - start > self.max_line:
            raise LineError(f"unterminated line over {self.max_line} bytes")
        self._buf += data[start:]
        return lines

    @property
    def pending(self) -> int:
        """Bytes held of an unfinished line."""
        return len(self._buf)
