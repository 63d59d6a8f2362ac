"""A per-process pool of shared-memory blocks (``memfd``) for the sideband tensor transport.

Fresh memory is what makes large transfers slow here: the first touch of every page is a fault
and a zeroing, and a 64 MiB copy into fresh pages takes 5-10x longer than one into pages touched
before (docs/objectrefs.md has the figures). So both ends keep their blocks: the producer copies
tensors into a pooled block, the consumer copies them into another pooled block, and a block freed
by either is kept warm for reuse for ``keep_s`` seconds (and at most ``max_free_bytes`` in all),
then handed back to the kernel. :func:`trim` hands every free block back at once.

A block is one anonymous shared file from ``sideband.collective.transports.memfd.empty``;
same-host peers open it through ``/proc/<pid>/fd/<fd>``. A consumer that maps a block as a zero-copy view
holds a shared ``flock`` on it for as long as the view lives; a block so locked is never reused
(only closed: the kernel frees the memory when the view goes), so nobody ever writes into memory
that a view still shows.
"""

from __future__ import annotations

import fcntl
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np

from sideband import config
from sideband.collective.transports import memfd

MIN_BLOCK = 64 << 10


@dataclass
class Block:
    """One memfd block: ``buf`` is its bytes; ``fd``/``ino`` name it for same-host peers."""

    buf: np.ndarray
    fd: int
    ino: int
    size: int
    freed_at: float = 0.0


def size_class(nbytes: int) -> int:
    """Blocks come in powers of two (>= 64 KiB) so that freed blocks fit later requests."""
    return max(MIN_BLOCK, 1 << max(0, int(nbytes) - 1).bit_length())


def locked_by_peer(block: Block) -> bool:
    """Whether a peer's zero-copy view still maps ``block`` (it holds a shared flock on it)."""
    try:
        fcntl.flock(block.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True  # cannot tell: never reuse it
    fcntl.flock(block.fd, fcntl.LOCK_UN)
    return False


class Pool:
    """Free blocks by size class, reused warmest first, trimmed after ``keep_s`` idle seconds."""

    def __init__(self, keep_s: float | None = None, max_free_bytes: int = 1 << 30) -> None:
        self._keep_s = keep_s
        self.max_free_bytes = max_free_bytes
        self._lock = threading.Lock()
        self._free: dict[int, list[Block]] = {}
        self._free_bytes = 0
        self._live = 0
        self._wake = threading.Condition(self._lock)
        self._trimmer: threading.Thread | None = None
        self._inodes: set[int] = set()

    def alloc(self, nbytes: int) -> Block:
        cls = size_class(nbytes)
        with self._lock:
            blocks = self._free.get(cls)
            if blocks:
                b = blocks.pop()
                self._free_bytes -= b.size
                self._live += 1
                return b
        buf = memfd.empty(cls, np.uint8)
        _pid, fd, ino, _off, size = memfd.REF.unpack(memfd.ref(buf))
        with self._lock:
            self._live += 1
            self._inodes.add(ino)
        weakref.finalize(buf, self._forget, ino)
        return Block(buf, fd, ino, size)

    def _forget(self, ino: int) -> None:
        # No lock: this runs when a block's last reference dies, often under self._lock.
        self._inodes.discard(ino)

    @property
    def keep_s(self) -> float:
        """The ``keep_s`` given, else ``SIDEBAND_RDT_KEEP_S`` when asked (2 s by default)."""
        k: float = config.get("SIDEBAND_RDT_KEEP_S") if self._keep_s is None else self._keep_s
        return k

    @keep_s.setter
    def keep_s(self, value: float | None) -> None:
        self._keep_s = value

    def inodes(self) -> set[int]:
        """Inodes of the blocks this process created and still holds (in use or free)."""
        return set(self._inodes)

    def free(self, block: Block) -> None:
        """Give ``block`` back: kept warm for reuse unless a peer's view still maps it."""
        if self.keep_s <= 0 or locked_by_peer(block):
            with self._lock:
                self._live -= 1
            return  # dropping the last reference closes the fd (memfd.empty's finalizer)
        block.freed_at = time.monotonic()
        with self._lock:
            self._live -= 1
            self._free.setdefault(block.size, []).append(block)
            self._free_bytes += block.size
            self._shrink_locked(self.max_free_bytes)
            self._start_trimmer_locked()
            self._wake.notify()

    def trim(self) -> None:
        """Hand every free block back to the kernel now."""
        with self._lock:
            self._shrink_locked(0)

    def stats(self) -> dict[str, int]:
        with self._lock:
            free = sum(len(v) for v in self._free.values())
            return {"live_blocks": self._live, "free_blocks": free, "free_bytes": self._free_bytes}

    def _shrink_locked(self, limit: int) -> None:
        """Close the oldest free blocks until at most ``limit`` bytes stay free."""
        while self._free_bytes > limit and self._drop_oldest_locked(float("inf")):
            pass

    def _drop_oldest_locked(self, freed_before: float) -> bool:
        oldest: list[Block] | None = None
        for blocks in self._free.values():
            if blocks and (oldest is None or blocks[0].freed_at < oldest[0].freed_at):
                oldest = blocks
        if oldest is None or oldest[0].freed_at >= freed_before:
            return False
        self._free_bytes -= oldest.pop(0).size  # its last reference: the fd closes with it
        return True

    def _start_trimmer_locked(self) -> None:
        if self._trimmer is None or not self._trimmer.is_alive():
            self._trimmer = threading.Thread(target=self._trim_loop, name="sideband-rdt-trim")
            self._trimmer.daemon = True
            self._trimmer.start()

    def _trim_loop(self) -> None:
        with self._lock:
            while True:
                while self._drop_oldest_locked(time.monotonic() - self.keep_s):
                    pass
                if not self._free_bytes:
                    self._trimmer = None
                    return
                self._wake.wait(timeout=max(0.05, self.keep_s / 2))


# One pool per process, shared by the producer and consumer sides of every transfer.
POOL = Pool()


def owned(nbytes: int) -> np.ndarray:
    """Bytes of a pooled block, handed back to the pool when the returned array (and every view
    of it) dies: what received tensors and ``sideband.rdt.empty`` live in."""
    if nbytes == 0:
        return np.empty(0, np.uint8)
    block = POOL.alloc(nbytes)
    # A base of its own (not a view of the block's array), so that the finalizer sees exactly
    # the lifetime of the arrays built over it.
    owner = np.frombuffer(block.buf.data[:nbytes], np.uint8)
    weakref.finalize(owner, POOL.free, block)
    return owner
