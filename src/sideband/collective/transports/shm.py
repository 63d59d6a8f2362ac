"""Shared-memory transport between ranks on one host.

Each rank owns one segment in ``/dev/shm`` holding its control block (``control.py``), the areas
the layers above ask for, and one
single-producer/single-consumer byte ring per local peer that sends to it. A sender copies into
the receiver's ring, publishes the new head and rings the receiver's doorbell (a futex word); the
receiver copies out, publishes the tail and rings the sender's doorbell. Every rank waits on its
own doorbell only, whatever it waits for.

Segments are unlinked as soon as every local peer has mapped them, so nothing is left in
``/dev/shm`` even if a rank is SIGKILLed later: the kernel frees the memory with the last mapping.
Until then the creator holds a shared ``flock`` on the segment: a cleaner removes only segments
nobody holds (:func:`remove_stale_segments`), never by the pid in a name (pids get reused, and
containers that share ``/dev/shm`` have pid namespaces of their own).

The ring words are in shared memory that the peer writes, so they are checked, not trusted: a
head or tail that claims more than the ring holds is a broken peer (:class:`PeerLostError`), and
no copy ever leaves the ring.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import stat
import time
from collections.abc import Callable

from sideband import config
from sideband.collective.transports import control
from sideband.collective.transports.base import Channel
from sideband.errors import PeerLostError

_RING_HDR = 128  # head @0, tail @64: separate cache lines, one writer each
SHM_DIR = "/dev/shm"
PREFIX = "sideband-"
# An empty segment this young may be between its creator's open and flock: left alone.
_CREATE_GRACE_S = 60.0


def default_ring_bytes() -> int:
    ring: int = config.get("SIDEBAND_SHM_RING_BYTES")
    return ring


def _round(n: int) -> int:
    return (n + 63) // 64 * 64


class Segment:
    """One rank's shared segment: control block, named areas, then ``nslots`` inbound rings.

    The areas (``{name: bytes}``) are for the layers above (the op a rank is in, the arena's
    slots, the cross-memory probe): the transport only lays them out, identically in every rank.
    """

    def __init__(
        self, name: str, nslots: int, ring_bytes: int, create: bool, areas: dict[str, int]
    ) -> None:
        self.name = name
        self.path = os.path.join(SHM_DIR, name)
        self.nslots = nslots
        # A power of two: ring positions are 32-bit counters modulo the size, which stay
        # continuous across the counters' wrap only then.
        self.ring_bytes = ring_bytes = 1 << max(0, ring_bytes - 1).bit_length()
        self._areas: dict[str, tuple[int, int]] = {}
        off = control.SIZE
        for key, size in areas.items():
            self._areas[key] = (off, size)
            off += _round(size)
        self._rings_at = off
        size = off + nslots * (_RING_HDR + ring_bytes)
        # The creator's fd stays open, locked, until the segment is unlinked: the proof, for
        # remove_stale_segments, that someone still owns it. Locked before it is sized, so a
        # sized segment that nobody holds has lost its creator.
        self._lock_fd = -1
        if create:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                os.ftruncate(fd, size)
                self._mm = mmap.mmap(fd, size)
            except OSError:
                os.close(fd)
                os.unlink(self.path)
                raise
            self._lock_fd = fd
        else:
            fd = os.open(self.path, os.O_RDWR)
            try:
                self._mm = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        self.buf = memoryview(self._mm)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self._mm))
        self.control = control.Control(self.buf[: control.SIZE], self.base)
        self._views: list[memoryview] = []
        self._unlinked = not create

    def area(self, key: str) -> memoryview:
        """The bytes of area ``key``; ``address(key)`` is where they lie in the owner."""
        off, size = self._areas[key]
        v = self.buf[off : off + size]
        self._views.append(v)
        return v

    def area_offset(self, key: str) -> int:
        return self._areas[key][0]

    def ring(self, slot: int) -> tuple[memoryview, memoryview, memoryview]:
        """(head word, tail word, data) of the inbound ring in ``slot``."""
        off = self._rings_at + slot * (_RING_HDR + self.ring_bytes)
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
        if self._lock_fd >= 0:
            # Nothing named is left to protect: the lock (and its fd) can go.
            os.close(self._lock_fd)
            self._lock_fd = -1

    def close(self) -> None:
        self.unlink()
        self.control.release()
        for v in self._views:
            v.release()
        self._views.clear()
        self.control.buf.release()
        self.buf.release()
        try:
            self._mm.close()
        except BufferError:
            # A view is still exported (a ring view held by a channel being torn down elsewhere);
            # the mapping goes away with the last reference.
            pass


def open_segment(name: str, nslots: int, ring_bytes: int, areas: dict[str, int]) -> Segment:
    """Map a local peer's segment. FileNotFoundError / ValueError: not created (or sized) yet."""
    return Segment(name, nslots, ring_bytes, False, areas)


def remove_stale_segments(directory: str | None = None) -> None:
    """Unlink this user's sideband segments in ``directory`` (``/dev/shm``) that nobody holds.

    A live creator holds a shared ``flock`` on its segment, and the kernel drops it when the
    creator exits or is killed, so a segment whose exclusive lock we can take has no owner. Names
    and pids are not trusted: a pid is reused, and means nothing in another pid namespace.
    """
    directory = directory or SHM_DIR
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for n in names:
        if n.startswith(PREFIX):
            _remove_if_unheld(os.path.join(directory, n))


def _remove_if_unheld(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return  # gone already, a link, or not ours to open
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            return
        if st.st_size == 0 and time.time() - st.st_mtime < _CREATE_GRACE_S:
            return  # just created: its creator locks it before it sizes it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # held: its creator is alive, in whatever pid namespace
        try:
            now = os.stat(path, follow_symlinks=False)
        except OSError:
            return
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):  # still the file we locked
            try:
                os.unlink(path)
            except OSError:
                pass
    finally:
        os.close(fd)


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
        self.eager_bytes = self.cap
        # Read when the channel is made (the group forms), not per write.
        self.publish_bytes: int = config.get("SIDEBAND_SHM_PUBLISH_BYTES")
        self.peer_segment = peer_seg
        assert peer_seg.ring_bytes == self.cap

    def _broken(self, what: str, used: int) -> PeerLostError:
        return PeerLostError(
            f"the shared-memory ring between this rank and rank {self.peer} is corrupt: {what} "
            f"says {used} bytes are in it, more than its {self.cap}; a process that maps the "
            "segment wrote it out of protocol. The link is unusable: destroy the group"
        )

    def write(self, parts: list[memoryview], check: Callable[[], None]) -> int:
        cap = self.cap
        head = self.out_head[0]
        used = (head - self.out_tail[0]) & 0xFFFFFFFF
        if used > cap:
            # A tail the receiver never could have written: waiting for space would only end
            # at the deadline.
            raise self._broken("its tail", used)
        # Publish at most publish_bytes at a time: the receiver starts copying out while the
        # sender copies in the next piece, so the two copies overlap.
        free = min(cap - used, self.publish_bytes)
        if free <= 0:
            return 0
        out = self.out_data
        taken = 0
        for part in parts:
            if taken >= free:
                break
            n = min(free - taken, len(part))
            pos = (head + taken) % cap
            first = min(n, cap - pos)
            out[pos : pos + first] = part[:first]
            if n > first:
                out[0 : n - first] = part[first:n]
            taken += n
        if taken:
            # One publish and one doorbell per call, however many parts (header + payload).
            self.out_head[0] = (head + taken) & 0xFFFFFFFF
            self.peer_seg.control.ring()
        return taken

    def read_into(self, out: memoryview) -> int:
        cap = self.cap
        tail = self.in_tail[0]
        avail = (self.in_head[0] - tail) & 0xFFFFFFFF  # each word read once: the peer may race
        if avail > cap:
            raise self._broken("its head", avail)
        n = min(avail, len(out))
        if n <= 0:
            return 0
        pos = tail % cap
        first = min(n, cap - pos)
        data = self.in_data
        out[:first] = data[pos : pos + first]
        if n > first:
            out[first:n] = data[0 : n - first]
        self.in_tail[0] = (tail + n) & 0xFFFFFFFF
        # A sender waits for space only when the ring was full: wake it only when the ring was
        # at least half full, so small messages cost no wake-up of a peer that is not waiting.
        # (A sender that misses this wake-up re-checks within SPACE_POLL_S: see comm/waiting.py.)
        if avail >= cap >> 1:
            self.peer_seg.control.ring()
        return n

    def peek(self, n: int) -> bytes | None:
        tail = self.in_tail[0]
        avail = (self.in_head[0] - tail) & 0xFFFFFFFF
        if avail > self.cap:
            raise self._broken("its head", avail)
        if avail < n:
            return None
        pos = tail % self.cap
        first = min(n, self.cap - pos)
        raw = bytes(self.in_data[pos : pos + first])
        if first < n:
            raw += bytes(self.in_data[0 : n - first])
        return raw

    def abort(self, reason: str) -> None:
        self.peer_seg.control.set_abort(reason)

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
