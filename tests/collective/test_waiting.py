"""The doorbell wait policy (comm/waiting.py): yield for an adaptive budget, then sleep.

In-process, on a control block in an anonymous mapping: no Ray, no timed assertions.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading

import pytest

from sideband.collective.comm import waiting
from sideband.collective.transports import control


@pytest.fixture
def block():
    mm = mmap.mmap(-1, control.SIZE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    c = control.Control(memoryview(mm), base)
    yield c
    c.release()
    del base
    try:
        mm.close()
    except BufferError:  # a ctypes view may outlive the test; the mapping goes with the process
        pass


def test_budget_doubles_when_polling_succeeds_and_halves_when_the_wait_slept():
    p = waiting.WaitPolicy()
    assert p.budget == waiting.SPIN_MAX_S
    for _ in range(20):
        p.waited(False)
    assert p.budget == waiting.SPIN_MIN_S  # never zero
    p.waited(True)
    assert p.budget == 2 * waiting.SPIN_MIN_S
    for _ in range(20):
        p.waited(True)
    assert p.budget == waiting.SPIN_MAX_S


def test_a_small_budget_is_probed_longer_now_and_then():
    p = waiting.WaitPolicy()
    for _ in range(20):
        p.waited(False)
    budgets = [p.next_budget() for _ in range(waiting.PROBE_EVERY)]
    assert budgets.count(8 * waiting.SPIN_MIN_S) == 1
    assert set(budgets) == {waiting.SPIN_MIN_S, 8 * waiting.SPIN_MIN_S}


def test_polls_override_keeps_a_fixed_count(monkeypatch):
    monkeypatch.setenv("SIDEBAND_SPIN", "7")
    p = waiting.spin_default()
    assert p.polls == 7
    p.waited(True)
    assert p.budget == 0.0


def test_the_default_is_adaptive_and_zero_polls_sleep_at_once(monkeypatch, block):
    monkeypatch.delenv("SIDEBAND_SPIN", raising=False)
    assert waiting.spin_default().polls is None
    monkeypatch.setenv("SIDEBAND_SPIN", "0")
    p = waiting.spin_default()
    assert p.polls == 0
    seen = block.doorbell[0]
    threading.Timer(0.05, block.ring).start()
    while block.doorbell[0] == seen:
        assert not waiting.doorbell(block, seen, p, 60.0)  # no poll, no yield: it slept


def test_a_moved_doorbell_returns_without_sleeping(block):
    seen = block.doorbell[0]
    block.ring()
    assert waiting.doorbell(block, seen, waiting.WaitPolicy(), 5.0)
    assert waiting.doorbell(block, seen, waiting.WaitPolicy(3), 5.0)


def test_a_ring_from_another_thread_ends_the_sleep(block):
    policy = waiting.WaitPolicy()
    policy.budget = 0.0  # straight to the futex sleep
    seen = block.doorbell[0]
    entered = threading.Event()

    def ring_when_asleep() -> None:
        entered.wait(5)
        while not block.sleeping[0]:
            os.sched_yield()
        block.ring()

    t = threading.Thread(target=ring_when_asleep)
    t.start()
    entered.set()
    # A 60 s limit: only the ring can end this wait before the test's own timeout.
    moved_before_sleep = waiting.doorbell(block, seen, policy, 60.0)
    t.join(5)
    assert not moved_before_sleep
    assert block.doorbell[0] != seen


def test_an_abort_ends_a_wait(block):
    seen = block.doorbell[0]
    threading.Timer(0.05, block.set_abort, ("rank 1 failed",)).start()
    while block.doorbell[0] == seen:
        waiting.doorbell(block, seen, waiting.WaitPolicy(), 60.0)
    assert block.abort_reason() == "rank 1 failed"


def test_each_local_rank_gets_its_own_cpu_round_robin(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {5, 2})
    peers = {1: 11, 3: 33}  # ranks 0, 1 and 3 share this host (rank 2 is elsewhere)
    assert [waiting.home_cpu(r, {p: 0 for p in (0, 1, 3) if p != r}) for r in (0, 1, 3)] == [
        2,
        5,
        2,  # three ranks on two CPUs: the third shares the first's
    ]
    assert waiting.home_cpu(0, {}) == -1  # no local peer: nothing to keep apart
    monkeypatch.setenv("SIDEBAND_HOME_CPU", "0")
    assert waiting.home_cpu(0, peers) == -1
