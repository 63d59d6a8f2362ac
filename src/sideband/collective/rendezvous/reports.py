"""Where each rank of a group is, for ranks that cannot read each other's segments.

A rank blocked in an op for over a second publishes what it is in (op, sequence number, since
when) under ``opstate/<group>/<session>/<rank>`` in Ray's KV, and says when that op ended; idle
groups and fast ops write nothing. A rank that times out reads its remote peers' records to say
where everyone is, and ``sideband status`` shows them. Each rank removes its record when it
leaves the group.
"""

from __future__ import annotations

from typing import Any

from sideband import _kv

_PREFIX = "opstate/"


def _key(name: str, session: str, rank: int) -> str:
    return f"{_PREFIX}{name}/{session}/{rank}"


class Reports:
    """One rank's record, and its view of its peers' records."""

    def __init__(self, name: str, session: str, rank: int) -> None:
        self.name, self.session, self.rank = name, session, rank
        self._published = False

    def publish(self, state: dict[str, Any]) -> None:
        try:
            _kv.put(_key(self.name, self.session, self.rank), state)
            self._published = True
        except Exception:
            pass  # Ray unreachable: the report is a courtesy, never a reason to fail

    def peers(self) -> dict[int, dict[str, Any]]:
        try:
            found = _kv.items(f"{_PREFIX}{self.name}/{self.session}/")
        except Exception:
            return {}
        return {int(k.rsplit("/", 1)[1]): v for k, v in found.items() if isinstance(v, dict)}

    def close(self) -> None:
        if self._published:
            try:
                _kv.delete(_key(self.name, self.session, self.rank))
            except Exception:
                pass


def all_groups() -> dict[str, dict[int, dict[str, Any]]]:
    """Every group's published records, by group name and rank (for ``sideband status``)."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for key, state in _kv.items(_PREFIX).items():
        name, _session, rank = key[len(_PREFIX) :].rsplit("/", 2)
        if isinstance(state, dict):
            out.setdefault(name, {})[int(rank)] = state
    return out
