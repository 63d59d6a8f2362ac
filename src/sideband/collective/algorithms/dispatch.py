"""The one dispatcher: which algorithm runs an op, by size and by the group's plan.

Small ops of all-local groups go through the arena (shared slots, one round); groups spanning
hosts take the host-aware algorithms; large ops of all-local groups read peers directly when
cross-memory reads work; everything else runs the flat algorithms. Every rank decides alike:
sizes and descriptors agree across ranks (checked), and the plan was agreed at formation.
"""

from __future__ import annotations

import numpy as np

from sideband.collective.algorithms import flat, hierarchical, zerocopy
from sideband.collective.algorithms.arena import SLOT_BYTES, Arena
from sideband.collective.algorithms.context import Op, Reducer, as_bytes
from sideband.collective.algorithms.flat import SMALL_BYTES, barrier
from sideband.errors import MismatchError

__all__ = [
    "allgather",
    "allreduce",
    "alltoall",
    "barrier",
    "broadcast",
    "gather",
    "reduce",
    "reduce_scatter",
    "scatter",
]


def _arena(op: Op, nbytes: int) -> Arena | None:
    """The group's arena if this op is small enough for it (all ranks decide alike)."""
    a = op.plan.arena
    return a if a is not None and nbytes <= SLOT_BYTES else None


def allreduce(op: Op, x: np.ndarray, reduce: Reducer) -> None:
    if op.n == 1:
        return
    if op.plan.hier is not None:
        hierarchical.allreduce(op, x, reduce)
        return
    a = _arena(op, x.nbytes)
    if a is not None:
        a.reduced(op.tag, op.desc, x, x, reduce)
    elif x.nbytes <= SMALL_BYTES or x.size < op.n:
        flat.allreduce_direct(op, x, reduce)
    elif zerocopy.usable(op, x.nbytes):
        zerocopy.allreduce(op, x, reduce)
    else:
        flat.allreduce(op, x, reduce)


def reduce(op: Op, x: np.ndarray, root: int, reduce_fn: Reducer) -> None:
    if op.n == 1:
        return
    a = _arena(op, x.nbytes)
    if a is not None:
        a.reduced(op.tag, op.desc, x, x if op.rank == root else None, reduce_fn)
        return
    flat.reduce_to_root(op, x, root, reduce_fn)
    barrier(op)  # ranks that received nothing learn here of any disagreement


def broadcast(op: Op, x: np.ndarray, root: int) -> None:
    if op.n == 1:
        return
    a = _arena(op, x.nbytes)
    if a is not None:
        parts = a.exchange(op.tag, op.desc, as_bytes(x) if op.rank == root else memoryview(b""))
        if op.rank != root:
            if len(parts[root]) != x.nbytes:  # the descriptor agreed: only a hostile root
                raise MismatchError(
                    f"broadcast: rank {root} sent {len(parts[root])} bytes into rank "
                    f"{op.rank}'s {x.nbytes}-byte buffer"
                )
            as_bytes(x)[:] = parts[root]
        return
    if op.plan.hier is not None:
        hierarchical.broadcast(op, x, root)
    elif zerocopy.usable(op, x.nbytes):
        zerocopy.broadcast(op, x, root)  # ends with its own barrier
        return
    else:
        flat.broadcast_messages(op, x, root)
    barrier(op)  # the root received nothing: it learns here of any disagreement


def allgather(op: Op, x: np.ndarray, out: np.ndarray) -> None:
    """``out`` is (n, x.size); row r of every rank receives rank r's x."""
    a = _arena(op, x.nbytes) if op.n > 1 else None
    if a is not None:
        a.gathered(op.tag, op.desc, x, out)  # this rank's row too
        return
    out[op.rank] = x
    if op.n == 1:
        return
    if op.plan.hier is not None:
        hierarchical.allgather(op, x, out)
    elif zerocopy.usable(op, x.nbytes):
        zerocopy.allgather(op, x, out)
    else:
        flat.allgather(op, x, out)


def gather(op: Op, x: np.ndarray, root: int, out: np.ndarray | None) -> None:
    a = _arena(op, x.nbytes) if op.n > 1 else None
    if a is None:
        flat.gather(op, x, root, out)
        return
    a.gathered(op.tag, op.desc, x, out if op.rank == root else None)


def scatter(op: Op, x: np.ndarray | None, root: int, out: np.ndarray) -> None:
    """Root sends row p of ``x`` (n, chunk) to rank p; ``out`` receives this rank's row."""
    flat.scatter(op, x, root, out)


def reduce_scatter(op: Op, x: np.ndarray, out: np.ndarray, reduce_fn: Reducer) -> None:
    """``x`` is (n, chunk); rank r's ``out`` receives the reduction of every rank's row r."""
    r, n = op.rank, op.n
    if n == 1:
        out[...] = x[0]
        return
    a = _arena(op, x.nbytes)
    if a is not None:
        a.reduced(op.tag, op.desc, x, out, reduce_fn, row=r)
    elif x.nbytes <= SMALL_BYTES:
        flat.reduce_scatter_direct(op, x, out, reduce_fn)
    elif op.plan.hier is not None:
        hierarchical.reduce_scatter(op, x, out, reduce_fn)
    elif zerocopy.usable(op, out.nbytes):
        zerocopy.reduce_scatter(op, x, out, reduce_fn)
    else:
        flat.reduce_scatter_ring(op, x, out, reduce_fn)


def alltoall(op: Op, x: np.ndarray, out: np.ndarray) -> None:
    """``x`` and ``out`` are (n, chunk): row p of x goes to rank p, row p of out comes from p."""
    r, n = op.rank, op.n
    out[r] = x[r]
    a = _arena(op, x.nbytes) if n > 1 else None
    if a is None:
        flat.alltoall(op, x, out)
        return
    for p, part in enumerate(a.arrays(op.tag, op.desc, as_bytes(x), x.dtype)):
        out[p] = part.reshape(n, -1)[r]
