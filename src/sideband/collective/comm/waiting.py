"""Every wait of a group, and the one back-off.

Ranks wait on their own doorbell (a futex word in their control block, rung by peers):
``sched_yield`` for an adaptive budget (:class:`WaitPolicy`), then a futex sleep bounded by a
slice, so the caller re-checks deadline, abort flag and peers between naps. Work no doorbell
announces (a CUDA event, a torch op) is polled with growing pauses; formation (KV records, a
peer's segment or listener appearing) retries with the same back-off.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sideband import config
from sideband.collective.transports import _native
from sideband.collective.transports.control import Control

T = TypeVar("T")

SLICE_S = 0.1  # longest nap between re-checks while nothing arrives
# A sender blocked on a full ring re-checks this often even without a wake-up: receivers wake
# senders only when a ring was at least half full (see ShmChannel.read_into).
SPACE_POLL_S = 0.002
# Polls' pauses: first checks soon (GPU copies finish in microseconds), then every 2 ms.
POLL_MIN_S = 20e-6
POLL_MAX_S = 0.002


# Measured on the 2-core test machine (docs/benchmarks.md), Ray's actors at nice 15. A small op
# costs ~10 us when the awaited peer answers while this rank still waits awake, 50-80 us when
# it has to be woken. Yielding beats plain polling: on a core of its own sched_yield returns at
# once (a poll every ~0.9 us), and when the scheduler has put both ranks on one core (it does, for
# processes that wake each other) it hands the core over, where polling would hold it; it also
# releases the GIL, which a TCP reader thread of this process may need. A peer that answers
# later than any yield (starved by another process) is best awaited asleep, which frees the core;
# neither case lasts, so the budget follows what yielding achieves, and a periodic longer probe
# finds out when it works again.
SPIN_MAX_S = 1e-3  # the most a wait yields before it sleeps
SPIN_MIN_S = 5e-6
PROBE_EVERY = 32  # waits between probes at 8 x the budget (so a small budget can grow back)


class WaitPolicy:
    """How a rank waits for its doorbell: ``sched_yield`` for an adaptive budget, then sleep.
    A wait that yielding ended doubles the budget, one that had to sleep halves it.
    ``polls`` (``SIDEBAND_SPIN``, 0 included): that many plain polls instead, nothing adaptive."""

    __slots__ = ("polls", "budget", "_count")

    def __init__(self, polls: int | None = None) -> None:
        self.polls = polls
        self.budget = SPIN_MAX_S if polls is None else 0.0
        self._count = 0

    def next_budget(self) -> float:
        """The budget of the next wait (8 x larger on a probe)."""
        self._count += 1
        if self._count % PROBE_EVERY == 0:
            return min(SPIN_MAX_S, 8 * self.budget)
        return self.budget

    def waited(self, yielded: bool) -> None:
        """Adapt to a wait that yielding ended (``yielded``) or that had to sleep."""
        if self.polls is not None:
            return
        if yielded:
            self.budget = min(SPIN_MAX_S, self.budget * 2)
        else:
            self.budget = max(SPIN_MIN_S, self.budget / 2)


def spin_default() -> WaitPolicy:
    """A rank's wait policy: adaptive, unless ``SIDEBAND_SPIN`` (a number of polls) is set."""
    env: int | None = config.get("SIDEBAND_SPIN")
    return WaitPolicy(env)


class Backoff:
    """Pauses that double from ``first`` up to ``cap``."""

    __slots__ = ("delay", "cap")

    def __init__(self, first: float = 0.0005, cap: float = 0.02) -> None:
        self.delay = first
        self.cap = cap

    def pause(self) -> None:
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)


def retry(
    fn: Callable[[], T],
    deadline: float,
    errors: tuple[type[BaseException], ...],
    first: float = 0.0005,
    cap: float = 0.02,
) -> T:
    """``fn()``, retried with back-off while it raises one of ``errors``, until ``deadline``
    (then its last error propagates)."""
    backoff = Backoff(first, cap)
    while True:
        try:
            return fn()
        except errors:
            if time.monotonic() > deadline:
                raise
            backoff.pause()


def until(
    get: Callable[[], T | None], deadline: float, on_timeout: Callable[[], BaseException]
) -> T:
    """The first value of ``get()`` that is not None, polled with back-off until ``deadline``."""
    backoff = Backoff()
    while True:
        got = get()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise on_timeout()
        backoff.pause()


def yielded(control: Control, seen: int, policy: WaitPolicy, limit_s: float = SPIN_MAX_S) -> bool:
    """The first phase of a wait: until the doorbell moves past ``seen``, yield for the policy's
    budget (or poll its ``polls``), at most ``limit_s``. True if it moved (the budget grows)."""
    if policy.polls is not None:
        bell = control.doorbell
        return any(bell[0] != seen for _ in range(policy.polls))
    if _native.yield_until(control.doorbell_addr, seen, min(policy.next_budget(), limit_s)):
        policy.waited(True)
        return True
    return False


def nap(control: Control, seen: int, policy: WaitPolicy, limit_s: float) -> None:
    """The second phase: sleep on the doorbell while it reads ``seen``, at most ``limit_s``
    (a wait that got this far shrinks the yield budget)."""
    control.sleep(seen, limit_s)
    if policy.polls is None:
        policy.waited(False)


def doorbell(control: Control, seen: int, policy: WaitPolicy, limit_s: float) -> bool:
    """Until the doorbell moves past ``seen``: :func:`yielded`, then :func:`nap`. True if the
    doorbell moved before the sleep.

    The budget is bounded (:data:`SPIN_MAX_S`) and the callers re-check liveness after every
    return, so no phase hides an abort or a dead peer; an abort rings the doorbell, which ends
    every phase at once."""
    if control.doorbell[0] != seen or yielded(control, seen, policy, limit_s):
        return True
    nap(control, seen, policy, limit_s)
    return False


def poll(done: Callable[[], bool], check: Callable[[], Any]) -> None:
    """Until ``done()``, calling ``check()`` (raises to stop) between growing pauses."""
    delay = POLL_MIN_S
    while not done():
        check()
        time.sleep(delay)
        delay = min(delay * 2, POLL_MAX_S)


def home_cpu(rank: int, local_pids: dict[int, int]) -> int:
    """The CPU this rank's ops run on (its place among the host's ranks, over the CPUs it may
    use, round robin), or -1: no local peer, or ``SIDEBAND_HOME_CPU=0``.

    Ranks that share a core hand it over at every step of an op (a context switch each: 50-65 us
    for an 8 B op between 2 ranks on one core here, against 10-20 us on two), and the kernel puts
    processes that wake each other on one core, for as long as a run. With a CPU each, 20 of 21
    small-op points were steady over three runs instead of 7-10; with 4 ranks on 2 CPUs the pairs
    that share a CPU are fixed, and 15 of 21 were instead of 7.
    """
    if not local_pids or not config.get("SIDEBAND_HOME_CPU"):
        return -1
    cpus = sorted(os.sched_getaffinity(0))
    local = sorted([*local_pids, rank])
    return cpus[local.index(rank) % len(cpus)]
