"""Same-host reads of a producer's block: map ``/proc/<pid>/fd/<fd>``, then copy or view.

The consumer opens the producer's memfd through ``/proc`` (Ray's workers on one node run as the
same user, which is all Linux asks), checks the inode (fd numbers are reused), takes a shared
``flock`` and maps it (mappings are cached for a few idle seconds). A copy holds the lock only
while it copies; a zero-copy view holds it for
as long as the view lives, which keeps the producer's pool from ever reusing (and rewriting) the
block under it. Once mapped, the block's memory lives as long as the mapping: a producer that
dies in the middle of a copy does not disturb it.
"""

from __future__ import annotations

import collections
import fcntl
import mmap
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from sideband.errors import PeerLostError
from sideband.rdt.pool import POOL, Pool

# Copies go in pieces so that an abort from Ray is seen within one piece (~ms), not after GiBs.
CHUNK = 16 << 20


def host_id() -> str:
    """Processes with the same id map each other's memfds: one kernel, one pid namespace, and
    the same host as sideband's groups see it (same ``/dev/shm``, same ``SIDEBAND_HOST_KEY``), so
    that hosts split off one machine (the multi-host test bed) talk TCP, as real hosts do."""
    from sideband.collective.rendezvous.topology import host_key

    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    key = host_key()
    return "" if key.startswith("pid-") else f"{key}:{pidns}"


def _open(pid: int, fd: int, ino: int, who: str) -> int:
    try:
        f = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise PeerLostError(
            f"{who} (pid {pid}) exited, or freed the tensors, before they were fetched; "
            "produce them again (a ref whose producer died cannot be read)"
        ) from e
    except PermissionError as e:
        raise PeerLostError(
            f"cannot open the shared memory of {who} (pid {pid}): {e}. Processes of one node "
            "must run as the same user; if they cannot, call sideband.rdt.configure("
            "same_host=False) in the consumer to fetch over TCP"
        ) from e
    if os.fstat(f).st_ino != ino:
        os.close(f)
        raise PeerLostError(
            f"{who} (pid {pid}) no longer holds the tensors' shared memory (its fd {fd} names "
            "another file): the producer exited or freed them before they were fetched"
        )
    fcntl.flock(f, fcntl.LOCK_SH)
    return f


class _Maps:
    """Mappings of producers' blocks, kept for ``keep_s`` idle seconds (pools reuse blocks, and
    a mapping already faulted in copies ~2x faster than a fresh one), bounded in count and bytes.

    An entry keeps its file open, so its inode cannot name another file while cached: a hit on
    (pid, fd, inode) is the very block the metadata names. No lock is held between copies, so a
    cached mapping never stops the producer's pool from reusing the block.
    """

    def __init__(self, pool: Pool, limit: int = 16, limit_bytes: int = 2 << 30) -> None:
        self.pool, self.limit, self.limit_bytes = pool, limit, limit_bytes
        self._lock = threading.Lock()
        self._maps: collections.OrderedDict[tuple[int, int, int], list[Any]]
        self._maps = collections.OrderedDict()
        self._sweeper: threading.Thread | None = None

    def acquire(self, pid: int, fd: int, ino: int, size: int, who: str) -> list[Any]:
        key = (pid, fd, ino)
        with self._lock:
            hit = self._maps.pop(key, None)
        if hit is None:
            f = _open(pid, fd, ino, who)
            try:
                mm = mmap.mmap(f, size, prot=mmap.PROT_READ)
            except BaseException:
                os.close(f)
                raise
            hit = [f, mm, size, 0.0]
        else:
            fcntl.flock(hit[0], fcntl.LOCK_SH)
        return hit

    def release(self, key: tuple[int, int, int], entry: list[Any]) -> None:
        fcntl.flock(entry[0], fcntl.LOCK_UN)
        if self.keep_s <= 0:
            _unmap(entry[1], entry[0])
            return
        entry[3] = time.monotonic()
        with self._lock:
            self._maps[key] = entry
            while len(self._maps) > self.limit or sum(e[2] for e in self._maps.values()) > (
                self.limit_bytes
            ):
                _, old = self._maps.popitem(last=False)
                _unmap(old[1], old[0])
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep, daemon=True)
                self._sweeper.start()

    @property
    def keep_s(self) -> float:
        """The pool's: mappings stay as long as blocks do."""
        k: float = self.pool.keep_s
        return k

    def clear(self, idle_s: float = 0.0) -> None:
        now = time.monotonic()
        with self._lock:
            for key in [k for k, e in self._maps.items() if now - e[3] >= idle_s]:
                e = self._maps.pop(key)
                _unmap(e[1], e[0])

    def _sweep(self) -> None:
        while True:
            time.sleep(max(0.05, self.keep_s / 2))
            self.clear(self.keep_s)
            with self._lock:
                if not self._maps:
                    self._sweeper = None
                    return


MAPS = _Maps(POOL)


def copy_out(
    pid: int,
    fd: int,
    ino: int,
    size: int,
    parts: list[tuple[int, np.ndarray]],
    check: Callable[[], None],
    who: str,
) -> None:
    """Copy ``(offset, dst)`` pieces of the producer's block into each uint8 array ``dst``."""
    entry = MAPS.acquire(pid, fd, ino, size, who)
    try:
        src = np.frombuffer(entry[1], np.uint8)
        for off, dst in parts:
            for lo in range(0, dst.size, CHUNK):
                check()
                hi = min(dst.size, lo + CHUNK)
                np.copyto(dst[lo:hi], src[off + lo : off + hi])
        del src
    except BaseException:
        fcntl.flock(entry[0], fcntl.LOCK_UN)
        _unmap(entry[1], entry[0])
        raise
    MAPS.release((pid, fd, ino), entry)


def _unmap(mm: mmap.mmap, f: int) -> None:
    try:
        mm.close()
    except BufferError:
        pass  # still exported: the mapping goes with its last view
    try:
        os.close(f)
    except OSError:
        pass


def view(pid: int, fd: int, ino: int, size: int, who: str) -> np.ndarray:
    """The producer's whole block as a private, copy-on-write uint8 array (no copy).

    Writes through the array go to private pages of this process; the producer never writes the
    block again while the shared lock (dropped with the array) is held.
    """
    f = _open(pid, fd, ino, who)
    try:
        mm = mmap.mmap(f, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(f)
        raise
    arr = np.frombuffer(mm, np.uint8)
    weakref.finalize(arr, _unmap, mm, f)
    return arr
