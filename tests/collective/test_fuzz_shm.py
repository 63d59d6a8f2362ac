"""Property-based tests of the headers peers write in shared memory (bounded examples and time).

The ring words of ``transports/shm.py`` (head, tail) and the slot headers of
``algorithms/arena.py`` (step, op, descriptor, size) live in memory another process writes. Whatever
it writes, a reader must never copy from outside a ring or a slot, never hand up more than it
holds, and never wait for space or data that cannot come: it raises at once instead.

Longer run (docs/reliability.md quotes its figures)::

    SIDEBAND_FUZZ_EXAMPLES=20000 python -m pytest -q tests/collective/test_fuzz_shm.py
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sideband.collective.algorithms import arena  # noqa: E402
from sideband.collective.comm import waiting  # noqa: E402
from sideband.collective.comm.waiting import WaitPolicy  # noqa: E402
from sideband.collective.transports import control, shm  # noqa: E402
from sideband.errors import CollectiveTimeoutError, MismatchError, PeerLostError  # noqa: E402

# 200 examples a test in the suite; SIDEBAND_FUZZ_EXAMPLES (tests only) sets more for a long run.
_SETTINGS = settings(
    max_examples=int(os.environ.get("SIDEBAND_FUZZ_EXAMPLES", "200")),
    deadline=2000,  # ms per example: a slow one is a hang, not noise
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
_MASK = 0xFFFFFFFF
_CONTROL = control.SIZE


# --- rings -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shm_dir() -> Iterator[str]:
    base = shm.SHM_DIR if os.path.isdir(shm.SHM_DIR) else None
    d = tempfile.mkdtemp(prefix="sbtest-fuzz-", dir=base)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class _Pair:
    """Two ranks' real segments in one process: ``a`` receives from ``b`` through a ring."""

    _n = 0

    def __init__(self, d: str, ring_bytes: int) -> None:
        _Pair._n += 1
        old, shm.SHM_DIR = shm.SHM_DIR, d
        try:
            tag = f"{shm.PREFIX}fuzz{os.getpid()}x{_Pair._n}"
            self.seg_a = shm.Segment(f"{tag}-0", 1, ring_bytes, True, {})
            self.seg_b = shm.Segment(f"{tag}-1", 1, ring_bytes, True, {})
            peer_b = shm.open_segment(f"{tag}-1", 1, ring_bytes, {})
            peer_a = shm.open_segment(f"{tag}-0", 1, ring_bytes, {})
        finally:
            shm.SHM_DIR = old
        self.seg_a.unlink()
        self.seg_b.unlink()
        self.a = shm.ShmChannel(1, self.seg_a, 0, peer_b, 0)  # rank 0: reads what 1 sends
        self.b = shm.ShmChannel(0, self.seg_b, 0, peer_a, 0)  # rank 1: writes into 0's ring

    def close(self) -> None:
        self.a.close()
        self.b.close()
        self.seg_a.close()
        self.seg_b.close()


@pytest.fixture(scope="module")
def pair(shm_dir: str) -> Iterator[_Pair]:
    p = _Pair(shm_dir, 4096)
    yield p
    p.close()


@_SETTINGS
@given(head=_u32, tail=_u32, want=st.integers(min_value=0, max_value=3 * 4096))
def test_reader_never_copies_past_the_ring(pair: _Pair, head: int, tail: int, want: int):
    ch, cap = pair.a, pair.a.cap
    ring = bytes((i * 7 + 3) & 0xFF for i in range(cap))
    ch.in_data[:] = ring
    ch.in_head[0], ch.in_tail[0] = head, tail
    used = (head - tail) & _MASK
    out = memoryview(bytearray(want))
    if used > cap:
        with pytest.raises(PeerLostError, match="rank 1"):
            ch.read_into(out)
        with pytest.raises(PeerLostError):
            ch.peek(min(want, 16))
        assert ch.in_tail[0] == tail  # nothing consumed
        return
    k = min(want, cap)
    seen = ch.peek(k)
    n = ch.read_into(out)
    assert n == min(used, want) <= cap
    expect = bytes(ring[(tail + i) % cap] for i in range(n))
    assert bytes(out[:n]) == expect
    assert seen == (expect[:k] if used >= k else None)
    assert ch.in_tail[0] == (tail + n) & _MASK


@_SETTINGS
@given(head=_u32, tail=_u32, sizes=st.lists(st.integers(min_value=0, max_value=9000), max_size=3))
def test_writer_never_overfills_or_waits_on_a_corrupt_tail(pair: _Pair, head, tail, sizes):
    ch, cap = pair.b, pair.b.cap
    ch.out_head[0], ch.out_tail[0] = head, tail
    parts = [memoryview(bytes([i + 1]) * s) for i, s in enumerate(sizes)]
    used = (head - tail) & _MASK
    if used > cap:
        # A tail no receiver could have written: waiting for space would end only at the deadline.
        with pytest.raises(PeerLostError, match="rank 0"):
            ch.write(parts, lambda: None)
        assert ch.out_head[0] == head
        return
    taken = ch.write(parts, lambda: None)
    assert taken == min(cap - used, ch.publish_bytes, sum(sizes))
    assert ch.out_head[0] == (head + taken) & _MASK


@_SETTINGS
@given(
    ring=st.integers(min_value=64, max_value=5000),
    start=st.one_of(_u32, st.integers(min_value=_MASK - 8000, max_value=_MASK)),
    steps=st.lists(
        st.tuples(st.integers(min_value=0, max_value=3000), st.integers(1, 4000)),
        min_size=1,
        max_size=12,
    ),
)
def test_stream_survives_counter_wrap_at_any_ring_size(shm_dir, ring, start, steps):
    # Counters near 2**32 and ring sizes that are not powers of two: the bytes come out in order.
    p = _Pair(shm_dir, ring)
    try:
        for w in (p.a.in_head, p.a.in_tail):
            w[0] = start
        sent, got = bytearray(), bytearray()
        pending = b""
        for size, read in steps:
            # Bytes that differ from their neighbours: a misplaced copy cannot go unnoticed.
            pending += bytes((len(sent) + len(pending) + i) % 251 for i in range(size))
            n = p.b.write([memoryview(pending)], lambda: None)
            sent += pending[:n]
            pending = pending[n:]
            out = memoryview(bytearray(read))
            got += out[: p.a.read_into(out)]
        while len(got) < len(sent) + len(pending):
            n = p.b.write([memoryview(pending)], lambda: None)
            sent += pending[:n]
            pending = pending[n:]
            out = memoryview(bytearray(p.a.cap))
            got += out[: p.a.read_into(out)]
        assert bytes(got) == bytes(sent)
    finally:
        p.close()


# --- arena -----------------------------------------------------------------------------------


class _FakeComm:
    """What the arena uses of a Comm; its deadline comes after a few waits."""

    def __init__(self, n: int, peek: Any) -> None:
        self.rank, self.world_size = 0, n
        self.live = SimpleNamespace(hooks=[], current_seq=None, current_desc=0)
        self._own = _Segment()  # a doorbell and an abort flag, at real addresses (C reads them)
        self.control = SimpleNamespace(
            doorbell=memoryview(self._own.mem)[:4].cast("I"), abort_addr=self._own.base + 64
        )
        self.spin = WaitPolicy(0)  # no yield phase: the fuzzed waits end at the first look
        self.checks = 0
        self._peek = peek

    def describe(self) -> str:
        return "group 'fuzz', rank 0"

    def waiting_for(self, peers: list[int]) -> None:
        pass

    def check(self) -> None:
        self.checks += 1
        if self.checks > 3:
            raise CollectiveTimeoutError("deadline")

    def nap(self, seen: int, limit_s: float) -> None:
        pass

    def peek_header(self, peer: int) -> Any:
        return self._peek


class _Segment:
    """What the arena uses of a shm.Segment: a control block, then the arena, in real memory."""

    def __init__(self) -> None:
        self.mem = bytearray(_CONTROL + arena.AREA_BYTES)
        self._pin = ctypes.c_char.from_buffer(self.mem)  # an export: the bytes never move
        self.base = ctypes.addressof(self._pin)
        self.control = SimpleNamespace(doorbell_addr=self.base, sleeping_addr=self.base + 12)

    def area(self, key: str) -> memoryview:
        return memoryview(self.mem)[_CONTROL:]

    def area_offset(self, key: str) -> int:
        return _CONTROL


def _segments(n: int) -> list[Any]:
    return [_Segment() for _ in range(n)]


_header = st.tuples(_u32, _u32, _u32, _u32, _u32)


@_SETTINGS
@given(
    n=st.integers(min_value=2, max_value=4),
    mine=st.integers(min_value=0, max_value=arena.SLOT_BYTES // 8),
    tag=_u32,
    desc=st.integers(min_value=0, max_value=2**64 - 1),
    peers=st.lists(
        st.tuples(_header, st.booleans(), st.booleans(), st.sampled_from([0, 1, 2, 3, 4])),
        min_size=3,
        max_size=3,
    ),
    peek=st.one_of(st.none(), st.tuples(st.integers(0, 8), _u32, _u32, _u32)),
    as_arrays=st.booleans(),
)
def test_arena_never_reads_past_a_slot(n, mine, tag, desc, peers, peek, as_arrays):
    comm = _FakeComm(n, peek)
    segs = _segments(n)
    a = arena.Arena(comm, segs)  # type: ignore[arg-type]
    lo, hi = desc & _MASK, desc >> 32
    for p, ((step, ptag, plo, phi, nb), in_step, same_call, size_kind) in zip(
        range(1, n), peers, strict=False
    ):
        # Hostile words, steered often enough into the cases that get past the first checks.
        nb = [nb, 0, mine * 8, arena.SLOT_BYTES, arena.SLOT_BYTES + 1][size_kind]
        hdr = segs[p].area(arena.AREA)[arena._HDR + arena.SLOT_BYTES :][: arena._HDR].cast("I")
        hdr[0], hdr[1], hdr[2], hdr[3], hdr[4] = (
            1 if in_step else step,
            tag if same_call else ptag,
            lo if same_call else plo,
            hi if same_call else phi,
            nb,
        )
    x = np.arange(mine, dtype=np.float64)
    try:
        if as_arrays:
            parts = a.arrays(tag, desc, memoryview(x).cast("B"), np.dtype(np.float64))
            assert all(len(part) == mine for part in parts)
        else:
            parts = a.exchange(tag, desc, memoryview(x).cast("B"))
            assert all(len(part) <= arena.SLOT_BYTES for part in parts)
            assert bytes(parts[0]) == x.tobytes()
    except (MismatchError, CollectiveTimeoutError):
        pass
    finally:
        a.close()
    assert comm.checks <= 4  # every wait ends at the deadline, never later


def test_rounds_that_end_while_yielding_grow_the_budget_back():
    """The budget follows how waits end, both ways: rounds whose peers arrive within the yield
    phase restore a budget that sleeping waits (those of large ops, say) had shrunk."""
    n = 2
    comm = _FakeComm(n, None)
    comm.spin = WaitPolicy()
    comm.spin.budget = waiting.SPIN_MIN_S
    segs = _segments(n)
    a = arena.Arena(comm, segs)  # type: ignore[arg-type]
    x = np.zeros(1, np.float64)
    try:
        for k in range(1, 12):
            # The peer has published this round already (slot k % 2, step k, same call).
            off = (k % 2) * (arena._HDR + arena.SLOT_BYTES)
            hdr = segs[1].area(arena.AREA)[off : off + arena._HDR].cast("I")
            hdr[1], hdr[2], hdr[3], hdr[4], hdr[0] = 7, 9, 0, 8, k
            a.exchange(7, 9, memoryview(x).cast("B"), 8)
        assert comm.spin.budget == waiting.SPIN_MAX_S
    finally:
        a.close()
