"""Collective algorithms, written once against :class:`~sideband.collective.comm.Comm`.

Every function takes an :class:`Op` (the calling rank's view of one operation: its comm, tag,
descriptor and scratch space) and flat, C-contiguous numpy arrays that ``ops.py`` validated.
Small messages use direct exchanges (one round, latency-bound); large ones use rings and chains
cut into pieces that stay in cache. Reductions always combine contributions in the same order on
every rank, so all ranks end with bitwise-identical results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sideband.collective import arena as arena_mod
from sideband.collective import shared
from sideband.collective.arena import Arena
from sideband.collective.comm import KIND_COLL, Comm
from sideband.collective.transports import cma

Reducer = Callable[[np.ndarray, np.ndarray], None]  # reducer(acc, other): acc = acc (op) other

SMALL_BYTES = 64 * 1024
PIECE_BYTES = 1 << 20
# Over sockets every piece costs thread hand-offs and syscalls, and caches matter less.
TCP_PIECE_BYTES = 4 << 20
# From this size on, groups whose ranks all share a host read each other's buffers directly
# (cross-memory attach: one copy) instead of streaming through rings (two copies).
CMA_BYTES = 1 << 20


class Op:
    """One rank's context for one collective operation."""

    __slots__ = ("comm", "tag", "desc", "rank", "n", "scratch")

    def __init__(self, comm: Comm, tag: int, desc: int, scratch: Callable[[str, int], np.ndarray]):
        self.comm = comm
        self.tag = tag
        self.desc = desc
        self.rank = comm.rank
        self.n = comm.world_size
        self.scratch = scratch

    def exchange(
        self, sends: list[tuple[int, Any]], recvs: list[tuple[int, Any]]
    ) -> list[memoryview]:
        return self.comm.exchange(
            [(p, _bytes(v)) for p, v in sends],
            [(p, None if v is None else _bytes(v)) for p, v in recvs],
            KIND_COLL,
            self.tag,
            self.desc,
        )


def _bytes(a: Any) -> memoryview:
    if isinstance(a, np.ndarray):
        return memoryview(a.reshape(-1).view(np.uint8))
    return memoryview(a).cast("B")


def _arena(op: Op, nbytes: int) -> Arena | None:
    """The group's arena if this op is small enough for it (all ranks decide alike)."""
    a = op.comm.arena
    return a if a is not None and nbytes <= arena_mod.SLOT_BYTES else None


def _reduce_rows(srcs: list[np.ndarray], out: np.ndarray, reduce: Reducer) -> None:
    """out = srcs[0] (op) srcs[1] (op) ...: rank order, the same bits on every rank."""
    out[...] = srcs[0]
    for a in srcs[1:]:
        reduce(out, a)


def _cma(op: Op, nbytes: int) -> bool:
    return op.comm.cma and nbytes >= CMA_BYTES


def _share_sources(op: Op, x: np.ndarray, senders: list[int] | None = None) -> list[Any]:
    """Where to read every rank's (or only ``senders``') buffer, through tiny messages.

    A peer's buffer from ``Group.empty`` comes back as a uint8 view of its mapped bytes (read
    with a plain copy); any other as its address, read with cross-memory attach.
    """
    r, n = op.rank, op.n
    mine = np.frombuffer(
        np.array([cma.address(x)], np.uint64).tobytes() + shared.ref(x), np.uint8
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
        if p != r and ref != shared.NO_REF:
            out.append(op.comm.peer_blocks.view(ref, x.nbytes))
        else:
            out.append(int(got[p, :8].view(np.uint64)[0]))
    return out


def _read(op: Op, p: int, src: Any, offset: int, out: np.ndarray) -> None:
    """Copy ``out.nbytes`` bytes of rank ``p``'s buffer, from byte ``offset``, into ``out``."""
    if isinstance(src, np.ndarray):
        np.copyto(out.reshape(-1).view(np.uint8), src[offset : offset + out.nbytes])
    else:
        cma.read(op.comm.local_pids[p], src + offset, out)


def _bounds(size: int, parts: int) -> list[tuple[int, int]]:
    return [(i * size // parts, (i + 1) * size // parts) for i in range(parts)]


def _pieces(lo: int, hi: int, per: int) -> list[tuple[int, int]]:
    return [(a, min(a + per, hi)) for a in range(lo, hi, per)] or [(lo, hi)]


# --- allreduce ---------------------------------------------------------------------------------


def _hier() -> Any:
    from sideband.collective import hierarchical

    return hierarchical


def allreduce(op: Op, x: np.ndarray, reduce: Reducer) -> None:
    if op.n == 1:
        return
    if op.comm.hier is not None:
        _hier().allreduce(op, x, reduce)
        return
    a = _arena(op, x.nbytes)
    if a is not None:
        _reduce_rows(a.arrays(op.tag, op.desc, _bytes(x), x.dtype), x, reduce)
    elif x.nbytes <= SMALL_BYTES or x.size < op.n:
        _allreduce_direct(op, x, reduce)
    elif _cma(op, x.nbytes):
        _allreduce_cma(op, x, reduce)
    else:
        _reduce_scatter_ring_inplace(op, x, reduce)
        _allgather_ring_segments(op, x)


def _allreduce_cma(op: Op, x: np.ndarray, reduce: Reducer) -> None:
    """Rank r reduces segment r reading every peer's copy of it, then reads the others' results.

    Each segment is reduced once, in rank order, in cache-sized pieces: every rank gets the same
    bits. Barriers separate the phases, because peers read this rank's buffer while it works.
    """
    r, n = op.rank, op.n
    srcs = _share_sources(op, x)
    seg = _bounds(x.size, n)
    a, b = seg[r]
    item = x.itemsize
    per = max(1, PIECE_BYTES // item)
    acc = op.scratch("acc", per * item).view(x.dtype)
    tmp = op.scratch("piece", per * item).view(x.dtype)
    for lo in range(a, b, per):
        hi = min(lo + per, b)
        m = hi - lo
        for p in range(n):
            if p == r:
                part = x[lo:hi]
            elif isinstance(srcs[p], np.ndarray):
                part = srcs[p][lo * item : hi * item].view(x.dtype)  # mapped: reduce in place
            else:
                part = tmp[:m]
                _read(op, p, srcs[p], lo * item, part)
            if p == 0:
                acc[:m] = part
            else:
                reduce(acc[:m], part)
        x[lo:hi] = acc[:m]
    barrier(op)
    for k in range(1, n):
        p = (r + k) % n
        pa, pb = seg[p]
        _read(op, p, srcs[p], pa * item, x[pa:pb])
    barrier(op)


def _allreduce_direct(op: Op, x: np.ndarray, reduce: Reducer) -> None:
    r, n = op.rank, op.n
    others = [p for p in range(n) if p != r]
    tmp = op.scratch("direct", x.nbytes * n).view(x.dtype)[: x.size * n].reshape(n, x.size)
    op.exchange([(p, x) for p in others], [(p, tmp[p]) for p in others])
    tmp[r] = x
    # Rank order everywhere: every rank computes the same bits.
    for p in range(1, n):
        reduce(tmp[0], tmp[p])
    x[...] = tmp[0]


def _reduce_scatter_ring_inplace(op: Op, x: np.ndarray, reduce: Reducer) -> None:
    """Ring reduce-scatter in ``x``: rank r ends holding the reduced segment (r + 1) % n."""
    r, n = op.rank, op.n
    right, left = (r + 1) % n, (r - 1) % n
    seg = _bounds(x.size, n)
    chans = op.comm.channels
    tcp = chans[right].kind == "tcp" or chans[left].kind == "tcp"
    per = max(1, (TCP_PIECE_BYTES if tcp else PIECE_BYTES) // x.itemsize)
    tmp = op.scratch("piece", per * x.itemsize).view(x.dtype)
    for s in range(n - 1):
        sseg, rseg = seg[(r - s) % n], seg[(r - s - 1) % n]
        sp, rp = _pieces(*sseg, per), _pieces(*rseg, per)
        # Sends run one piece ahead of receives, so that the next piece is on its way while
        # this one is reduced (a ring holds two pieces; a socket's reader drains anyway).
        for j in range(max(len(sp), len(rp) + 1)):
            sends = [(right, x[sp[j][0] : sp[j][1]])] if j < len(sp) else []
            recvs = []
            if 1 <= j <= len(rp):
                a, b = rp[j - 1]
                recvs = [(left, tmp[: b - a])]
            op.exchange(sends, recvs)
            if recvs:
                reduce(x[a:b], tmp[: b - a])


def _allgather_ring_segments(op: Op, x: np.ndarray) -> None:
    """Ring allgather of segments: rank r starts holding segment (r + 1) % n."""
    r, n = op.rank, op.n
    right, left = (r + 1) % n, (r - 1) % n
    seg = _bounds(x.size, n)
    for s in range(n - 1):
        sa, sb = seg[(r + 1 - s) % n]
        ra, rb = seg[(r - s) % n]
        op.exchange([(right, x[sa:sb])], [(left, x[ra:rb])])


# --- reduce ------------------------------------------------------------------------------------


def reduce(op: Op, x: np.ndarray, root: int, reduce_fn: Reducer) -> None:
    r, n = op.rank, op.n
    if n == 1:
        return
    a = _arena(op, x.nbytes)
    if a is not None:
        parts = a.arrays(op.tag, op.desc, _bytes(x), x.dtype)
        if r == root:
            _reduce_rows(parts, x, reduce_fn)
        return
    _reduce_messages(op, x, root, reduce_fn)
    barrier(op)  # ranks that received nothing learn here of any disagreement


def _reduce_messages(op: Op, x: np.ndarray, root: int, reduce_fn: Reducer) -> None:
    r, n = op.rank, op.n
    if x.nbytes <= SMALL_BYTES or x.size < n:
        if r != root:
            op.exchange([(root, x)], [])
            return
        others = [p for p in range(n) if p != root]
        tmp = op.scratch("direct", x.nbytes * n).view(x.dtype)[: x.size * n].reshape(n, x.size)
        op.exchange([], [(p, tmp[p]) for p in others])
        tmp[root] = x
        for p in range(1, n):
            reduce_fn(tmp[0], tmp[p])
        x[...] = tmp[0]
        return
    # Non-roots keep their input intact: they reduce in scratch.
    work = x if r == root else op.scratch("work", x.nbytes).view(x.dtype)[: x.size]
    if r != root:
        work[...] = x
    _reduce_scatter_ring_inplace(op, work, reduce_fn)
    seg = _bounds(x.size, n)
    if r == root:
        recvs = []
        for p in range(n):
            if p != root:
                a, b = seg[(p + 1) % n]
                recvs.append((p, x[a:b]))
        op.exchange([], recvs)
    else:
        a, b = seg[(r + 1) % n]
        op.exchange([(root, work[a:b])], [])


# --- broadcast ---------------------------------------------------------------------------------


def broadcast(op: Op, x: np.ndarray, root: int) -> None:
    r, n = op.rank, op.n
    if n == 1:
        return
    a = _arena(op, x.nbytes)
    if a is not None:
        parts = a.exchange(op.tag, op.desc, _bytes(x) if r == root else memoryview(b""))
        if r != root:
            _bytes(x)[:] = parts[root]
        return
    if op.comm.hier is not None:
        _hier().broadcast(op, x, root)
        barrier(op)  # ranks that sent only learn here of any disagreement
        return
    if _cma(op, x.nbytes):
        srcs = _share_sources(op, x, senders=[root])
        if r != root:
            _read(op, root, srcs[root], 0, x)
        barrier(op)  # the root's buffer stays untouched until everyone has read it
        return
    _broadcast_messages(op, x, root)
    barrier(op)  # the root received nothing: it learns here of any disagreement


def _broadcast_messages(op: Op, x: np.ndarray, root: int) -> None:
    r, n = op.rank, op.n
    if x.nbytes <= 4 * SMALL_BYTES or n == 2:
        if r == root:
            op.exchange([(p, x) for p in range(n) if p != root], [])
        else:
            op.exchange([], [(root, x)])
        return
    _broadcast_chain(op, x, [(root + i) % n for i in range(n)])


def _broadcast_chain(op: Op, x: np.ndarray, order: list[int]) -> None:
    """Pipelined chain along ``order`` (the root first): each rank forwards piece j-1 while
    receiving piece j."""
    r, n = op.rank, op.n
    pos = order.index(r)
    prev = order[pos - 1] if pos > 0 else None
    nxt = order[pos + 1] if pos < n - 1 else None
    flat = x.reshape(-1).view(np.uint8)
    pieces = _pieces(0, flat.size, PIECE_BYTES)
    for j in range(len(pieces) + 1):
        sends = []
        if nxt is not None and j >= (0 if prev is None else 1):
            k = j if prev is None else j - 1
            if k < len(pieces):
                sends = [(nxt, flat[pieces[k][0] : pieces[k][1]])]
        recvs = []
        if prev is not None and j < len(pieces):
            recvs = [(prev, flat[pieces[j][0] : pieces[j][1]])]
        if sends or recvs:
            op.exchange(sends, recvs)


# --- gathers -----------------------------------------------------------------------------------


def allgather(op: Op, x: np.ndarray, out: np.ndarray) -> None:
    """``out`` is (n, x.size); row r of every rank receives rank r's x."""
    r, n = op.rank, op.n
    out[r] = x
    if n == 1:
        return
    a = _arena(op, x.nbytes)
    if a is not None:
        for p, part in enumerate(a.arrays(op.tag, op.desc, _bytes(x), x.dtype)):
            out[p] = part
        return
    if op.comm.hier is not None:
        _hier().allgather(op, x, out)
        return
    if _cma(op, x.nbytes):
        srcs = _share_sources(op, x)
        for k in range(1, n):
            p = (r + k) % n  # different sources first on each rank: spread the load
            _read(op, p, srcs[p], 0, out[p])
        barrier(op)
        return
    if out.nbytes <= 4 * SMALL_BYTES:
        others = [p for p in range(n) if p != r]
        op.exchange([(p, x) for p in others], [(p, out[p]) for p in others])
        return
    right, left = (r + 1) % n, (r - 1) % n
    for s in range(n - 1):
        op.exchange([(right, out[(r - s) % n])], [(left, out[(r - s - 1) % n])])


def gather(op: Op, x: np.ndarray, root: int, out: np.ndarray | None) -> None:
    r, n = op.rank, op.n
    a = _arena(op, x.nbytes) if n > 1 else None
    if a is not None:
        parts = a.arrays(op.tag, op.desc, _bytes(x), x.dtype)
        if r == root:
            assert out is not None
            for p, part in enumerate(parts):
                out[p] = part
        return
    if r != root:
        op.exchange([(root, x)], [])
    else:
        assert out is not None
        out[r] = x
        op.exchange([], [(p, out[p]) for p in range(n) if p != root])
    barrier(op)  # non-roots received nothing: they learn here of any disagreement


def scatter(op: Op, x: np.ndarray | None, root: int, out: np.ndarray) -> None:
    """Root sends row p of ``x`` (n, chunk) to rank p; ``out`` receives this rank's row."""
    r, n = op.rank, op.n
    if r == root:
        assert x is not None
        out[...] = x[r]
        op.exchange([(p, x[p]) for p in range(n) if p != root], [])
    else:
        op.exchange([], [(root, out)])
    if n > 1:
        barrier(op)  # the root received nothing: it learns here of any disagreement


def reduce_scatter(op: Op, x: np.ndarray, out: np.ndarray, reduce_fn: Reducer) -> None:
    """``x`` is (n, chunk); rank r's ``out`` receives the reduction of every rank's row r."""
    r, n = op.rank, op.n
    if n == 1:
        out[...] = x[0]
        return
    a = _arena(op, x.nbytes)
    if a is not None:
        parts = a.arrays(op.tag, op.desc, _bytes(x), x.dtype)
        _reduce_rows([part.reshape(n, -1)[r] for part in parts], out, reduce_fn)
        return
    if x.nbytes <= SMALL_BYTES:
        others = [p for p in range(n) if p != r]
        tmp = (
            op.scratch("direct", out.nbytes * n).view(x.dtype)[: out.size * n].reshape(n, out.size)
        )
        op.exchange([(p, x[p]) for p in others], [(p, tmp[p]) for p in others])
        tmp[r] = x[r]
        for p in range(1, n):
            reduce_fn(tmp[0], tmp[p])
        out[...] = tmp[0]
        return
    if op.comm.hier is not None:
        _hier().reduce_scatter(op, x, out, reduce_fn)
        return
    if _cma(op, out.nbytes):
        _reduce_scatter_cma(op, x, out, reduce_fn)
        return
    right, left = (r + 1) % n, (r - 1) % n
    acc = op.scratch("acc", out.nbytes).view(x.dtype)[: out.size]
    tmp = op.scratch("tmp", out.nbytes).view(x.dtype)[: out.size]
    for s in range(n - 1):
        send = x[(r - s - 1) % n] if s == 0 else acc
        op.exchange([(right, send)], [(left, tmp)])
        acc[...] = x[(r - s - 2) % n]
        reduce_fn(acc, tmp)
    out[...] = acc


def _reduce_scatter_cma(op: Op, x: np.ndarray, out: np.ndarray, reduce_fn: Reducer) -> None:
    r, n = op.rank, op.n
    srcs = _share_sources(op, x)
    item = x.itemsize
    row = out.size
    per = max(1, PIECE_BYTES // item)
    acc = op.scratch("acc", per * item).view(x.dtype)
    tmp = op.scratch("piece", per * item).view(x.dtype)
    for lo in range(0, row, per):
        hi = min(lo + per, row)
        m = hi - lo
        for p in range(n):
            if p == r:
                part = x[r, lo:hi]
            elif isinstance(srcs[p], np.ndarray):
                part = srcs[p][(r * row + lo) * item : (r * row + hi) * item].view(x.dtype)
            else:
                part = tmp[:m]
                _read(op, p, srcs[p], (r * row + lo) * item, part)
            if p == 0:
                acc[:m] = part
            else:
                reduce_fn(acc[:m], part)
        out[lo:hi] = acc[:m]
    barrier(op)


def alltoall(op: Op, x: np.ndarray, out: np.ndarray) -> None:
    """``x`` and ``out`` are (n, chunk): row p of x goes to rank p, row p of out comes from p."""
    r, n = op.rank, op.n
    out[r] = x[r]
    a = _arena(op, x.nbytes) if n > 1 else None
    if a is not None:
        for p, part in enumerate(a.arrays(op.tag, op.desc, _bytes(x), x.dtype)):
            out[p] = part.reshape(n, -1)[r]
        return
    others = [p for p in range(n) if p != r]
    if others:
        op.exchange([(p, x[p]) for p in others], [(p, out[p]) for p in others])


def barrier(op: Op) -> None:
    r, n = op.rank, op.n
    if n == 1:
        return
    if op.comm.arena is not None:
        op.comm.arena.exchange(op.tag, op.desc, memoryview(b""))
        return
    empty = np.empty(0, np.uint8)
    if n <= 16:
        others = [p for p in range(n) if p != r]
        op.exchange([(p, empty) for p in others], [(p, empty) for p in others])
        return
    k = 1
    while k < n:  # dissemination: log2(n) rounds
        op.exchange([((r + k) % n, empty)], [((r - k) % n, empty)])
        k *= 2


# --- objects (pickled by ops.py before anything moves, unpickled by it after) -----------------


def broadcast_bytes(op: Op, data: bytes | None, root: int) -> memoryview:
    r, n = op.rank, op.n
    if r == root:
        assert data is not None
        op.exchange([(p, data) for p in range(n) if p != root], [])
        got = memoryview(data)
    else:
        (got,) = op.exchange([], [(root, None)])
    barrier(op)  # the root received nothing: it learns here of any disagreement
    return got


def allgather_bytes(op: Op, data: bytes) -> list[memoryview]:
    r, n = op.rank, op.n
    others = [p for p in range(n) if p != r]
    got = op.exchange([(p, data) for p in others], [(p, None) for p in others])
    out = [memoryview(data)] * n
    for p, d in zip(others, got):
        out[p] = d
    return out


def gather_bytes(op: Op, data: bytes, root: int) -> list[memoryview] | None:
    r, n = op.rank, op.n
    out: list[memoryview] | None = None
    if r != root:
        op.exchange([(root, data)], [])
    else:
        others = [p for p in range(n) if p != root]
        got = op.exchange([], [(p, None) for p in others])
        out = [memoryview(data)] * n
        for p, d in zip(others, got):
            out[p] = d
    barrier(op)  # non-roots received nothing: they learn here of any disagreement
    return out


def scatter_bytes(op: Op, parts: list[bytes] | None, root: int) -> memoryview:
    r, n = op.rank, op.n
    if r == root:
        assert parts is not None
        op.exchange([(p, parts[p]) for p in range(n) if p != root], [])
        got = memoryview(parts[r])
    else:
        (got,) = op.exchange([], [(root, None)])
    barrier(op)  # the root received nothing: it learns here of any disagreement
    return got
