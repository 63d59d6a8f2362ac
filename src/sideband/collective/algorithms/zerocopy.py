"""Zero-copy paths of groups whose ranks all share a host: read peers' buffers directly.

Large ops read a peer's buffer with one copy instead of streaming it through rings (two
copies): a buffer from ``Group.empty`` through its mapping (``transports/memfd.py``), any other
with cross-memory attach (``transports/cma.py``). Ranks exchange only where their buffers lie,
and barriers keep a buffer untouched while peers read it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sideband.collective.algorithms.context import Op, Reducer, bounds
from sideband.collective.algorithms.flat import PIECE_BYTES, barrier
from sideband.collective.transports import cma, memfd

# From this size on, groups whose ranks all share a host read each other's buffers directly.
CMA_BYTES = 1 << 20


def usable(op: Op, nbytes: int) -> bool:
    return op.plan.cma and nbytes >= CMA_BYTES


def share_sources(op: Op, x: np.ndarray, senders: list[int] | None = None) -> list[Any]:
    """Where to read every rank's (or only ``senders``') buffer, through tiny messages.

    A peer's buffer from ``Group.empty`` comes back as a uint8 view of its mapped bytes (read
    with a plain copy); any other as its address, read with cross-memory attach.
    """
    r, n = op.rank, op.n
    mine = np.frombuffer(
        np.array([cma.address(x)], np.uint64).tobytes() + memfd.ref(x), np.uint8
    ).copy()
    got = np.zeros((n, mine.size), np.uint8)
    got[r] = mine
    senders = list(range(n)) if senders is None else senders
    others = [p for p in range(n) if p != r]
    op.exchange(
        [(p, mine) for p in others] if r in senders else [],
        [(p, got[p]) for p in senders if p != r],
    )
    out: list[Any] = []
    for p in range(n):
        ref = got[p, 8:].tobytes()
        if p != r and ref != memfd.NO_REF:
            out.append(op.comm.refs.peer_blocks.view(ref, x.nbytes))
        else:
            out.append(int(got[p, :8].view(np.uint64)[0]))
    return out


def read(op: Op, p: int, src: Any, offset: int, out: np.ndarray) -> None:
    """Copy ``out.nbytes`` bytes of rank ``p``'s buffer, from byte ``offset``, into ``out``."""
    if isinstance(src, np.ndarray):
        np.copyto(out.reshape(-1).view(np.uint8), src[offset : offset + out.nbytes])
    else:
        cma.read(op.comm.local_pids[p], src + offset, out)


def _reduce_piece(
    op: Op,
    srcs: list[Any],
    mine: np.ndarray,
    offset: int,
    acc: np.ndarray,
    tmp: np.ndarray,
    reduce: Reducer,
) -> None:
    """acc = every rank's piece at byte ``offset`` of its buffer (this rank's is ``mine``),
    reduced in rank order: a mapped peer is reduced in place, others are read into ``tmp``."""
    for p in range(op.n):
        if p == op.rank:
            part = mine
        elif isinstance(srcs[p], np.ndarray):
            part = srcs[p][offset : offset + mine.nbytes].view(mine.dtype)
        else:
            part = tmp
            read(op, p, srcs[p], offset, part)
        if p == 0:
            acc[...] = part
        else:
            reduce(acc, part)


def allreduce(op: Op, x: np.ndarray, reduce: Reducer) -> None:
    """Rank r reduces segment r reading every peer's copy of it, then reads the others' results.

    Each segment is reduced once, in rank order, in cache-sized pieces: every rank gets the same
    bits. Barriers separate the phases, because peers read this rank's buffer while it works.
    """
    r, n = op.rank, op.n
    srcs = share_sources(op, x)
    seg = bounds(x.size, n)
    a, b = seg[r]
    item = x.itemsize
    per = max(1, PIECE_BYTES // item)
    acc = op.scratch("acc", per * item).view(x.dtype)
    tmp = op.scratch("piece", per * item).view(x.dtype)
    for lo in range(a, b, per):
        hi = min(lo + per, b)
        m = hi - lo
        _reduce_piece(op, srcs, x[lo:hi], lo * item, acc[:m], tmp[:m], reduce)
        x[lo:hi] = acc[:m]
    barrier(op)
    for k in range(1, n):
        p = (r + k) % n
        pa, pb = seg[p]
        read(op, p, srcs[p], pa * item, x[pa:pb])
    barrier(op)


def reduce_scatter(op: Op, x: np.ndarray, out: np.ndarray, reduce_fn: Reducer) -> None:
    r = op.rank
    srcs = share_sources(op, x)
    item = x.itemsize
    row = out.size
    per = max(1, PIECE_BYTES // item)
    acc = op.scratch("acc", per * item).view(x.dtype)
    tmp = op.scratch("piece", per * item).view(x.dtype)
    for lo in range(0, row, per):
        hi = min(lo + per, row)
        m = hi - lo
        _reduce_piece(op, srcs, x[r, lo:hi], (r * row + lo) * item, acc[:m], tmp[:m], reduce_fn)
        out[lo:hi] = acc[:m]
    barrier(op)


def broadcast(op: Op, x: np.ndarray, root: int) -> None:
    srcs = share_sources(op, x, senders=[root])
    if op.rank != root:
        read(op, root, srcs[root], 0, x)
    barrier(op)  # the root's buffer stays untouched until everyone has read it


def allgather(op: Op, x: np.ndarray, out: np.ndarray) -> None:
    r, n = op.rank, op.n
    srcs = share_sources(op, x)
    for k in range(1, n):
        p = (r + k) % n  # different sources first on each rank: spread the load
        read(op, p, srcs[p], 0, out[p])
    barrier(op)
