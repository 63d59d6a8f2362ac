"""Handles of operations started with ``async_op=True``."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Generator
from typing import Any

from sideband.errors import CollectiveTimeoutError


class Work:
    """A running collective: ``wait()`` for it from a thread, or ``await`` it from asyncio.

    Operations of one group run in call order on the group's worker thread, so an async actor's
    event loop stays free while they run.
    """

    def __init__(self, future: concurrent.futures.Future, label: str) -> None:
        self._future = future
        self._label = label

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the op finishes and return its result (re-raising its error).

        ``timeout`` bounds only this wait; the op itself runs on under its own deadline.
        """
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

    def result(self) -> Any:
        return self.wait()

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self._future).__await__()

    def __repr__(self) -> str:
        return f"<Work {self._label} {'done' if self.done() else 'running'}>"
