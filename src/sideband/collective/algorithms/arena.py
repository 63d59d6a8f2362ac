"""Small collectives through per-rank slots in shared memory (groups whose ranks share a host).

Latency, not bandwidth, is what small ops cost, and most of it is Python work and wake-ups. Here
an op is one round: every rank writes its contribution into its own slot, publishes the slot's
step number, wakes the peers that sleep, and waits until every peer's slot carries the same step;
then it reads what it needs straight from the peers' slots (mapped in every rank). No framing, no
rings, no copies out. Slots alternate, and every op waits for every rank, so a slot is rewritten
only after all ranks have read it. Each slot also carries the op's sequence number and
descriptor: ranks that disagree raise MismatchError, rooted ops included. A peer's header is
read from memory that peer writes, so its size is checked against the slot and read once: no
part handed up ever reaches past a slot, whatever a peer wrote.
"""

from __future__ import annotations

import array
import struct
from typing import Any

import numpy as np

from sideband.collective.algorithms.context import Reducer
from sideband.collective.comm.engine import Comm
from sideband.collective.comm.framing import KIND_COLL
from sideband.collective.comm.waiting import SLICE_S
from sideband.collective.transports import _native
from sideband.errors import MismatchError

SLOT_BYTES = 64 << 10  # payload of one slot: ops up to this size go through the arena
_HDR = 64  # per slot: step @0, seq @4, desc @8, nbytes @16
AREA = "arena"
AREA_BYTES = 2 * (_HDR + SLOT_BYTES)  # two alternating slots per rank, in its shared segment
_UNSEEN = 0xFFFFFFFF  # a peer's size before its slot carries this round's step


def _offset(k: int) -> int:
    """Where slot ``k % 2`` starts in a rank's arena area (its header, then its payload)."""
    return (k % 2) * (_HDR + SLOT_BYTES)


def _slot(area: memoryview, k: int) -> tuple[memoryview, memoryview]:
    """(header words, payload bytes) of slot ``k % 2`` of a rank's arena area."""
    off = _offset(k)
    return area[off : off + _HDR].cast("I"), area[off + _HDR : off + _HDR + SLOT_BYTES]


class Arena:
    """The arena of one all-local group, as seen by one rank."""

    def __init__(self, comm: Comm, segments: list[Any]) -> None:
        """``segments``: every rank's shared segment (this rank's own included), in rank order;
        each has an :data:`AREA` of :data:`AREA_BYTES`, and a control block to ring."""
        self.comm = comm
        self.rank = comm.rank
        self.n = comm.world_size
        areas = [seg.area(AREA) for seg in segments]
        # Views made once: the hot path allocates nothing.
        self.hdr = [[_slot(a, k)[0] for k in (0, 1)] for a in areas]
        self.data = [[_slot(a, k)[1] for k in (0, 1)] for a in areas]
        self.k = 0
        # Each part's size in the current op, as checked (filled in by C as peers arrive).
        self._sizes = array.array("I", [0] * self.n)
        self._unseen = array.array("I", [_UNSEEN] * self.n)
        # For C: per rank, the addresses of its two slots (header, data), doorbell and sleeping
        # flag. The views above keep every mapping alive until close().
        addrs = []
        for seg in segments:
            at = seg.base + seg.area_offset(AREA)
            for k in (0, 1):
                addrs += [at + _offset(k), at + _offset(k) + _HDR]
            addrs += [seg.control.doorbell_addr, seg.control.sleeping_addr]
        self._table = struct.pack(f"{len(addrs)}Q", *addrs)
        self._abort = comm.control.abort_addr
        self._inside = False
        self._arrays: dict[tuple[int, np.dtype, tuple[int, ...]], list[np.ndarray]] = {}
        # Every wait of a large op also looks here: a peer that took the arena for the same op
        # passed a buffer of another size.
        comm.live.hooks.append(self._check_other_call)

    def arrays(self, tag: int, desc: int, mine: memoryview, dtype: np.dtype) -> list[np.ndarray]:
        """:meth:`exchange`, with every rank's part viewed as a flat ``dtype`` array.

        Views over the slots are made once per (slot, dtype, sizes) and reused.
        """
        return self._views(self.exchange(tag, desc, mine, len(mine)), dtype)

    def _views(self, parts: list[memoryview], dtype: np.dtype) -> list[np.ndarray]:
        key = (self.k % 2, dtype, tuple(len(p) for p in parts))
        arrs = self._arrays.get(key)
        if arrs is None:
            if len(self._arrays) > 64:
                self._arrays.clear()
            arrs = self._arrays[key] = [np.frombuffer(p, dtype) for p in parts]
        return arrs

    def reduced(
        self,
        tag: int,
        desc: int,
        x: np.ndarray,
        out: np.ndarray | None,
        reduce: Reducer,
        row: int = 0,
    ) -> None:
        """:meth:`exchange` of ``x``, then ``out`` (None: this rank needs no result) = row
        ``row`` (of out's size) of every rank's part, reduced in rank order: by C straight from
        the slots where it has a loop for the reduction, else by ``reduce`` over views."""
        slot = self._round(tag, desc, x.data, x.nbytes)
        if out is None:
            return
        offset = row * out.nbytes
        if _native.reduce_slots(self._table, slot, offset, SLOT_BYTES, reduce.code, out.data):
            return
        views = self._views(self._parts(slot), x.dtype)
        out[...] = views[0][offset // x.itemsize :][: out.size]
        for v in views[1:]:
            reduce(out, v[offset // x.itemsize :][: out.size])

    def gathered(self, tag: int, desc: int, x: np.ndarray, out: np.ndarray | None) -> None:
        """:meth:`exchange` of ``x``, then every rank's part into the rows of ``out`` (n rows of
        x's size; None: this rank needs none), copied by C straight from the slots."""
        slot = self._round(tag, desc, x.data, x.nbytes)
        if out is not None:
            _native.gather_slots(self._table, slot, SLOT_BYTES, out.data)

    def exchange(
        self, tag: int, desc: int, mine: memoryview, expect: int | None = None
    ) -> list[memoryview]:
        """Publish ``mine`` as this rank's part of op ``tag``; return every rank's part.

        ``expect``: the size every part must have (a peer whose slot says otherwise raises).
        The round itself (publish, ring, poll then yield) runs in C (``_native``); a wait that
        outlasts the yield budget comes back here to check liveness and sleep."""
        return self._parts(self._round(tag, desc, mine, -1 if expect is None else expect))

    def _parts(self, slot: int) -> list[memoryview]:
        """Every rank's part in ``slot`` after a round, at its checked size."""
        sizes = self._sizes
        return [self.data[p][slot][: sizes[p]] for p in range(self.n)]

    def _round(self, tag: int, desc: int, mine: memoryview, expect: int) -> int:
        """:meth:`exchange`'s round, with every part ``expect`` bytes (-1: any size); returns
        the slot the parts are in."""
        comm, r = self.comm, self.rank
        self.k = k = self.k + 1
        step = k & 0xFFFFFFFF or 1  # never 0: 0 marks a slot being rewritten
        slot = k % 2
        table = self._table
        _native.publish(table, r, slot, step, tag, desc, mine, SLOT_BYTES)
        sizes = self._sizes
        sizes[:] = self._unseen
        sizes[r] = mine.nbytes
        policy = comm.spin
        self._inside = True
        try:
            budget = 0.0 if policy.polls is not None else policy.next_budget()
            st = self._look(slot, step, tag, desc, expect, budget)
            if budget:
                # Both ways, as every wait does: a budget that only ever shrank (after the long
                # waits of large ops, say) left small ops asleep for good, 10x slower.
                policy.waited(st <= 0)
            while st > 0:
                st = self._sleep_until(tag, desc, step, slot, expect)
        finally:
            self._inside = False
        if st < 0:
            self._mismatch(-st - 1, tag, mine.nbytes, None if expect < 0 else expect)
        return slot

    def _sleep_until(self, tag: int, desc: int, step: int, slot: int, want: int) -> int:
        """The slow path of a round: check liveness, then sleep on the doorbell once."""
        comm, sizes = self.comm, self._sizes
        seen = comm.control.doorbell[0]
        st = self._look(slot, step, tag, desc, want, 0.0)
        if st <= 0:
            return st
        pending = [p for p in range(self.n) if p != self.rank and sizes[p] == _UNSEEN]
        comm.waiting_for(pending)
        comm.check()
        self._check_straddle(tag, desc, pending)
        comm.nap(seen, SLICE_S)  # wait_slots yielded already
        return self._look(slot, step, tag, desc, want, 0.0)

    def _look(self, slot: int, step: int, tag: int, desc: int, want: int, budget: float) -> int:
        """Peers still pending in this round (0: all arrived), or -(1 + p) for a peer out of
        step; polls and yields for ``budget`` first (C, GIL released)."""
        return _native.wait_slots(
            self._table,
            self.rank,
            slot,
            step,
            tag,
            desc,
            want,
            SLOT_BYTES,
            self._sizes,
            self._abort,
            budget,
        )

    def _mismatch(self, p: int, tag: int, n: int, expect: int | None) -> None:
        """Raise for peer ``p``, whose slot showed another call, or a size out of protocol."""
        ph = self.hdr[p][self.k % 2]
        got, h = ph[4], self.hdr[self.rank][self.k % 2]
        describe = self.comm.describe()
        if ph[1] != tag or ph[2] != h[2] or ph[3] != h[3]:
            raise MismatchError(
                f"{describe}: rank {p} made a different call (op #{ph[1]}, {got} bytes) than "
                f"this rank (op #{tag}, {n} bytes): the ranks called different operations, or "
                "the same one with different sizes, dtypes, roots or reduce ops"
            )
        # Same descriptor, so same sizes: the peer's process broke the protocol.
        raise MismatchError(
            f"{describe}: rank {p}'s arena slot claims {got} bytes for op #{tag} (a slot holds "
            f"{SLOT_BYTES}; this rank's part has {n}, {expect} expected) under the same "
            "descriptor: its process wrote the shared arena out of protocol"
        )

    def _check_straddle(self, tag: int, desc: int, pending: list[int]) -> None:
        """A peer that sent this op's data through a ring, for another call, took the
        large-message path: its buffer differs in size."""
        for p in pending:
            hdr = self.comm.peek_header(p)
            if hdr is not None and hdr[0] == KIND_COLL and hdr[1] == tag and hdr[3] != desc:
                raise MismatchError(
                    f"{self.comm.describe()}: rank {p} passed a buffer of a different size for "
                    f"op #{tag} (it sent {hdr[2]} bytes through a ring; this rank's buffer is small)"
                )

    def _check_other_call(self) -> None:
        live = self.comm.live
        if self._inside or live.current_seq is None:
            return
        p = self.peer_in_other_call(live.current_seq & 0xFFFFFFFF, live.current_desc)
        if p is not None:
            raise MismatchError(
                f"{live.describe()}: rank {p} passed a buffer of a different size for this op "
                "(it took the small-message path, this rank the large one)"
            )

    def peer_in_other_call(self, tag: int, desc: int) -> int | None:
        """A peer whose arena shows it in op ``tag`` with another descriptor: it took the
        small-message path for a call that this rank makes with a larger buffer."""
        lo, hi = desc & 0xFFFFFFFF, desc >> 32
        for p in range(self.n):
            if p == self.rank:
                continue
            for slot in (0, 1):
                ph = self.hdr[p][slot]
                step = ph[0]
                fields = (ph[1], ph[2], ph[3])
                if step == 0 or ph[0] != step:
                    continue  # being rewritten: its fields may be torn
                if fields[0] == tag and (fields[1] != lo or fields[2] != hi):
                    return p
        return None

    def close(self) -> None:
        self._table = b""  # C gets no address after this (a late call raises ValueError)
        self._arrays.clear()
        for views in (self.hdr, self.data):
            for pair in views:
                for v in pair:
                    v.release()
