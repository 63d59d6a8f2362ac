"""Messages between the ranks of one group, over whichever channel reaches each peer.

This is the one place that frames messages, matches them to what an algorithm expects, checks
them against the caller's operation, stashes early arrivals, and drives sends and receives
concurrently. Its waits are those of ``waiting.py`` and check ``liveness.py`` between naps, so
none can hang. Point-to-point payloads that may travel by reference go through ``byref.py``,
handed in as ``refs``.
"""

from __future__ import annotations

import collections
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from sideband import config
from sideband.collective.comm import waiting
from sideband.collective.comm.framing import HEADER, KIND_COLL, KIND_P2P, KIND_REF, abort_reason
from sideband.collective.comm.liveness import Liveness
from sideband.collective.transports import _native
from sideband.collective.transports.base import Channel
from sideband.collective.transports.control import Control
from sideband.errors import MismatchError

_HDR = HEADER.size


class Send:
    """One message being written to one peer."""

    __slots__ = ("ch", "parts", "done")

    def __init__(self, ch: Channel, header: bytes, payload: memoryview) -> None:
        self.ch = ch
        self.parts = [memoryview(header), payload] if len(payload) else [memoryview(header)]
        self.done = False

    def step(self, check: Callable[[], None]) -> bool:
        n = self.ch.write(self.parts, check)
        if n == 0:
            return False
        parts = self.parts
        while n:
            if n >= len(parts[0]):
                n -= len(parts.pop(0))
            else:
                parts[0] = parts[0][n:]
                n = 0
        self.done = not parts
        return True


class Recv:
    """Reads the next message from one peer that matches (kind, tag), stashing others."""

    __slots__ = (
        "comm",
        "peer",
        "kind",
        "tag",
        "desc",
        "into",
        "done",
        "result",
        "_hdr",
        "_hoff",
        "_dest",
        "_doff",
        "_stash_key",
        "_stash_desc",
        "_ref",
        "_held",
        "via_ref",
    )

    def __init__(
        self, comm: Comm, peer: int, kind: int, tag: int, desc: int, into: memoryview | None
    ) -> None:
        self.comm = comm
        self.peer = peer
        self.kind = kind
        self.tag = tag
        self.desc = desc
        self.into = into
        self.done = False
        self.result: memoryview | None = None
        self._hdr = memoryview(bytearray(_HDR))
        self._hoff = 0
        self._dest: memoryview | None = None
        self._doff = 0
        self._stash_key: tuple[int, int] | None = None
        self._ref = False
        self.via_ref = False
        self._held: tuple[int, int, int, int] | None = None
        stashed = comm.unstash(peer, (kind, tag))
        if stashed:
            desc_got, payload = stashed
            self.accept(desc_got, len(payload))
            if self.into is not None:
                self.into[:] = payload
                self.result = self.into
            else:
                self.result = payload
            self.done = True
        elif kind == KIND_P2P:
            stashed = comm.unstash(peer, (KIND_REF, tag))
            if stashed:
                comm.refs.take(self, *stashed)

    def accept(self, desc: int, nbytes: int) -> None:
        """Check an arriving message against this receive (descriptor, size)."""
        if self.kind == KIND_COLL and desc != self.desc:
            raise MismatchError(
                f"rank {self.peer} sent data for a different call of op #{self.tag} than this rank "
                f"made ({self.comm.describe()}): the ranks called different operations, or the "
                "same operation with different sizes, dtypes, roots or reduce ops"
            )
        if self.kind == KIND_P2P and self.desc and desc and desc != self.desc:
            raise MismatchError(
                f"rank {self.peer} sent a message with tag {self.tag} whose dtype differs from "
                f"the buffer this rank receives into ({self.comm.describe()})"
            )
        if self.into is not None and nbytes != len(self.into):
            raise MismatchError(
                f"rank {self.peer} sent {nbytes} bytes but this rank expected {len(self.into)} "
                f"({self.comm.describe()}): the ranks' buffers differ in size"
            )

    def step(self, check: Callable[[], None]) -> bool:
        ch = self.comm.channels[self.peer]
        progressed = False
        while not self.done:
            if self._dest is None:
                if self._held is not None:
                    if not self._route(*self._held):
                        return progressed
                    self._held = None
                    continue
                n = ch.read_into(self._hdr[self._hoff :])
                if n == 0:
                    return progressed
                progressed = True
                self._hoff += n
                if self._hoff < _HDR:
                    continue
                self._hoff = 0
                header = HEADER.unpack(self._hdr)
                if not self._route(*header):
                    self._held = header
                    return progressed
            dest = self._dest
            assert dest is not None  # routed above
            if self._doff < len(dest):
                n = ch.read_into(dest[self._doff :])
                if n == 0:
                    return progressed
                progressed = True
                self._doff += n
                if self._doff < len(dest):
                    continue
            if self._ref:
                self.comm.refs.take(self, self._stash_desc, dest)
            elif self._stash_key is None:
                self.result = dest
                self.done = True
            else:
                self.comm.stash_put(self.peer, self._stash_key, self._stash_desc, dest)
                self._dest = None
        return progressed

    def _route(self, kind: int, tag: int, nbytes: int, desc: int) -> bool:
        """Where the message whose header was just read goes: False while it must wait (an
        unasked-for message over the peer's stash bound: TCP's flow control, or the ring, then
        holds the sender)."""
        if kind == self.kind and tag == self.tag:
            self.accept(desc, nbytes)
            self._dest = self.into if self.into is not None else memoryview(bytearray(nbytes))
            self._stash_key = None
            self._ref = False
        elif kind == KIND_REF and self.kind == KIND_P2P and tag == self.tag:
            self._dest = memoryview(bytearray(nbytes))
            self._stash_key = None
            self._stash_desc = desc
            self._ref = True
        elif kind == KIND_COLL and self.kind == KIND_COLL:
            raise MismatchError(
                f"rank {self.peer} is in op #{tag} while this rank is in op #{self.tag} "
                f"({self.comm.describe()}): the ranks called different sequences of "
                "operations"
            )
        else:
            comm = self.comm
            held = comm.stashed_bytes[self.peer]
            if held and held + nbytes > comm.stash_limit:
                comm.live.note = (
                    f"{comm.who(self.peer)} sent {held + nbytes} bytes of messages this rank has "
                    f"not asked for yet, over the bound of {comm.stash_limit} "
                    "(SIDEBAND_PEER_BUFFER_BYTES): receive messages in the order they were "
                    "sent, or raise the bound"
                )
                return False
            self._dest = memoryview(bytearray(nbytes))
            self._stash_key = (kind, tag)
            self._stash_desc = desc
        self._doff = 0
        return True


class Comm:
    """Point-to-point messaging of one rank with the rest of its group."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        channels: dict[int, Channel],
        control: Control,
        live: Liveness,
        spin: waiting.WaitPolicy,
        refs: Any = None,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.channels = channels
        self.control = control
        self.live = live
        self.local_pids = live.local_pids
        self.roster = live.roster
        self.label = live.label
        self.spin = spin
        # The by-reference protocol of p2p payloads in shared blocks (comm/byref.py).
        self.refs = refs
        # Messages that arrived before anyone asked for them, per peer and (kind, tag), and
        # their bytes per peer: bounded, so a peer that runs ahead cannot exhaust this rank.
        self.stash: collections.defaultdict[
            int, collections.defaultdict[tuple[int, int], collections.deque]
        ] = collections.defaultdict(lambda: collections.defaultdict(collections.deque))
        self.stashed_bytes: collections.Counter[int] = collections.Counter()
        self.stash_limit: int = config.get("SIDEBAND_PEER_BUFFER_BYTES")
        self.check = live.check
        self.describe = live.describe
        self.who = live.who
        self.raise_if_aborted = live.raise_if_aborted
        self.check_peers_now = live.check_peers_now
        # The op bracket: its label for errors, its deadline, and (collectives) that this rank
        # has entered op ``seq`` (see Liveness.begin / end).
        self.begin = live.begin
        self.end = live.end
        # Before each op: back to this rank's own CPU if the scheduler moved it (a C call
        # bound once; nothing to do when the rank has no CPU of its own).
        home = waiting.home_cpu(rank, self.local_pids)
        self.settle: Callable[[], object] = (
            functools.partial(_native.settle, home) if home >= 0 else _stay
        )
        # Undone in reverse order by close() (segment, arena, helper threads of the layers above).
        self.closers: list[Callable[[], None]] = []

    # -- early arrivals --------------------------------------------------------------------------
    def stash_put(self, peer: int, key: tuple[int, int], desc: int, payload: memoryview) -> None:
        self.stash[peer][key].append((desc, payload))
        self.stashed_bytes[peer] += len(payload)

    def unstash(self, peer: int, key: tuple[int, int]) -> tuple[int, memoryview] | None:
        """The oldest early message from ``peer`` under ``key``, if any."""
        q = self.stash[peer].get(key)
        if not q:
            return None
        desc, payload = q.popleft()
        self.stashed_bytes[peer] -= len(payload)
        return desc, payload

    # -- op bracket and failure ------------------------------------------------------------------

    @property
    def deadline(self) -> float:
        return self.live.deadline

    def abort_reason(self) -> str | None:
        return self.control.abort_reason()

    def abort(self, err: BaseException) -> None:
        """Mark the group broken here and, best effort, on every peer (naming this rank)."""
        msg = str(err)
        if f"rank {self.rank}" not in msg:
            msg = f"rank {self.rank} failed in {self.live.current_op or 'an op'}: {msg}"
        reason = abort_reason(err, msg)
        # This rank's flag first: a helper thread of a pipelined op stops on it, and may hold a
        # channel's send lock that the channel aborts below wait for.
        self.control.set_abort(reason)
        for ch in self.channels.values():
            try:
                ch.abort(reason)
            except Exception:
                pass

    def on_remote_abort(self, reason: str) -> None:
        self.control.set_abort(reason)

    # -- waiting -------------------------------------------------------------------------------
    def waiting_for(self, peers: list[int]) -> None:
        """Note the peers an op outside :meth:`run` waits for (named on timeouts, and asked
        about through Ray when remote)."""
        self.live.waiting_on = peers

    def poll_until(self, done: Callable[[], bool], peers: list[int]) -> None:
        """Until ``done()``, for work that no doorbell announces (a CUDA event, a torch op)."""
        self.waiting_for(peers)
        waiting.poll(done, self.check)

    def wait(self, seen: int, limit_s: float) -> None:
        """Until the doorbell moves past ``seen`` (at most ``limit_s``, never past the op's
        deadline)."""
        waiting.doorbell(self.control, seen, self.spin, self._bounded(limit_s))

    def nap(self, seen: int, limit_s: float) -> None:
        """:meth:`wait` without its yield phase, for a caller that just yielded (and has
        checked liveness since)."""
        waiting.nap(self.control, seen, self.spin, self._bounded(limit_s))

    def _bounded(self, limit_s: float) -> float:
        return min(limit_s, max(0.0, self.deadline - time.monotonic()))

    # -- progress ------------------------------------------------------------------------------
    def run(self, states: Sequence[Send | Recv]) -> None:
        """Drive sends and receives to completion, sleeping on the doorbell when stuck."""
        bell = self.control.doorbell
        check = self.check
        while True:
            seen = bell[0]
            progressed = False
            pending = False
            for st in states:
                if not st.done:
                    progressed |= st.step(check)
                    pending |= not st.done
            if not pending:
                return
            # Yield before checking liveness: a peer that answers within the budget (the
            # common case of a small op) costs no check. An abort rings the doorbell, and
            # the budget is bounded, so the check below comes soon whatever happens.
            if progressed or waiting.yielded(self.control, seen, self.spin):
                continue
            self.live.waiting_on = [
                st.ch.peer if isinstance(st, Send) else st.peer for st in states if not st.done
            ]
            check()
            sending = any(isinstance(st, Send) and not st.done for st in states)
            self.nap(seen, waiting.SPACE_POLL_S if sending else waiting.SLICE_S)

    def send_state(self, peer: int, payload: memoryview, kind: int, tag: int, desc: int) -> Send:
        return Send(self.channels[peer], HEADER.pack(kind, tag, len(payload), desc), payload)

    def recv_state(
        self, peer: int, into: memoryview | None, kind: int, tag: int, desc: int
    ) -> Recv:
        return Recv(self, peer, kind, tag, desc, into)

    def exchange(
        self,
        sends: Sequence[tuple[int, memoryview]],
        recvs: Sequence[tuple[int, memoryview | None]],
        kind: int,
        tag: int,
        desc: int,
    ) -> list[memoryview]:
        """Send and receive concurrently; returns the received payloads in ``recvs`` order."""
        if kind == KIND_P2P and self.refs is not None:
            return self.refs.exchange(self, sends, recvs, tag, desc)
        states: list[Send | Recv] = [self.send_state(p, v, kind, tag, desc) for p, v in sends]
        rstates = [self.recv_state(p, v, kind, tag, desc) for p, v in recvs]
        self.run([*states, *rstates])
        return [s.result for s in rstates]  # type: ignore[misc]

    def peek_header(self, peer: int) -> tuple[int, int, int, int] | None:
        """The next message's (kind, tag, nbytes, desc) from ``peer`` if it has arrived (and the
        transport can show it without consuming it)."""
        raw = self.channels[peer].peek(_HDR)
        return None if raw is None else HEADER.unpack(raw)

    def close(self) -> None:
        if self.refs is not None:
            self.refs.close()
        for ch in self.channels.values():
            try:
                ch.close()
            except Exception:
                pass
        while self.closers:
            try:
                self.closers.pop()()
            except Exception:
                pass


def _stay() -> None:
    """Comm.settle of a rank without a CPU of its own."""
