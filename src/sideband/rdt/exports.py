"""The producer's side: copy an object's arrays into a pooled block, keep it until Ray frees it.

The copy is taken when the method returns, so the consumer sees the arrays as they were then,
whatever the producer does to them afterwards (Ray's own transports send the live tensor). Small
objects need no block: their bytes travel inline, in the metadata Ray carries anyway. A single
array that already lives in shared memory (``sideband.rdt.empty``, a tensor this process
received through the transport, ``Group.empty``) is exported where it is, with no copy: live,
as with Ray's own transports.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from sideband.collective.transports import memfd
from sideband.rdt import arrays
from sideband.rdt.pool import POOL, Block

# Objects up to this size travel inside Ray's metadata (no memfd, no mapping).
INLINE_MAX = 16 << 10


@dataclass
class Export:
    """What a consumer needs to find one object's bytes (and the pool block that holds them)."""

    offsets: list[int]
    sizes: list[int]
    block: Block | None = None
    inline: bytes | None = None
    # In place: ``block`` is the array's own bytes at ``shift`` in a shared file that is not
    # the pool's to free; ``keep`` holds the arrays (and so the file) while the ref lives.
    shift: int = 0
    keep: list[Any] | None = None


_lock = threading.Lock()
_exports: dict[str, Export] = {}


def export(obj_id: str, objs: list[Any]) -> tuple[list[tuple[Any, Any]], Export]:
    """Copy ``objs`` out for consumers; returns their (shape, dtype) list and the export."""
    meta, sizes = [], []
    for i, x in enumerate(objs):
        shape, dtype, nbytes = arrays.describe(x, i)
        meta.append((shape, dtype))
        sizes.append(nbytes)
    offsets, total = arrays.layout(sizes)
    if total <= INLINE_MAX:
        ex = Export(offsets, sizes, inline=b"".join(arrays.to_bytes(x) for x in objs))
    elif (shared := _in_place(objs, sizes)) is not None:
        ex = shared
    else:
        block = POOL.alloc(total)
        try:
            for x, off, n in zip(objs, offsets, sizes):
                arrays.copy_into(block.buf[off : off + n], x)
        except BaseException:
            POOL.free(block)
            raise
        ex = Export(offsets, sizes, block=block)
    with _lock:
        # A retried task exports the same id again: the newer copy replaces the older one.
        old = _exports.pop(obj_id, None)
        _exports[obj_id] = ex
    if old is not None and old.block is not None and old.keep is None:
        POOL.free(old.block)
    return meta, ex


def _in_place(objs: list[Any], sizes: list[int]) -> Export | None:
    """The export of one contiguous array that lives in a shared block, with no copy."""
    if len(objs) != 1 or not arrays.is_contiguous(objs[0]):
        return None
    u8 = arrays.u8_of(objs[0])
    ref = memfd.ref(u8)
    if ref == memfd.NO_REF:
        return None
    _pid, fd, ino, off, size = memfd.REF.unpack(ref)
    return Export([0], sizes, block=Block(u8, fd, ino, size), shift=off, keep=list(objs))


def release(obj_id: str) -> None:
    """Ray freed the ref: give the object's block back to the pool."""
    with _lock:
        ex = _exports.pop(obj_id, None)
    if ex is not None and ex.block is not None and ex.keep is None:
        POOL.free(ex.block)


def lookup(obj_id: str) -> Export | None:
    with _lock:
        return _exports.get(obj_id)


def count() -> int:
    with _lock:
        return len(_exports)


_label: str | None = None


def producer_label() -> str:
    """How errors name this process: its actor id, or its pid outside actors."""
    global _label
    if _label is None:
        _label = _make_label()
    return _label


def _make_label() -> str:
    try:
        import ray

        ctx = ray.get_runtime_context()
        actor_id = ctx.get_actor_id()
        if actor_id:
            return f"producer actor {actor_id[:16]}"
    except Exception:
        pass
    return f"producer process {os.getpid()}"
