"""Small collectives through per-rank slots in shared memory (groups whose ranks share a host).

Latency, not bandwidth, is what small ops cost, and most of it is Python work and wake-ups. Here
an op is one round: every rank writes its contribution into its own slot, publishes the slot's
step number, wakes the peers that sleep, and waits until every peer's slot carries the same step;
then it reads what it needs straight from the peers' slots (mapped in every rank). No framing, no
rings, no copies out. Slots alternate, and every op waits for every rank, so a slot is rewritten
only after all ranks have read it. Each slot also carries the op's sequence number and
descriptor: ranks that disagree raise MismatchError, rooted ops included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sideband.collective.transports import shm
from sideband.errors import MismatchError

if TYPE_CHECKING:
    from sideband.collective.comm import Comm

SLOT_BYTES = shm.ARENA_SLOT_BYTES
_SLICE_S = 0.1


class Arena:
    """The arena of one all-local group, as seen by one rank."""

    def __init__(self, comm: Comm) -> None:
        self.comm = comm
        self.rank = comm.rank
        self.n = comm.world_size
        segs = {self.rank: comm.own}
        for p, ch in comm.channels.items():
            segs[p] = ch.peer_seg  # type: ignore[attr-defined]
        self.segs = [segs[p] for p in range(self.n)]
        # Views made once: the hot path allocates nothing.
        self.hdr = [[seg.arena_slot(k)[0] for k in (0, 1)] for seg in self.segs]
        self.data = [[seg.arena_slot(k)[1] for k in (0, 1)] for seg in self.segs]
        self.k = 0
        self._arrays: dict[tuple[int, np.dtype, tuple[int, ...]], list[np.ndarray]] = {}

    def arrays(self, tag: int, desc: int, mine: memoryview, dtype: np.dtype) -> list[np.ndarray]:
        """:meth:`exchange`, with every rank's part viewed as a flat ``dtype`` array.

        Views over the slots are made once per (slot, dtype, sizes) and reused.
        """
        parts = self.exchange(tag, desc, mine)
        key = (self.k % 2, dtype, tuple(len(p) for p in parts))
        arrs = self._arrays.get(key)
        if arrs is None:
            if len(self._arrays) > 64:
                self._arrays.clear()
            arrs = self._arrays[key] = [np.frombuffer(p, dtype) for p in parts]
        return arrs

    def exchange(self, tag: int, desc: int, mine: memoryview) -> list[memoryview]:
        """Publish ``mine`` as this rank's part of op ``tag``; return every rank's part."""
        comm, r = self.comm, self.rank
        self.k = k = self.k + 1
        step = k & 0xFFFFFFFF
        slot = k % 2
        h = self.hdr[r][slot]
        n = len(mine)
        # Unpublish the slot first (seqlock style): a reader that sees a step read the fields
        # that belong to it (see peer_in_other_call).
        h[0] = 0
        if n:
            self.data[r][slot][:n] = mine
        h[1] = tag
        h[2] = desc & 0xFFFFFFFF
        h[3] = desc >> 32
        h[4] = n
        h[0] = step  # published last: a peer that sees the step sees the data
        for p, seg in enumerate(self.segs):
            if p != r:
                seg.ring_doorbell()
        pending = [p for p in range(self.n) if p != r]
        bell = comm.own.doorbell
        while True:
            seen = bell[0]
            still = []
            for p in pending:
                ph = self.hdr[p][slot]
                if ph[0] != step:
                    still.append(p)
                elif ph[1] != tag or ph[2] != h[2] or ph[3] != h[3]:
                    raise MismatchError(
                        f"{comm.describe()}: rank {p} made a different call (op #{ph[1]}, "
                        f"{ph[4]} bytes) than this rank (op #{tag}, {n} bytes): the ranks called "
                        "different operations, or the same one with different sizes, dtypes, "
                        "roots or reduce ops"
                    )
            pending = still
            if not pending:
                break
            comm.waiting_for(pending)
            comm.check(in_arena=True)
            self._check_straddle(tag, desc, pending)
            comm.wait(seen, _SLICE_S)
        return [self.data[p][slot][: self.hdr[p][slot][4]] for p in range(self.n)]

    def _check_straddle(self, tag: int, desc: int, pending: list[int]) -> None:
        """A peer that sent this op's data through a ring, for another call, took the
        large-message path: its buffer differs in size."""
        for p in pending:
            hdr = self.comm.channels[p].peek_header()  # type: ignore[attr-defined]
            if hdr is not None and hdr[0] == 1 and hdr[1] == tag and hdr[3] != desc:  # KIND_COLL
                raise MismatchError(
                    f"{self.comm.describe()}: rank {p} passed a buffer of a different size for "
                    f"op #{tag} (it sent {hdr[2]} bytes through a ring; this rank's buffer is small)"
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
        self._arrays.clear()
        for views in (self.hdr, self.data):
            for pair in views:
                for v in pair:
                    v.release()
