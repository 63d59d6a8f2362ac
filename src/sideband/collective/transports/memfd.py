"""Arrays in memory that peers on the same host can map: ``Group.empty``.

An array from :func:`empty` lives in an anonymous shared file (``memfd``). A peer on the same host
opens it through ``/proc/<pid>/fd/<fd>`` (the same permission that cross-memory attach needs) and
maps it once; from then on an op on such an array moves its bytes with one plain ``memcpy``, the
cost of ``np.copyto``, instead of streaming them through a ring (two copies) or reading them
with ``process_vm_readv`` (slower per byte than a copy between mapped pages).

Nothing is named in ``/dev/shm``: the memory is freed when the last process maps it no more,
whatever happens to its owner, so a SIGKILL leaks nothing.
"""

from __future__ import annotations

import collections
import math
import mmap
import os
import struct
import threading
import weakref
from typing import Any

import numpy as np

from sideband.errors import InvalidArgumentError

# A reference to bytes in a block: owner pid, its fd, the file's inode (fds are reused), the
# offset into the block, the block's size. All zero: the array is not in a shared block.
REF = struct.Struct("<QQQQQ")
NO_REF = bytes(REF.size)

_PAGE = mmap.PAGESIZE
_lock = threading.Lock()
# base address -> (fd, inode, size); an entry lives as long as the block's mmap does.
_blocks: dict[int, tuple[int, int, int]] = {}


def _release(base: int, fd: int) -> None:
    with _lock:
        _blocks.pop(base, None)
    try:
        os.close(fd)
    except OSError:
        pass


def empty(shape: Any, dtype: Any = np.float32) -> np.ndarray:
    """A new uninitialised array in memory that this host's peers can map."""
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise InvalidArgumentError(f"empty(): dtype {dt} holds Python objects; use a numeric dtype")
    dims: Any = (shape,) if np.isscalar(shape) else shape
    shape_t = tuple(int(s) for s in dims)
    if any(s < 0 for s in shape_t):
        raise InvalidArgumentError(f"empty(): negative dimension in shape {shape_t}")
    nbytes = math.prod(shape_t) * dt.itemsize
    size = max(_PAGE, (nbytes + _PAGE - 1) // _PAGE * _PAGE)
    fd = os.memfd_create("sideband", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        raise
    base = np.frombuffer(mm, np.uint8).__array_interface__["data"][0]
    with _lock:
        _blocks[base] = (fd, os.fstat(fd).st_ino, size)
    # The fd stays open while any array still uses the block: peers open the file through it.
    weakref.finalize(mm, _release, base, fd)
    return np.frombuffer(mm, dt, count=math.prod(shape_t)).reshape(shape_t)


def ref(arr: np.ndarray) -> bytes:
    """How a peer finds ``arr``'s bytes (``NO_REF`` if ``arr`` is not in a shared block)."""
    if not _blocks or arr.nbytes == 0:
        return NO_REF
    addr = arr.__array_interface__["data"][0]
    with _lock:
        for base, (fd, ino, size) in _blocks.items():
            if base <= addr and addr + arr.nbytes <= base + size:
                return REF.pack(os.getpid(), fd, ino, addr - base, size)
    return NO_REF


class PeerBlocks:
    """One rank's mappings of its peers' blocks, most recently used kept.

    A mapping keeps the peer's memory alive even after the peer freed its array, so the cache
    is bounded (by count and by bytes), and whenever a new block is mapped, mappings of blocks
    their owners have since freed (the fd is gone or names another file) are dropped.
    """

    def __init__(self, limit: int = 32, limit_bytes: int = 4 << 30) -> None:
        self.limit = limit
        self.limit_bytes = limit_bytes
        self._maps: collections.OrderedDict[tuple[int, int, int], tuple[mmap.mmap, np.ndarray]]
        self._maps = collections.OrderedDict()
        self._bytes = 0

    def view(self, ref_bytes: bytes | memoryview, nbytes: int) -> np.ndarray:
        """The ``nbytes`` bytes a peer's reference points at, as a uint8 array."""
        pid, fd, ino, offset, size = REF.unpack(ref_bytes)
        key = (pid, fd, ino)
        hit = self._maps.get(key)
        if hit is None:
            self._drop_freed()
            try:
                f = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY)
            except OSError as e:
                raise OSError(
                    f"could not open the Group.empty block of the rank with pid {pid} ({e}); "
                    "it exited, or freed the array before the op"
                ) from e
            try:
                if os.fstat(f).st_ino != ino:
                    raise OSError(f"rank with pid {pid} reused fd {fd} for another file")
                # Read-only: peers only ever copy out of each other's blocks.
                mm = mmap.mmap(f, size, prot=mmap.PROT_READ)
            finally:
                os.close(f)
            hit = (mm, np.frombuffer(mm, np.uint8))
            self._maps[key] = hit
            self._bytes += size
            while len(self._maps) > 1 and (
                len(self._maps) > self.limit or self._bytes > self.limit_bytes
            ):
                self._evict(next(iter(self._maps)))
        else:
            self._maps.move_to_end(key)
        if offset + nbytes > size:
            raise OSError(f"reference past the end of a peer's block ({offset}+{nbytes}>{size})")
        return hit[1][offset : offset + nbytes]

    def _drop_freed(self) -> None:
        for key in list(self._maps):
            pid, fd, ino = key
            try:
                alive = os.stat(f"/proc/{pid}/fd/{fd}").st_ino == ino
            except OSError:
                alive = False
            if not alive:
                self._evict(key)

    def _evict(self, key: tuple[int, int, int]) -> None:
        mm, arr = self._maps.pop(key)
        self._bytes -= len(mm)
        del arr
        _close_quietly(mm)

    def close(self) -> None:
        while self._maps:
            self._evict(next(iter(self._maps)))


def _close_quietly(mm: mmap.mmap) -> None:
    try:
        mm.close()
    except BufferError:
        pass  # a view handed out is still alive: the mapping goes when it does
