"""What a forming gang is doing, on a terminal: which step, and how long each took."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

log = logging.getLogger("sideband.gang")


class Progress:
    """Prints ``gang NAME: placement ... 0.41 s`` lines to a terminal (or a given stream);
    always logs the steps at INFO, and keeps their durations in :attr:`times`."""

    def __init__(self, name: str, show: bool | None, stream: TextIO | None = None) -> None:
        self.name = name
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.show = bool(isatty()) if show is None else show
        self.times: dict[str, float] = {}

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        t0 = time.monotonic()
        if self.show:
            print(f"gang {self.name}: {what} ...", end="", file=self.stream, flush=True)
        ok = False
        try:
            yield
            ok = True
        finally:
            dt = time.monotonic() - t0
            self.times[what] = dt
            if self.show:
                print(f" {dt:.2f} s" if ok else f" failed after {dt:.2f} s", file=self.stream)
            log.info("gang %s: %s %s in %.2f s", self.name, what, "done" if ok else "failed", dt)
