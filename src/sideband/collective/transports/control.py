"""A rank's control block in shared memory: its doorbell, its sleeping flag and its abort flag.

Every rank sleeps on its own doorbell (a futex word) whatever it waits for; peers ring it when
they publish data, free ring space or abort the group. The block lives at the start of the rank's
shared segment (``shm.Segment``), so local peers reach it through their mapping.
"""

from __future__ import annotations

import threading

from sideband.collective.transports import _native, futex

SIZE = 4096  # doorbell @0, sleeping flag @12, abort flag @64, reason length @68, reason @128
_SLEEPING, _ABORT = 12, 64
_REASON_MAX = 2048


class Control:
    """The control block at ``base`` (the address of ``buf`` in this process)."""

    def __init__(self, buf: memoryview, base: int) -> None:
        self.buf = buf
        self.doorbell = buf[0:4].cast("I")
        self.doorbell_addr = base
        self.sleeping = buf[_SLEEPING : _SLEEPING + 4].cast("I")
        self.sleeping_addr = base + _SLEEPING
        self._abort = buf[_ABORT : _ABORT + 8].cast("I")
        self.abort_addr = base + _ABORT
        # Threads of this process asleep on the doorbell (a pipelined op sleeps in two): the
        # flag peers read drops only when the last one wakes.
        self._sleepers = 0
        self._sleepers_lock = threading.Lock()

    def ring(self) -> None:
        """Tell the owner something changed; wake it only if it sleeps (a wake-up costs ~10 us).

        The owner raises its sleeping flag, re-reads the doorbell, and sleeps on it with
        FUTEX_WAIT, which re-checks the doorbell in the kernel. We bump the doorbell with an
        atomic add (a full barrier), then read the flag: either we see the flag, or the owner's
        FUTEX_WAIT sees the new doorbell and does not sleep. Every sleep is also bounded by a
        slice, so even a lost wake-up could only delay, never hang.
        """
        _native.ring(self.doorbell_addr, self.sleeping_addr)

    def sleep(self, seen: int, timeout_s: float) -> None:
        """Sleep on the own doorbell while it still reads ``seen`` (owner only)."""
        with self._sleepers_lock:
            self._sleepers += 1
            self.sleeping[0] = 1
        try:
            if self.doorbell[0] == seen:
                futex.wait(self.doorbell_addr, seen, timeout_s)
        finally:
            with self._sleepers_lock:
                self._sleepers -= 1
                if not self._sleepers:
                    self.sleeping[0] = 0

    def set_abort(self, reason: str) -> None:
        if self._abort[0]:
            return
        data = reason.encode()[:_REASON_MAX]
        self.buf[128 : 128 + len(data)] = data
        self._abort[1] = len(data)
        self._abort[0] = 1
        self.ring()

    def abort_reason(self) -> str | None:
        if not self._abort[0]:
            return None
        n = self._abort[1]
        return bytes(self.buf[128 : 128 + n]).decode(errors="replace")

    def release(self) -> None:
        for v in (self.doorbell, self.sleeping, self._abort):
            v.release()
