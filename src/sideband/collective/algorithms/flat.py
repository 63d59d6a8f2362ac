"""Flat algorithms: every rank a peer of every other, written once against the comm.

Small messages use direct exchanges (one round, latency-bound); large ones use rings and chains
cut into pieces that stay in cache. Reductions always combine contributions in rank order on
every rank, so all ranks end with bitwise-identical results. ``dispatch.py`` picks between these,
the arena, the zero-copy paths and the host-aware ones; ``hierarchical.py`` runs these on
sub-views of the ranks.
"""

from __future__ import annotations

import numpy as np

from sideband.collective.algorithms.context import Op, Reducer, bounds, pieces

SMALL_BYTES = 64 * 1024
PIECE_BYTES = 1 << 20
# Over sockets every piece costs thread hand-offs and syscalls, and caches matter less.
TCP_PIECE_BYTES = 4 << 20


def reduce_rows(srcs: list[np.ndarray], out: np.ndarray, reduce: Reducer) -> None:
    """out = srcs[0] (op) srcs[1] (op) ...: rank order, the same bits on every rank."""
    out[...] = srcs[0]
    for a in srcs[1:]:
        reduce(out, a)


def allreduce(op: Op, x: np.ndarray, reduce: Reducer) -> None:
    """Direct exchange for small buffers, ring reduce-scatter + allgather for large ones."""
    if op.n == 1:
        return
    if x.nbytes <= SMALL_BYTES or x.size < op.n:
        allreduce_direct(op, x, reduce)
    else:
        reduce_scatter_ring_inplace(op, x, reduce)
        allgather_ring_segments(op, x)


def allreduce_direct(op: Op, x: np.ndarray, reduce: Reducer) -> None:
    r, n = op.rank, op.n
    others = [p for p in range(n) if p != r]
    tmp = op.scratch("direct", x.nbytes * n).view(x.dtype)[: x.size * n].reshape(n, x.size)
    op.exchange([(p, x) for p in others], [(p, tmp[p]) for p in others])
    tmp[r] = x
    # Rank order everywhere: every rank computes the same bits.
    for p in range(1, n):
        reduce(tmp[0], tmp[p])
    x[...] = tmp[0]


def reduce_scatter_ring_inplace(op: Op, x: np.ndarray, reduce: Reducer) -> None:
    """Ring reduce-scatter in ``x``: rank r ends holding the reduced segment (r + 1) % n."""
    r, n = op.rank, op.n
    right, left = (r + 1) % n, (r - 1) % n
    seg = bounds(x.size, n)
    chans = op.comm.channels
    tcp = chans[right].kind == "tcp" or chans[left].kind == "tcp"
    per = max(1, (TCP_PIECE_BYTES if tcp else PIECE_BYTES) // x.itemsize)
    tmp = op.scratch("piece", per * x.itemsize).view(x.dtype)
    for s in range(n - 1):
        sseg, rseg = seg[(r - s) % n], seg[(r - s - 1) % n]
        sp, rp = pieces(sseg[0], sseg[1], per), pieces(rseg[0], rseg[1], per)
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


def allgather_ring_segments(op: Op, x: np.ndarray) -> None:
    """Ring allgather of segments: rank r starts holding segment (r + 1) % n."""
    r, n = op.rank, op.n
    right, left = (r + 1) % n, (r - 1) % n
    seg = bounds(x.size, n)
    for s in range(n - 1):
        sa, sb = seg[(r + 1 - s) % n]
        ra, rb = seg[(r - s) % n]
        op.exchange([(right, x[sa:sb])], [(left, x[ra:rb])])


def reduce_to_root(op: Op, x: np.ndarray, root: int, reduce_fn: Reducer) -> None:
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
    reduce_scatter_ring_inplace(op, work, reduce_fn)
    seg = bounds(x.size, n)
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


def broadcast_messages(op: Op, x: np.ndarray, root: int) -> None:
    r, n = op.rank, op.n
    if x.nbytes <= 4 * SMALL_BYTES or n == 2:
        if r == root:
            op.exchange([(p, x) for p in range(n) if p != root], [])
        else:
            op.exchange([], [(root, x)])
        return
    broadcast_chain(op, x, [(root + i) % n for i in range(n)])


def broadcast_chain(op: Op, x: np.ndarray, order: list[int]) -> None:
    """Pipelined chain along ``order`` (the root first): each rank forwards piece j-1 while
    receiving piece j."""
    r, n = op.rank, op.n
    pos = order.index(r)
    prev = order[pos - 1] if pos > 0 else None
    nxt = order[pos + 1] if pos < n - 1 else None
    flat = x.reshape(-1).view(np.uint8)
    parts = pieces(0, flat.size, PIECE_BYTES)
    for j in range(len(parts) + 1):
        sends = []
        if nxt is not None and j >= (0 if prev is None else 1):
            k = j if prev is None else j - 1
            if k < len(parts):
                sends = [(nxt, flat[parts[k][0] : parts[k][1]])]
        recvs = []
        if prev is not None and j < len(parts):
            recvs = [(prev, flat[parts[j][0] : parts[j][1]])]
        if sends or recvs:
            op.exchange(sends, recvs)


def allgather(op: Op, x: np.ndarray, out: np.ndarray) -> None:
    """``out`` is (n, x.size) and ``out[r]`` already holds x: direct exchange or ring."""
    r, n = op.rank, op.n
    if out.nbytes <= 4 * SMALL_BYTES:
        others = [p for p in range(n) if p != r]
        op.exchange([(p, x) for p in others], [(p, out[p]) for p in others])
        return
    right, left = (r + 1) % n, (r - 1) % n
    for s in range(n - 1):
        op.exchange([(right, out[(r - s) % n])], [(left, out[(r - s - 1) % n])])


def gather(op: Op, x: np.ndarray, root: int, out: np.ndarray | None) -> None:
    r, n = op.rank, op.n
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


def reduce_scatter_direct(op: Op, x: np.ndarray, out: np.ndarray, reduce_fn: Reducer) -> None:
    r, n = op.rank, op.n
    others = [p for p in range(n) if p != r]
    tmp = op.scratch("direct", out.nbytes * n).view(x.dtype)[: out.size * n].reshape(n, out.size)
    op.exchange([(p, x[p]) for p in others], [(p, tmp[p]) for p in others])
    tmp[r] = x[r]
    for p in range(1, n):
        reduce_fn(tmp[0], tmp[p])
    out[...] = tmp[0]


def reduce_scatter_ring(op: Op, x: np.ndarray, out: np.ndarray, reduce_fn: Reducer) -> None:
    r, n = op.rank, op.n
    right, left = (r + 1) % n, (r - 1) % n
    acc = op.scratch("acc", out.nbytes).view(x.dtype)[: out.size]
    tmp = op.scratch("tmp", out.nbytes).view(x.dtype)[: out.size]
    for s in range(n - 1):
        send = x[(r - s - 1) % n] if s == 0 else acc
        op.exchange([(right, send)], [(left, tmp)])
        acc[...] = x[(r - s - 2) % n]
        reduce_fn(acc, tmp)
    out[...] = acc


def alltoall(op: Op, x: np.ndarray, out: np.ndarray) -> None:
    """Rows of ``x`` to their ranks; ``out[r]`` already holds this rank's own row."""
    r, n = op.rank, op.n
    others = [p for p in range(n) if p != r]
    if others:
        op.exchange([(p, x[p]) for p in others], [(p, out[p]) for p in others])


def barrier(op: Op) -> None:
    r, n = op.rank, op.n
    if n == 1:
        return
    if op.plan.arena is not None:
        op.plan.arena.exchange(op.tag, op.desc, memoryview(b""))
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
