"""Every wait of a group, and the one back-off.

Ranks wait on their own doorbell (a futex word in their control block, rung by peers): a short
spin, then a sleep bounded by a slice, so the caller re-checks deadline, abort flag and peers
between naps. Work no doorbell announces (a CUDA event, a torch op) is polled with growing pauses;
formation (KV records, a peer's segment or listener appearing) retries with the same back-off.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sideband import config
from sideband.collective.transports.control import Control

T = TypeVar("T")

SLICE_S = 0.1  # longest nap between re-checks while nothing arrives
# A sender blocked on a full ring re-checks this often even without a wake-up: receivers wake
# senders only when a ring was at least half full (see ShmChannel.read_into).
SPACE_POLL_S = 0.002
# Polls' pauses: first checks soon (GPU copies finish in microseconds), then every 2 ms.
POLL_MIN_S = 20e-6
POLL_MAX_S = 0.002


def spin_default(local_ranks: int) -> int:
    """Polls before sleeping: worth it only while every local rank has a core of its own."""
    env: int | None = config.get("SIDEBAND_SPIN")
    if env is not None:
        return env
    return 200 if local_ranks <= (os.cpu_count() or 1) else 0


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


def doorbell(control: Control, seen: int, spin: int, limit_s: float) -> None:
    """Until the doorbell moves past ``seen``: spin ``spin`` polls, then sleep at most
    ``limit_s``."""
    bell = control.doorbell
    for _ in range(spin):
        if bell[0] != seen:
            return
    control.sleep(seen, limit_s)


def poll(done: Callable[[], bool], check: Callable[[], Any]) -> None:
    """Until ``done()``, calling ``check()`` (raises to stop) between growing pauses."""
    delay = POLL_MIN_S
    while not done():
        check()
        time.sleep(delay)
        delay = min(delay * 2, POLL_MAX_S)
