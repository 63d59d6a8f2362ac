"""JVMs started by gang members: children that die with their member, watched line by line.

Each JVM gets ``PR_SET_PDEATHSIG=SIGKILL`` (Linux): when the member process dies, however it
dies, the kernel kills the JVM too (``spark-class`` ends in ``exec java``, which keeps it). Its
output is read by a thread that spots readiness lines and keeps the last lines for error reports.
"""

from __future__ import annotations

import collections
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl: do not outlive it
            os._exit(1)


class JVM:
    """One JVM process, started now; ``wait_for(marker)`` blocks until a line contains it."""

    def __init__(self, label: str, argv: Sequence[str], env: dict[str, str]) -> None:
        self.label = label
        self.proc = subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self.pid = self.proc.pid
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self._cond = threading.Condition()
        self._seen: list[str] = []
        self.ended = threading.Event()
        threading.Thread(target=self._read, name=f"sideband-{label}-log", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            with self._cond:
                self._tail.append(line)
                if len(self._seen) < 2000:  # readiness lines come early; bound the rest
                    self._seen.append(line)
                self._cond.notify_all()
        self.proc.wait()
        with self._cond:
            self.ended.set()
            self._cond.notify_all()

    def wait_for(self, marker: str, timeout_s: float) -> str:
        """The first line holding ``marker``; RuntimeError if the JVM ends or time runs out."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for line in self._seen:
                    if marker in line:
                        return line
                if self.ended.is_set():
                    raise RuntimeError(f"{self.label} exited ({self.returncode}) {self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{self.label} not ready in {timeout_s:g}s {self.tail()}")
                self._cond.wait(left)

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def tail(self, lines: int = 12) -> str:
        with self._cond:
            return "; last output: " + " | ".join(list(self._tail)[-lines:])

    def terminate(self) -> None:
        """SIGTERM (Spark's daemons stop their executors on it); see :meth:`stop`."""
        if self.proc.poll() is None:
            self.proc.terminate()

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; returns once the JVM is gone."""
        self.terminate()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
