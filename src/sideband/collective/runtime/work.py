"""Handles of operations started with ``async_op=True``, and the warning that a blocking op (or
wait) stalls the asyncio event loop of the thread it runs on."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
import warnings
from collections.abc import Generator
from types import FrameType
from typing import Any

from sideband.errors import CollectiveTimeoutError


class Work:
    """A running collective: ``wait()`` for it from a thread, or ``await`` it from asyncio.

    Operations of one group run in call order on the group's worker thread, so an async actor's
    event loop stays free while they run. torch's names work too: ``is_completed()``,
    ``exception()``, ``get_future()``.
    """

    def __init__(self, future: concurrent.futures.Future, label: str) -> None:
        self._future = future
        self._label = label
        self._mirror: concurrent.futures.Future | None = None
        self._lock = threading.Lock()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the op finishes and return its result (re-raising its error).

        ``timeout`` bounds only this wait; the op itself runs on under its own deadline.
        """
        if not self._future.done() and first_on_loop("Work.wait"):
            warn_blocking(
                f"Work.wait() on {self._label} blocks this thread, which is running an asyncio "
                "event loop: every other coroutine on it waits too. Use `await work` instead. "
                "Warned once in this process."
            )
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            # CollectiveTimeoutError is a TimeoutError too (the op's own deadline): re-raise it.
            if self._future.done():
                raise
            raise CollectiveTimeoutError(
                f"{self._label} did not finish within {timeout} s of waiting; it keeps running "
                "under the group's timeout_s"
            ) from None

    def done(self) -> bool:
        """Whether the op has finished (successfully or not)."""
        return self._future.done()

    def is_completed(self) -> bool:
        """torch's name of :meth:`done`: whether the op has finished; never blocks."""
        return self._future.done()

    def exception(self) -> BaseException | None:
        """The op's error if it has failed; None if it succeeded or is still running (never
        blocks, as torch's ``Work.exception``)."""
        f = self._future
        if not f.done():
            return None
        if f.cancelled():
            return _cancelled(self._label)
        return f.exception()

    def result(self) -> Any:
        return self.wait()

    def get_future(self) -> concurrent.futures.Future:
        """A :class:`concurrent.futures.Future` that completes with the op (result or error).

        The standard library's future, not torch's: it needs no torch, works from any thread,
        and asyncio awaits it through ``asyncio.wrap_future``. It mirrors the op: cancelling it
        returns False and never withdraws the op, which every rank must run. The same future
        is returned on every call.
        """
        with self._lock:
            if self._mirror is None:
                mirror: concurrent.futures.Future = concurrent.futures.Future()
                mirror.set_running_or_notify_cancel()  # running: cancel() can't succeed
                label = self._label

                def copy(f: concurrent.futures.Future) -> None:
                    if f.cancelled():
                        mirror.set_exception(_cancelled(label))
                    elif f.exception() is not None:
                        mirror.set_exception(f.exception())
                    else:
                        mirror.set_result(f.result())

                self._future.add_done_callback(copy)
                self._mirror = mirror
            return self._mirror

    def __await__(self) -> Generator[Any, None, Any]:
        # Through the mirror: a cancelled await (asyncio.wait_for's timeout, say) would otherwise
        # cancel the op itself while it is queued, and this rank alone would skip it.
        return asyncio.wrap_future(self.get_future()).__await__()

    def __repr__(self) -> str:
        return f"<Work {self._label} {'done' if self.done() else 'running'}>"


def _cancelled(label: str) -> concurrent.futures.CancelledError:
    return concurrent.futures.CancelledError(
        f"{label} never ran: its group was destroyed while it was queued"
    )


# What has been warned about in this process (see ``first_on_loop``).
_warned: set[str] = set()
_warned_lock = threading.Lock()


def first_on_loop(key: str) -> bool:
    """Whether this thread is running an asyncio event loop and ``key`` has not been warned
    about yet in this process (then it counts as warned)."""
    if asyncio._get_running_loop() is None or key in _warned:
        return False  # the common cases cost one C call
    with _warned_lock:
        if key in _warned:
            return False
        _warned.add(key)
        return True


def warn_blocking(message: str) -> None:
    """A RuntimeWarning pointing at the first caller outside sideband (the user's line,
    whichever sideband layers the call went through)."""
    frame: FrameType | None = sys._getframe(1)
    level = 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith("sideband."):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, RuntimeWarning, stacklevel=level)
