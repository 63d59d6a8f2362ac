"""Collectives of pickled objects: bytes of any size per rank, moved by direct exchanges.

Objects are pickled by the caller (refusing ObjectRefs) before anything moves, and unpickled by
it after the op, from authenticated members only. Every message here carries the descriptor's
:data:`~sideband.collective.comm.framing.PICKLED` bit, so links that can be tampered with (TCP)
authenticate each of these frames (see transports/tcp.py).
"""

from __future__ import annotations

from sideband.collective.algorithms.context import Op
from sideband.collective.algorithms.flat import barrier
from sideband.collective.comm.framing import PICKLED


def _pickled(op: Op) -> Op:
    return Op(op.comm, op.tag, op.desc | PICKLED, op.scratch, op.plan)


def broadcast_bytes(op: Op, data: bytes | None, root: int) -> memoryview:
    po = _pickled(op)  # its messages; the barrier stays the op's own
    r, n = op.rank, op.n
    if r == root:
        assert data is not None
        po.exchange([(p, data) for p in range(n) if p != root], [])
        got = memoryview(data)
    else:
        (got,) = po.exchange([], [(root, None)])
    barrier(op)  # the root received nothing: it learns here of any disagreement
    return got


def allgather_bytes(op: Op, data: bytes) -> list[memoryview]:
    po = _pickled(op)  # its messages; the barrier stays the op's own
    r, n = op.rank, op.n
    others = [p for p in range(n) if p != r]
    got = po.exchange([(p, data) for p in others], [(p, None) for p in others])
    out = [memoryview(data)] * n
    for p, d in zip(others, got):
        out[p] = d
    return out


def gather_bytes(op: Op, data: bytes, root: int) -> list[memoryview] | None:
    po = _pickled(op)  # its messages; the barrier stays the op's own
    r, n = op.rank, op.n
    out: list[memoryview] | None = None
    if r != root:
        po.exchange([(root, data)], [])
    else:
        others = [p for p in range(n) if p != root]
        got = po.exchange([], [(p, None) for p in others])
        out = [memoryview(data)] * n
        for p, d in zip(others, got):
            out[p] = d
    barrier(op)  # non-roots received nothing: they learn here of any disagreement
    return out


def scatter_bytes(op: Op, parts: list[bytes] | None, root: int) -> memoryview:
    po = _pickled(op)  # its messages; the barrier stays the op's own
    r, n = op.rank, op.n
    if r == root:
        assert parts is not None
        po.exchange([(p, parts[p]) for p in range(n) if p != root], [])
        got = memoryview(parts[r])
    else:
        (got,) = po.exchange([], [(root, None)])
    barrier(op)  # the root received nothing: it learns here of any disagreement
    return got
