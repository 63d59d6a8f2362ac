"""Request deadlines without a timer per request.

``asyncio.timeout`` schedules and cancels a timer handle for every request, which was the
largest cost of sideband's request path. Instead each server keeps its in-flight handler tasks
with their start times, and one periodic check cancels those past the deadline (so a deadline
fires between ``timeout_s`` and ``timeout_s`` plus a quarter of it, at most one second later).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


class Watchdog:
    """Cancels handler tasks of one server that run longer than ``timeout_s``."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.period = min(1.0, max(0.01, timeout_s / 4))
        self.inflight: dict[asyncio.Task[Any], float] = {}
        self.expired: set[asyncio.Task[Any]] = set()
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self.period, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        deadline = time.perf_counter() - self.timeout_s
        for task, t0 in list(self.inflight.items()):
            if t0 <= deadline and task not in self.expired:
                self.expired.add(task)
                task.cancel()
        self._handle = asyncio.get_running_loop().call_later(self.period, self._tick)

    def timed_out(self, task: asyncio.Task[Any]) -> bool:
        """After a CancelledError: whether this watchdog cancelled ``task`` (then un-cancel it)."""
        if task not in self.expired:
            return False
        self.expired.discard(task)
        if hasattr(task, "uncancel"):
            task.uncancel()
        return True
