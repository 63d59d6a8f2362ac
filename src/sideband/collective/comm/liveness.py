"""Whether an op may go on: the group's abort flag, lost links, dead local peers, Ray's view of
remote peers, the op's deadline, and any check the layers above hook in (the arena's).

Every wait of ``comm/`` calls :meth:`Liveness.check` between naps, so no wait can hang.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from typing import Any

from sideband.collective.comm import framing
from sideband.collective.transports.base import Channel
from sideband.collective.transports.control import Control
from sideband.errors import CollectiveTimeoutError, PeerLostError

_PID_CHECK_S = 0.5
# Remote peers' liveness comes from Ray (a GCS query), asked only while an op has been blocked
# this long, and then at most this often: idle groups cost nothing, and a lost node is noticed
# within seconds even when its TCP connections never see a FIN.
_RAY_CHECK_AFTER_S = 1.0
_RAY_CHECK_EVERY_S = 1.0

# A rank's board in its segment, read by its local peers when an op times out: the collective
# it last entered (sequence number + 1), whether it is in an op, since when and when its last op
# ended (CLOCK_MONOTONIC, one clock for every process of the host), and the op's label.
BOARD_BYTES = 256
_BOARD = struct.Struct("<IIddI")
_LABEL_AT = 32


class Liveness:
    """The checks of one rank's comm, and what its errors say about where everyone is."""

    def __init__(
        self,
        rank: int,
        label: str,
        channels: dict[int, Channel],
        control: Control,
        roster: list[dict[str, Any]],
        local: list[int],
    ) -> None:
        self.rank = rank
        self.label = label
        self.channels = channels
        self.control = control
        self.roster = roster
        self.local_pids = {p: roster[p]["pid"] for p in local if p != rank}
        self.hooks: list[Callable[[], None]] = []  # extra checks of the layers above
        # Sequence number (+1; 0 = none) of the collective each rank last entered, in the
        # ranks' shared segments: lets a rank that timed out tell which peers never arrived.
        self.entered: memoryview | None = None
        self.peer_entered: dict[int, memoryview] = {}
        self.current_op = ""
        self.current_seq: int | None = None
        self.current_desc = 0
        self.started = 0.0
        self.deadline = float("inf")
        self.waiting_on: list[int] = []
        # Why this op may be stuck, when the engine knows (named on timeouts).
        self.note = ""
        self._next_pid_check = 0.0
        self._next_ray_check = 0.0
        # Typed views into the board (memoryview casts: Any, as typeshed has no float items).
        self._board: Any = None
        self._times: Any = None
        self._in_op: Any = None
        self._peer_boards: dict[int, memoryview] = {}
        self._board_label = ""
        # Where remote peers are: a KV record each, published while blocked (rendezvous/reports).
        self.reports: Any = None
        self._reported = False

    def attach(self, board: memoryview, peers: dict[int, memoryview]) -> None:
        """This rank's board and its local peers' (areas of the segments)."""
        self._board = board
        self.entered = board[0:4].cast("I")
        self._in_op = board[4:8].cast("I")
        self._times = board[8:24].cast("d")
        self._peer_boards = peers
        self.peer_entered = {p: b[0:4].cast("I") for p, b in peers.items()}

    def describe(self) -> str:
        return f"rank {self.rank} of group {self.label!r}: {self.current_op}"

    def who(self, peer: int) -> str:
        e = self.roster[peer]
        actor = f"actor {e['actor_id']}" if e.get("actor_id") else "a non-actor process"
        return f"rank {peer} ({actor}, pid {e['pid']})"

    def begin(self, label: str, seq: int | None, timeout_s: float, desc: int = 0) -> None:
        self.current_op = label
        self.current_seq = seq
        self.current_desc = desc
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s
        self.note = ""
        if self._board is not None:
            if seq is not None:
                self.entered[0] = (seq + 1) & 0xFFFFFFFF  # type: ignore[index]
            self._times[0] = self.started
            if label != self._board_label:  # an op called in a loop writes its label once
                self._board_label = label
                data = label.encode()[: BOARD_BYTES - _LABEL_AT]
                self._board[24:28].cast("I")[0] = len(data)
                self._board[_LABEL_AT : _LABEL_AT + len(data)] = data
            self._in_op[0] = 1

    def end(self) -> float:
        """Close the op bracket; returns the op's duration in seconds."""
        ended = time.monotonic()
        if self._board is not None:
            self._in_op[0] = 0
            self._times[1] = ended
        if self._reported:
            self._reported = False
            self.reports.publish(self._state(False))
        self.current_op = ""
        self.current_seq = None
        self.deadline = float("inf")
        return ended - self.started

    # -- where everyone is ---------------------------------------------------------------------
    def _state(self, in_op: bool) -> dict[str, Any]:
        """This rank's record for its remote peers (wall clock: hosts share no other)."""
        now = time.time()
        return {
            "op": self.current_op,
            "seq": self.current_seq,
            "in_op": in_op,
            "started": now - (time.monotonic() - self.started),
            "ended": None if in_op else now,
            "pid": os.getpid(),
        }

    def _read_board(self, board: memoryview) -> dict[str, Any]:
        entered, in_op, started, ended, n = _BOARD.unpack(bytes(board[: _BOARD.size]))
        label = bytes(board[_LABEL_AT : _LABEL_AT + min(n, BOARD_BYTES - _LABEL_AT)])
        to_wall = time.time() - time.monotonic()
        return {
            "op": label.decode(errors="replace"),
            "seq": entered - 1 if entered else None,
            "in_op": bool(in_op),
            "started": started + to_wall,
            "ended": ended + to_wall if ended else None,
        }

    def whereabouts(self) -> str:
        """One line per rank: the op it is in (or its last one) and for how long."""
        remote = self.reports.peers() if self.reports is not None else {}
        now = time.time()
        lines = []
        for p in range(len(self.roster)):
            if p == self.rank:
                st: dict[str, Any] | None = self._state(True)
            elif p in self._peer_boards:
                st = self._read_board(self._peer_boards[p])
            else:
                st = remote.get(p)
            lines.append(f"rank {p}: {_where(st, now)}")
        return "; ".join(lines)

    # -- checks --------------------------------------------------------------------------------
    def raise_if_aborted(self) -> None:
        reason = self.control.abort_reason()
        if reason is not None:
            cls, msg = framing.abort_error(reason)
            doing = f" in {self.current_op}" if self.current_op else ""
            raise cls(
                f"group {self.label!r} was aborted ({msg}); rank {self.rank}{doing} cannot "
                "continue. Destroy the group and create it again."
            )

    def check(self) -> None:
        """Raise if the op must stop: abort, lost peer, a hook's finding, deadline."""
        self.raise_if_aborted()
        for hook in self.hooks:
            hook()
        now = time.monotonic()
        for p, ch in self.channels.items():
            why = ch.lost()
            # What arrived before a link went is consumed first: a peer that sent its last
            # message and left (it finished the op, then destroyed the group) has not failed
            # this rank's op. Data left unread for good still ends at the deadline.
            if why and not ch.unread():
                self.lost(p, why)
        if now >= self._next_pid_check:
            self._next_pid_check = now + _PID_CHECK_S
            for peer, pid in self.local_pids.items():
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    self.lost(peer, "its process died")
                except PermissionError:
                    pass
        if now - self.started > _RAY_CHECK_AFTER_S and now >= self._next_ray_check:
            self._next_ray_check = now + _RAY_CHECK_EVERY_S
            if self.reports is not None and not self._reported and self.current_op:
                self._reported = True
                self.reports.publish(self._state(True))
            self._check_remote_actors()
        if now > self.deadline:
            late = self._not_arrived()
            deaf = [
                f"{self.who(p)} is not receiving (this rank's send to it found no room for "
                f"{now - ch.send_blocked_since:.1f} s)"
                for p, ch in self.channels.items()
                if ch.send_blocked_since is not None
            ]
            why = " ".join(f"{x}." for x in [*deaf, self.note] if x)
            raise CollectiveTimeoutError(
                f"{self.describe()}: timed out after {now - self.started:.1f} s waiting for "
                f"{', '.join(self.who(p) for p in late) or 'other ranks'}. {why}"
                f"Where every rank is: {self.whereabouts()}. Check that every rank calls the "
                "same operations in the same order, or pass a larger timeout_s."
            )

    def check_peers_now(self) -> None:
        """:meth:`check`, with the local pid check and Ray's view of the remote peers this op
        waits for done now rather than on their schedule (after a failure: was it a peer?)."""
        self._next_pid_check = 0.0
        self.check()
        self._check_remote_actors()

    def lost(self, peer: int, why: str) -> None:
        raise PeerLostError(
            f"{self.describe()}: lost {self.who(peer)}: {why}. Destroy the group and create it "
            "again with live actors."
        )

    def _not_arrived(self) -> list[int]:
        """Ranks that never entered this op (local peers, read from their segments), else the
        peers this rank was still waiting for."""
        if self.entered is not None:
            mine = self.entered[0]
            late = [
                p
                for p, theirs in self.peer_entered.items()
                if 0 < ((mine - theirs[0]) & 0xFFFFFFFF) < 1 << 31
            ]
            if late:
                return sorted(late)
        return sorted(self.waiting_on)

    def _check_remote_actors(self) -> None:
        remote = [p for p in self.waiting_on if p not in self.local_pids]
        ids = {p: self.roster[p].get("actor_id") for p in remote}
        if not any(ids.values()):
            return
        try:
            from ray._private import state
        except ImportError:  # pragma: no cover - ray is a required dependency
            return
        for p, actor_id in ids.items():
            if not actor_id:
                continue
            try:
                info = state.actors(actor_id)
            except Exception:
                return  # Ray itself is unreachable: leave it to the deadline
            if info and info.get("State") == "DEAD":
                self.lost(p, "Ray reports its actor dead (the process or its node is gone)")


def _where(st: dict[str, Any] | None, now: float) -> str:
    if not st or not st.get("op"):
        return "no report (not blocked in an op of this group for over 1 s)"
    seq = f" (op #{st['seq']})" if st.get("seq") is not None else ""
    if st.get("in_op"):
        return f"in {st['op']}{seq} for {now - st['started']:.1f} s"
    ended = st.get("ended")
    ago = f" {now - ended:.1f} s ago" if ended else ""
    return f"not in an op; its last, {st['op']}{seq}, ended{ago}"
