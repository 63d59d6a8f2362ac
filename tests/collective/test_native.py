"""The C hot loops (transports/_native.c): waits, doorbells, the arena's round.

In-process, on anonymous mappings and threads: no Ray, no timed assertions. Every wait here has a
budget far above what the test needs, so only the behaviour under test can end it early.
"""

from __future__ import annotations

import array
import ctypes
import mmap
import os
import struct
import threading

import numpy as np
import pytest

from sideband.collective.algorithms import arena
from sideband.collective.runtime import reduce as red
from sideband.collective.transports import _native, control

_HDR = arena._HDR
_SLOT = arena.SLOT_BYTES


class _Ranks:
    """``n`` ranks' control blocks and arena areas in one anonymous mapping."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.per = control.SIZE + arena.AREA_BYTES
        self.mm = mmap.mmap(-1, n * self.per)
        self._pin = ctypes.c_char.from_buffer(self.mm)
        self.base = ctypes.addressof(self._pin)
        addrs = []
        for r in range(n):
            at = self.area(r)
            for k in (0, 1):
                hdr = at + k * (_HDR + _SLOT)
                addrs += [hdr, hdr + _HDR]
            addrs += [self.bell(r), self.bell(r) + 12]
        self.table = struct.pack(f"{len(addrs)}Q", *addrs)

    def bell(self, r: int) -> int:
        return self.base + r * self.per

    def area(self, r: int) -> int:
        return self.bell(r) + control.SIZE

    def abort(self, r: int) -> int:
        return self.bell(r) + 64

    def word(self, addr: int) -> int:
        return ctypes.c_uint32.from_address(addr).value

    def header(self, r: int, slot: int) -> list[int]:
        at = self.area(r) + slot * (_HDR + _SLOT)
        return [ctypes.c_uint32.from_address(at + 4 * i).value for i in range(5)]

    def payload(self, r: int, slot: int, n: int) -> bytes:
        at = self.area(r) + slot * (_HDR + _SLOT) + _HDR
        return ctypes.string_at(at, n)


@pytest.fixture
def ranks():
    made: list[_Ranks] = []

    def make(n: int) -> _Ranks:
        made.append(_Ranks(n))
        return made[-1]

    yield make
    for r in made:
        del r._pin
        r.mm.close()


def _sizes(n: int) -> array.array:
    return array.array("I", [0xFFFFFFFF] * n)


def test_yield_until_sees_a_change_made_by_another_thread(ranks):
    r = ranks(1)
    bell = r.bell(0)
    assert not _native.yield_until(bell, 0, 0.0)  # nothing moved, no budget: at once
    threading.Timer(0.05, _native.ring, (bell, bell + 12)).start()
    # The GIL is released while yielding, or the ringing thread could never run.
    assert _returns(_native.yield_until, bell, 0, 3600.0) == [True]
    assert r.word(bell) == 1


def _returns(fn, *args) -> list:
    """Run ``fn(*args)`` in a thread; what it returned, once it has (a wait left unended by
    what the test does runs for an hour, so the join below fails instead)."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), f"{fn.__name__} did not return"
    return out


def test_ring_wakes_a_sleeping_owner(ranks):
    r = ranks(1)
    bell, sleeping = r.bell(0), r.bell(0) + 12
    ctypes.c_uint32.from_address(sleeping).value = 1
    threading.Timer(0.05, _native.ring, (bell, sleeping)).start()
    _returns(_native.futex_wait, bell, 0, 3600.0)  # only the ring ends this sleep
    assert r.word(bell) == 1


def test_publish_writes_the_slot_and_rings_every_peer(ranks):
    r = ranks(3)
    _native.publish(r.table, 1, 0, 7, 42, (5 << 32) | 9, b"hello", _SLOT)
    assert r.header(1, 0) == [7, 42, 9, 5, 5]
    assert r.payload(1, 0, 5) == b"hello"
    assert [r.word(r.bell(p)) for p in range(3)] == [1, 0, 1]


def test_a_round_completes_when_every_peer_published(ranks):
    r = ranks(3)
    desc = (3 << 32) | 11
    for p in (1, 2):
        _native.publish(r.table, p, 1, 5, 8, desc, bytes([p]) * (4 * p), _SLOT)
    sizes = _sizes(3)
    sizes[0] = 0
    assert _native.wait_slots(r.table, 0, 1, 5, 8, desc, -1, _SLOT, sizes, r.abort(0), 0.0) == 0
    assert list(sizes) == [0, 4, 8]


def test_a_late_peer_is_awaited_and_a_missing_one_reported_as_pending(ranks):
    r = ranks(3)
    sizes = _sizes(3)
    assert _native.wait_slots(r.table, 0, 0, 2, 1, 3, -1, _SLOT, sizes, r.abort(0), 0.0) == 2
    threading.Timer(0.05, _native.publish, (r.table, 1, 0, 2, 1, 3, b"x", _SLOT)).start()
    # One peer arrives while the call yields; the other never does: the budget ends the call.
    assert _native.wait_slots(r.table, 0, 0, 2, 1, 3, -1, _SLOT, sizes, r.abort(0), 0.5) == 1
    assert sizes[1] == 1 and sizes[2] == 0xFFFFFFFF


def test_an_abort_ends_the_yield_phase(ranks):
    r = ranks(2)
    flag = ctypes.c_uint32.from_address(r.abort(0))
    threading.Timer(0.05, setattr, (flag, "value", 1)).start()
    # An hour of budget: only the abort flag ends this call.
    args = (r.table, 0, 0, 1, 1, 3, -1, _SLOT, _sizes(2), r.abort(0), 3600.0)
    assert _returns(_native.wait_slots, *args) == [1]


@pytest.mark.parametrize(
    "seq, desc, nbytes, expect",
    [
        (9, 3, 4, -1),  # another op
        (1, 4, 4, -1),  # another descriptor
        (1, 3, 4, 8),  # not the size every part must have
    ],
)
def test_a_peer_out_of_step_is_named(ranks, seq, desc, nbytes, expect):
    r = ranks(2)
    _native.publish(r.table, 1, 0, 1, seq, desc, b"\0" * nbytes, _SLOT)
    got = _native.wait_slots(r.table, 0, 0, 1, 1, 3, expect, _SLOT, _sizes(2), r.abort(0), 0.0)
    assert got == -(1 + 1)


def test_a_size_claimed_past_the_slot_is_refused(ranks):
    r = ranks(2)
    _native.publish(r.table, 1, 0, 1, 1, 3, b"ab", _SLOT)
    ctypes.c_uint32.from_address(r.area(1) + 16).value = _SLOT + 1  # a hostile size word
    got = _native.wait_slots(r.table, 0, 0, 1, 1, 3, -1, _SLOT, _sizes(2), r.abort(0), 0.0)
    assert got == -2


def test_bad_arguments_raise_instead_of_touching_memory(ranks):
    r = ranks(2)
    with pytest.raises(ValueError):
        _native.yield_until(0, 0, 0.0)  # no address
    with pytest.raises(ValueError):
        _native.ring(r.bell(0) + 1, r.bell(0) + 12)  # unaligned
    with pytest.raises(ValueError):
        _native.publish(b"", 0, 0, 1, 1, 1, b"", _SLOT)  # a closed arena's table
    with pytest.raises(TypeError):
        _native.publish(r.table[:-1], 0, 0, 1, 1, 1, b"", _SLOT)  # not whole ranks
    with pytest.raises(ValueError):
        _native.publish(r.table, 2, 0, 1, 1, 1, b"", _SLOT)  # no such rank
    with pytest.raises(ValueError):
        _native.publish(r.table, 0, 0, 1, 1, 1, b"ab", 1)  # more than a slot holds
    with pytest.raises(ValueError):
        _native.wait_slots(r.table, 0, 0, 1, 1, 1, -1, _SLOT, array.array("I", [0]), r.abort(0), 0)


def _cpu_now() -> int:
    """The CPU this thread runs on, as the kernel reports it (field 39 of its stat)."""
    with open("/proc/thread-self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to move between")
def test_settle_moves_the_thread_home_and_gives_its_mask_back():
    seen: dict[str, object] = {}

    def run() -> None:
        mask = os.sched_getaffinity(0)
        moved, landed = [], []
        for _ in range(3):  # the scheduler may move a thread again at any time: three tries
            away = min(c for c in mask if c != _cpu_now())
            moved.append(_native.settle(away))
            landed.append(_cpu_now() == away)
            if landed[-1]:
                break
        seen.update(mask=mask, after=os.sched_getaffinity(0), moved=moved, landed=landed)
        here = _cpu_now()
        seen["at_home"] = _native.settle(here)  # already there: nothing to do

    t = threading.Thread(target=run)  # its own thread: the test's own mask is never touched
    t.start()
    t.join(30)
    assert seen["moved"][-1] is True and seen["landed"][-1] is True, seen
    assert seen["after"] == seen["mask"]  # the user's mask is what it was
    assert seen["at_home"] is False


def test_settle_leaves_a_cpu_outside_the_mask_alone():
    mask = os.sched_getaffinity(0)
    outside = max(mask) + 1
    assert _native.settle(outside) is False
    assert os.sched_getaffinity(0) == mask
    with pytest.raises(ValueError):
        _native.settle(-1)


def _hard_values(dtype: str, n: int, rank: int) -> np.ndarray:
    """Values where a careless loop differs from numpy: wrap-around, NaN, signed zeros."""
    rng = np.random.default_rng(rank)
    if dtype == "bool":
        return rng.integers(0, 2, n).astype(bool)
    if dtype.startswith("float"):
        v = rng.standard_normal(n).astype(dtype) * 1e30
        v[::7] = np.nan
        v[1::11] = -0.0
        v[2::13] = np.inf
        return v
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("dtype", list(red._C_DTYPES))
def test_reduce_slots_matches_numpy_bit_for_bit(ranks, dtype):
    from sideband import ReduceOp

    n, count = 3, 101
    r = ranks(n)
    parts = [_hard_values(dtype, count, p) for p in range(n)]
    for p, v in enumerate(parts):
        ctypes.memmove(r.area(p) + _HDR, v.ctypes.data, v.nbytes)
    for op in ReduceOp:
        if red._why(op, dtype, "native", False):
            continue  # refused at the edge (AVG of integers, bitwise of floats)
        f = red.reducer(op, dtype)
        assert f.code >= 0, (op, dtype)
        want = parts[0].copy()
        with np.errstate(all="ignore"):
            for v in parts[1:]:
                f(want, v)  # numpy, in rank order
        got = np.empty_like(want)
        assert _native.reduce_slots(r.table, 0, 0, _SLOT, f.code, got.data), (op, dtype)
        assert got.tobytes() == want.tobytes(), (op, dtype)
        # A row further in (reduce_scatter): the same, from that offset on.
        row = np.empty(count // 4, dtype)
        assert _native.reduce_slots(r.table, 0, row.nbytes, _SLOT, f.code, row.data)
        assert row.tobytes() == want[row.size : 2 * row.size].tobytes(), (op, dtype)


def test_reduce_slots_declines_what_it_has_no_loop_for_and_refuses_overreach(ranks):
    r = ranks(2)
    out = np.zeros(4, np.float16)
    assert not _native.reduce_slots(r.table, 0, 0, _SLOT, -1, out.data)  # float16: numpy's
    assert not _native.reduce_slots(r.table, 0, 0, _SLOT, 4 * 16 + 0, out.data)  # float BAND
    assert (out == 0).all()  # declined: untouched
    odd = np.zeros(9, np.uint8)[1:].view(np.float32)  # misaligned for float32
    assert not _native.reduce_slots(r.table, 0, 0, _SLOT, 0, odd.data)
    with pytest.raises(ValueError):
        _native.reduce_slots(r.table, 0, _SLOT - 4, _SLOT, 0, np.zeros(2, np.float32).data)
    with pytest.raises(ValueError):
        _native.reduce_slots(r.table, 2, 0, _SLOT, 0, np.zeros(2, np.float32).data)


def test_gather_slots_copies_every_part_in_rank_order_and_stays_in_the_slot(ranks):
    r = ranks(3)
    for p in range(3):
        ctypes.memmove(r.area(p) + _HDR, bytes([p + 1]) * 5, 5)
    out = bytearray(15)
    _native.gather_slots(r.table, 0, _SLOT, out)
    assert bytes(out) == b"\x01" * 5 + b"\x02" * 5 + b"\x03" * 5
    with pytest.raises(ValueError):
        _native.gather_slots(r.table, 0, _SLOT, bytearray(16))  # not 3 whole parts
    with pytest.raises(ValueError):
        _native.gather_slots(r.table, 0, _SLOT, bytearray(3 * (_SLOT + 1)))  # past a slot
    with pytest.raises(ValueError):
        _native.gather_slots(r.table, 2, _SLOT, out)
