"""Host-aware algorithms for groups that span several hosts.

A *host* is a set of ranks that share memory (decided at connect by ``/dev/shm`` identity, not
by IP). Flat rings cross the network once per rank; these algorithms cross it once per host pair
and per piece of data, and leave the rest to shared memory:

- allreduce, same number of ranks on every host (2-D): reduce-scatter inside each host; local
  rank ``i`` of every host allreduces its segment with local rank ``i`` of the other hosts, so
  every rank drives one TCP stream at once; allgather inside each host. Other shapes and small
  messages: reduce to each host's leader, allreduce among leaders, broadcast inside each host.
- broadcast: a pipelined chain that visits host after host (the network is crossed once per
  host); small messages go root -> other hosts' leaders -> their local ranks.
- allgather: every row crosses to each other host once, to one designated rank there, which
  passes it on through shared memory.
- reduce_scatter: rows are first reduced inside each host, then each host's partial of row
  ``k`` crosses once, to rank ``k``.

Every phase runs the flat algorithms (``flat.py``) on ``Op.sub``: the same comm, tag and
descriptor, seen through a subset of ranks. All ranks derive the same :class:`Hier` from the
roster (``rendezvous/topology.py``), so they agree without talking.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sideband.collective.algorithms import flat
from sideband.collective.algorithms.context import Op, Reducer, bounds, pieces


class Hier:
    """This rank's place among the group's hosts, and the group's agreed settings."""

    def __init__(self, hosts: list[list[int]], rank: int, pipeline_bytes: int = 0) -> None:
        self.hosts = hosts
        self.host_of = {r: h for h, ranks in enumerate(hosts) for r in ranks}
        self.me = self.host_of[rank]
        self.mine = hosts[self.me]
        self.local = self.mine.index(rank)
        self.leaders = [h[0] for h in hosts]
        # 2-D algorithms need the same number of ranks on every host.
        self.uniform = len({len(h) for h in hosts}) == 1
        self.cross = [h[self.local] for h in hosts] if self.uniform else None
        self.pipeline_bytes = pipeline_bytes


# --- allreduce -----------------------------------------------------------------------------------


def allreduce(op: Op, x: np.ndarray, reduce: Reducer) -> None:
    h: Hier = op.plan.hier
    intra = op.sub(h.mine)
    L = len(h.mine)
    if h.cross is not None and L > 1 and x.nbytes > flat.SMALL_BYTES and x.size >= op.n:
        pipe = h.pipeline_bytes
        per = max(L, pipe // x.itemsize)
        if pipe > 0 and x.size >= 2 * per:
            _allreduce_2d_pipelined(op, x, reduce, per)
        else:
            _allreduce_2d(op, intra, x, reduce)
        return
    if L > 1:
        flat.reduce_to_root(intra, x, 0, reduce)
    if h.local == 0:
        flat.allreduce(op.sub(h.leaders), x, reduce)
    if L > 1:
        flat.broadcast_messages(intra, x, 0)


def _allreduce_2d(op: Op, intra: Op, x: np.ndarray, reduce: Reducer) -> None:
    """Local rank i ends the reduce-scatter holding segment (i + 1) % L of its host's sum,
    allreduces it with the ranks holding the same segment on the other hosts, and the
    allgather spreads the finished segments inside the host."""
    h: Hier = op.plan.hier
    L = len(h.mine)
    flat.reduce_scatter_ring_inplace(intra, x, reduce)
    a, b = bounds(x.size, L)[(h.local + 1) % L]
    assert h.cross is not None  # uniform hosts: the caller checked
    flat.allreduce(op.sub(h.cross), x[a:b], reduce)
    flat.allgather_ring_segments(intra, x)


def _allreduce_2d_pipelined(op: Op, x: np.ndarray, reduce: Reducer, per: int) -> None:
    """The 2-D allreduce in pieces, with the network phase of piece k on a helper thread while
    this thread runs the shared-memory phases of pieces k - 1 and k + 1.

    The two threads talk to disjoint peers (local ones here, remote ones there), so their
    messages never mix; both wait on the same doorbell.
    """
    h: Hier = op.plan.hier
    L = len(h.mine)
    intra = op.sub(h.mine)
    assert h.cross is not None  # uniform hosts: the caller checked
    cross = op.sub(h.cross)
    # The helper has scratch of its own: the phases here reuse "piece" and friends meanwhile.
    cross.scratch = lambda key, nbytes: op.scratch("x-" + key, nbytes)
    pool = op.plan.pipeline_pool()
    parts = pieces(0, x.size, per)

    def network(lo: int, hi: int) -> None:
        a, b = bounds(hi - lo, L)[(h.local + 1) % L]
        flat.allreduce(cross, x[lo + a : lo + b], reduce)

    submitted: list[Any] = []
    pending: Any = None
    try:
        for k, (lo, hi) in enumerate(parts + [(0, 0)]):
            if k < len(parts):
                flat.reduce_scatter_ring_inplace(intra, x[lo:hi], reduce)
                started = pool.submit(network, lo, hi)
                submitted.append(started)
            if pending is not None:
                fut, plo, phi = pending
                fut.result()
                flat.allgather_ring_segments(intra, x[plo:phi])
            pending = (started, lo, hi) if k < len(parts) else None
    except BaseException as e:
        # The helper must be done with x before this op returns: abort (its waits check the
        # flag and stop), then wait for every piece it was given.
        op.comm.abort(e)
        for fut in submitted:
            try:
                fut.result()
            except BaseException:
                pass
        raise


# --- broadcast -----------------------------------------------------------------------------------


def broadcast(op: Op, x: np.ndarray, root: int) -> None:
    h: Hier = op.plan.hier
    rh = h.host_of[root]
    if x.nbytes > 4 * flat.SMALL_BYTES:
        # One pipelined chain, host after host starting at the root's: the network is crossed
        # once per host, everything else moves through shared memory.
        order = [root] + [r for r in h.hosts[rh] if r != root]
        for k in range(1, len(h.hosts)):
            order += h.hosts[(rh + k) % len(h.hosts)]
        flat.broadcast_chain(op, x, order)
        return
    # Small: the root sends to its local ranks and to one leader per other host, which pass it on.
    heads = [root if g == rh else ranks[0] for g, ranks in enumerate(h.hosts)]
    if op.rank == root:
        op.exchange(
            [(p, x) for p in h.mine if p != root] + [(p, x) for p in heads if p != root], []
        )
    elif h.me == rh:
        op.exchange([], [(root, x)])
    elif op.rank == heads[h.me]:
        op.exchange([], [(root, x)])
        op.exchange([(p, x) for p in h.mine if p != op.rank], [])
    else:
        op.exchange([], [(heads[h.me], x)])


# --- allgather -----------------------------------------------------------------------------------


def _receiver(h: Hier, src: int, host: int) -> int:
    """The rank of ``host`` that receives ``src``'s row (spread over the host's ranks)."""
    k = h.hosts[h.host_of[src]].index(src)
    dst_ranks = h.hosts[host]
    return dst_ranks[k % len(dst_ranks)]


def allgather(op: Op, x: np.ndarray, out: np.ndarray) -> None:
    h: Hier = op.plan.hier
    r = op.rank
    out[r] = x
    locals_ = [p for p in h.mine if p != r]
    # Round 1: rows to local ranks through shared memory, and this rank's row to one rank of
    # each other host; rows of other hosts arrive at the ranks designated for them.
    sends = [(p, x) for p in locals_]
    sends += [(_receiver(h, r, g), x) for g in range(len(h.hosts)) if g != h.me]
    remote = [q for q in range(op.n) if h.host_of[q] != h.me]
    got = [q for q in remote if _receiver(h, q, h.me) == r]
    op.exchange(sends, [(p, out[p]) for p in locals_] + [(q, out[q]) for q in got])
    # Round t of the fan-out: every rank passes its t-th received row to its local ranks.
    if not locals_:
        return
    per = {p: [q for q in remote if _receiver(h, q, h.me) == p] for p in h.mine}
    for t in range(max(len(v) for v in per.values())):
        mine = per[r][t] if t < len(per[r]) else None
        sends = [(p, out[mine]) for p in locals_] if mine is not None else []
        recvs = [(p, out[per[p][t]]) for p in locals_ if t < len(per[p])]
        op.exchange(sends, recvs)


# --- reduce_scatter ------------------------------------------------------------------------------


def _partial_holder(h: Hier, row: int, host: int) -> int:
    """The rank of ``host`` that sums ``host``'s contributions to ``row``."""
    if h.host_of[row] == host:
        return row  # the row's owner sums its own host's part
    return _receiver(h, row, host)


def reduce_scatter(op: Op, x: np.ndarray, out: np.ndarray, reduce: Reducer) -> None:
    """``x`` is (n, chunk); rank r's ``out`` receives the reduction of every rank's row r."""
    h: Hier = op.plan.hier
    r, n = op.rank, op.n
    locals_ = [p for p in h.mine if p != r]
    mine_rows = [k for k in range(n) if _partial_holder(h, k, h.me) == r]
    part = op.scratch("hier-part", x.nbytes).view(x.dtype)[: x.size].reshape(x.shape)
    rows = max(len(h.mine), len(h.hosts))
    tmp = op.scratch("hier-tmp", x[0].nbytes * rows).view(x.dtype)
    tmp = tmp[: x[0].size * rows].reshape(rows, x[0].size)
    # Phase 1, one round per row: the host's ranks send their row k to the rank that sums it.
    for k in range(n):
        holder = _partial_holder(h, k, h.me)
        if holder != r:
            op.exchange([(holder, x[k])], [])
            continue
        op.exchange([], [(p, tmp[i]) for i, p in enumerate(locals_)])
        part[k] = x[k]
        for i in range(len(locals_)):
            reduce(part[k], tmp[i])
    # Phase 2: each host's partial of row k crosses the network once, to rank k.
    sends = [(k, part[k]) for k in mine_rows if k != r]
    others = [g for g in range(len(h.hosts)) if g != h.me]
    recvs = [(_partial_holder(h, r, g), tmp[i]) for i, g in enumerate(others)]
    op.exchange(sends, recvs)
    out[...] = part[r]
    for i in range(len(others)):
        reduce(out, tmp[i])
