"""Shared-memory transport between ranks on one host.

Each rank owns one segment in ``/dev/shm`` holding its control block (doorbell, abort flag) and one
single-producer/single-consumer byte ring per local peer that sends to it. A sender copies into
the receiver's ring, publishes the new head and rings the receiver's doorbell (a futex word); the
receiver copies out, publishes the tail and rings the sender's doorbell. Every rank waits on its
own doorbell only, whatever it waits for.

Segments are unlinked as soon as every local peer has mapped them, so nothing is left in
``/dev/shm`` even if a rank is SIGKILLed later: the kernel frees the memory with the last mapping.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import threading
import time
from collections.abc import Callable

from sideband.collective import futex
from sideband.collective.transports.base import Channel
from sideband.collective.transports.tcp import HEADER

_CTRL = 4096  # control block: doorbell @0, entered op @8, sleeping flag @12, own mapping address
# @16 and a probe pattern @24 (for cross-memory attach), abort flag @64, reason length @68,
# reason @128
ARENA_SLOT_BYTES = 8192  # payload of one arena slot: small collectives go through the arena
_ARENA_HDR = 64  # per slot: step @0, seq @4, desc @8, nbytes @16
_ARENA = 2 * (_ARENA_HDR + ARENA_SLOT_BYTES)
# Only x86's total store order makes the skipped wake-up safe (see Segment.ring_doorbell).
_WAKE_ONLY_SLEEPERS = platform.machine().lower() in ("x86_64", "amd64")
_REASON_MAX = 2048
_RING_HDR = 128  # head @0, tail @64: separate cache lines, one writer each
SHM_DIR = "/dev/shm"
PUBLISH_BYTES = int(os.environ.get("SIDEBAND_SHM_PUBLISH_BYTES", str(256 << 10)))
PREFIX = "sideband-"


def default_ring_bytes() -> int:
    return int(os.environ.get("SIDEBAND_SHM_RING_BYTES", str(4 << 20)))


class Segment:
    """One rank's shared segment: control block plus ``nslots`` inbound rings."""

    def __init__(self, name: str, nslots: int, ring_bytes: int, create: bool) -> None:
        self.name = name
        self.path = os.path.join(SHM_DIR, name)
        self.nslots = nslots
        self.ring_bytes = ring_bytes
        size = _CTRL + _ARENA + nslots * (_RING_HDR + ring_bytes)
        if create:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fd, size)
            except OSError:
                os.close(fd)
                os.unlink(self.path)
                raise
        else:
            fd = os.open(self.path, os.O_RDWR)
        try:
            self._mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.buf = memoryview(self._mm)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self._mm))
        self.doorbell = self.buf[0:4].cast("I")
        self.doorbell_addr = self.base
        self._abort = self.buf[64:72].cast("I")
        # Sequence number of the collective this rank last entered (+1; 0 = none): lets a peer
        # that timed out tell which local ranks never arrived.
        self.entered = self.buf[8:12].cast("I")
        self.sleeping = self.buf[12:16].cast("I")
        # Threads of this process asleep on the doorbell (a pipelined op sleeps in two): the
        # flag peers read drops only when the last one wakes.
        self._sleepers = 0
        self._sleepers_lock = threading.Lock()
        self._unlinked = not create

    # -- control block -----------------------------------------------------------------------
    def publish_probe(self) -> None:
        """Write this mapping's address and a random pattern, for peers' cross-memory probe."""
        self.buf[16:24] = self.base.to_bytes(8, "little")
        self.buf[24:32] = os.urandom(8)

    def probe_target(self) -> tuple[int, bytes]:
        """(address in the owner's address space, expected bytes) of the owner's probe pattern."""
        return int.from_bytes(self.buf[16:24], "little") + 24, bytes(self.buf[24:32])

    def ring_doorbell(self) -> None:
        """Tell the owner something changed; wake it only if it sleeps (a wake-up costs ~10 us).

        The owner raises its sleeping flag, re-reads the doorbell, and sleeps on it with
        FUTEX_WAIT, which re-checks the doorbell in the kernel. We bump the doorbell, then read
        the flag. On x86 a store can wait in the store buffer past a later load, but it drains
        long before the owner's FUTEX_WAIT reads the doorbell in the kernel (a syscall later), so
        either we see the flag or the kernel sees the new doorbell. Elsewhere we always wake; and
        every sleep is bounded by a slice, so a lost wake-up could only delay, never hang.
        """
        self.doorbell[0] = (self.doorbell[0] + 1) & 0xFFFFFFFF
        if not _WAKE_ONLY_SLEEPERS or self.sleeping[0]:
            futex.wake(self.doorbell_addr)

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

    def arena_slot(self, k: int) -> tuple[memoryview, memoryview]:
        """(header words, payload bytes) of arena slot ``k % 2``."""
        off = _CTRL + (k % 2) * (_ARENA_HDR + ARENA_SLOT_BYTES)
        return (
            self.buf[off : off + _ARENA_HDR].cast("I"),
            self.buf[off + _ARENA_HDR : off + _ARENA_HDR + ARENA_SLOT_BYTES],
        )

    def set_abort(self, reason: str) -> None:
        if self._abort[0]:
            return
        data = reason.encode()[:_REASON_MAX]
        self.buf[128 : 128 + len(data)] = data
        self._abort[1] = len(data)
        self._abort[0] = 1
        self.ring_doorbell()

    def abort_reason(self) -> str | None:
        if not self._abort[0]:
            return None
        n = self._abort[1]
        return bytes(self.buf[128 : 128 + n]).decode(errors="replace")

    # -- rings ---------------------------------------------------------------------------------
    def ring(self, slot: int) -> tuple[memoryview, memoryview, memoryview]:
        """(head word, tail word, data) of the inbound ring in ``slot``."""
        off = _CTRL + _ARENA + slot * (_RING_HDR + self.ring_bytes)
        head = self.buf[off : off + 4].cast("I")
        tail = self.buf[off + 64 : off + 68].cast("I")
        data = self.buf[off + _RING_HDR : off + _RING_HDR + self.ring_bytes]
        return head, tail, data

    def unlink(self) -> None:
        if not self._unlinked:
            self._unlinked = True
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        self.unlink()
        for v in (self.doorbell, self._abort, self.entered, self.sleeping):
            v.release()
        self.buf.release()
        try:
            self._mm.close()
        except BufferError:
            # A view is still exported (a ring view held by a channel being torn down elsewhere);
            # the mapping goes away with the last reference.
            pass


def open_peer_segment(name: str, nslots: int, ring_bytes: int, deadline: float) -> Segment:
    """Map a local peer's segment, waiting until the peer has created it."""
    delay = 0.0005
    while True:
        try:
            return Segment(name, nslots, ring_bytes, create=False)
        except (FileNotFoundError, ValueError):
            # ValueError: the file exists but is not yet truncated to its size.
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.02)


def remove_stale_segments() -> None:
    """Unlink sideband segments whose creating process is gone (their names carry its pid)."""
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return
    for n in names:
        if not n.startswith(PREFIX):
            continue
        try:
            pid = int(n.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(SHM_DIR, n))
            except OSError:
                pass
        except (ValueError, IndexError, PermissionError):
            continue


class ShmChannel(Channel):
    """Byte streams to a peer through rings in the two ranks' segments."""

    kind = "shm"

    def __init__(
        self,
        peer: int,
        own: Segment,
        own_slot_for_peer: int,
        peer_seg: Segment,
        peer_slot_for_me: int,
    ) -> None:
        super().__init__(peer)
        self.own = own
        self.peer_seg = peer_seg
        self.in_head, self.in_tail, self.in_data = own.ring(own_slot_for_peer)
        self.out_head, self.out_tail, self.out_data = peer_seg.ring(peer_slot_for_me)
        self.cap = own.ring_bytes
        assert peer_seg.ring_bytes == self.cap

    def write(self, parts: list[memoryview], check: Callable[[], None]) -> int:
        head = self.out_head[0]
        # Publish at most PUBLISH_BYTES at a time: the receiver starts copying out while the
        # sender copies in the next piece, so the two copies overlap.
        free = min(self.cap - ((head - self.out_tail[0]) & 0xFFFFFFFF), PUBLISH_BYTES)
        if free <= 0:
            return 0
        cap, out = self.cap, self.out_data
        taken = 0
        for part in parts:
            n = min(free - taken, len(part))
            if n <= 0:
                break
            pos = (head + taken) % cap
            first = min(n, cap - pos)
            out[pos : pos + first] = part[:first]
            if n > first:
                out[0 : n - first] = part[first:n]
            taken += n
        if taken:
            # One publish and one doorbell per call, however many parts (header + payload).
            self.out_head[0] = (head + taken) & 0xFFFFFFFF
            self.peer_seg.ring_doorbell()
        return taken

    def read_into(self, out: memoryview) -> int:
        tail = self.in_tail[0]
        avail = (self.in_head[0] - tail) & 0xFFFFFFFF
        n = min(avail, len(out))
        if n <= 0:
            return 0
        pos = tail % self.cap
        first = min(n, self.cap - pos)
        out[:first] = self.in_data[pos : pos + first]
        if n > first:
            out[first:n] = self.in_data[0 : n - first]
        self.in_tail[0] = (tail + n) & 0xFFFFFFFF
        # A sender waits for space only when the ring was full: wake it only when the ring was
        # at least half full, so small messages cost no wake-up of a peer that is not waiting.
        # (A sender that misses this wake-up re-checks within SPACE_POLL_S: see comm.py.)
        if avail >= self.cap >> 1:
            self.peer_seg.ring_doorbell()
        return n

    def peek_header(self) -> tuple[int, int, int, int] | None:
        """The next message's (kind, tag, nbytes, desc) without consuming it, if it is there."""
        tail = self.in_tail[0]
        if ((self.in_head[0] - tail) & 0xFFFFFFFF) < HEADER.size:
            return None
        pos = tail % self.cap
        first = min(HEADER.size, self.cap - pos)
        raw = bytes(self.in_data[pos : pos + first])
        if first < HEADER.size:
            raw += bytes(self.in_data[0 : HEADER.size - first])
        return HEADER.unpack(raw)

    def abort(self, reason: str) -> None:
        self.peer_seg.set_abort(reason)

    def close(self) -> None:
        for v in (
            self.in_head,
            self.in_tail,
            self.in_data,
            self.out_head,
            self.out_tail,
            self.out_data,
        ):
            v.release()
        self.peer_seg.close()
