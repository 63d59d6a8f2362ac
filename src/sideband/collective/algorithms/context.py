"""What an algorithm runs with: the calling rank's view of one operation, and the group's plan.

An :class:`Op` carries the comm, the op's tag (its sequence number) and descriptor, scratch space
that the group reuses across ops, and the :class:`Plan` the group agreed on at formation (shared
slots for small ops, cross-memory reads, the host-aware layout). A sub-view of the ranks (one
host, or one rank per host) is an Op over a :class:`SubComm` with an empty plan.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

import numpy as np

from sideband.collective.comm.engine import Comm
from sideband.collective.comm.framing import KIND_COLL


class Reducer:
    """``reducer(acc, other)``: acc = acc (op) other, elementwise, in place. ``code`` names the
    same reduction for the C loops that reduce arena slots (``_native.reduce_slots``); -1 where
    C has none (float16, bfloat16), and numpy or torch reduces."""

    __slots__ = ("fn", "code")

    def __init__(self, fn: Callable[[np.ndarray, np.ndarray], None], code: int = -1) -> None:
        self.fn = fn
        self.code = code

    def __call__(self, acc: np.ndarray, other: np.ndarray) -> None:
        self.fn(acc, other)


class Plan:
    """How a group runs its algorithms; the same on every rank (agreed at formation)."""

    def __init__(self, world_size: int) -> None:
        self.arena: Any = None  # algorithms.arena.Arena when every rank is local
        self.cma = False  # every rank may read every other's memory directly
        # Ranks that share memory, one list per host (every rank alone when TCP is forced), and
        # the host-aware layout when the group spans hosts.
        self.hosts: list[list[int]] = [[r] for r in range(world_size)]
        self.hier: Any = None  # algorithms.hierarchical.Hier
        self._pipeline: concurrent.futures.ThreadPoolExecutor | None = None
        self.label = ""

    def pipeline_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """A helper thread for ops that overlap their network and shared-memory phases."""
        if self._pipeline is None:
            self._pipeline = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"sideband-{self.label}-net"
            )
        return self._pipeline

    @property
    def pipelined(self) -> bool:
        return self._pipeline is not None

    def close(self) -> None:
        if self._pipeline is not None:
            self._pipeline.shutdown(wait=False, cancel_futures=True)
        if self.arena is not None:
            self.arena.close()


EMPTY_PLAN = Plan(0)


class Op:
    """One rank's context for one collective operation."""

    __slots__ = ("comm", "tag", "desc", "rank", "n", "scratch", "plan")

    def __init__(
        self,
        comm: Any,
        tag: int,
        desc: int,
        scratch: Callable[[str, int], np.ndarray],
        plan: Plan = EMPTY_PLAN,
    ) -> None:
        self.comm = comm
        self.tag = tag
        self.desc = desc
        self.rank = comm.rank
        self.n = comm.world_size
        self.scratch = scratch
        self.plan = plan

    def exchange(
        self, sends: list[tuple[int, Any]], recvs: list[tuple[int, Any]]
    ) -> list[memoryview]:
        return self.comm.exchange(
            [(p, as_bytes(v)) for p, v in sends],
            [(p, None if v is None else as_bytes(v)) for p, v in recvs],
            KIND_COLL,
            self.tag,
            self.desc,
        )

    def sub(self, members: list[int]) -> Op:
        """This op restricted to ``members`` (which must include this rank), with no plan."""
        return Op(SubComm(self.comm, members), self.tag, self.desc, self.scratch)


class SubComm:
    """A comm seen through a subset of ranks: peer ``i`` is ``members[i]``."""

    rank: int
    world_size: int
    channels: dict[int, Any]
    local_pids: dict[int, int]
    abort: Callable[[BaseException], None]

    def __init__(self, comm: Comm | SubComm, members: list[int]) -> None:
        self.parent = comm
        self.members = members
        self.rank = members.index(comm.rank)
        self.world_size = len(members)
        self.channels = {i: comm.channels[m] for i, m in enumerate(members) if m != comm.rank}
        self.local_pids = {
            i: comm.local_pids[m] for i, m in enumerate(members) if m in comm.local_pids
        }
        self.abort = comm.abort

    def exchange(
        self,
        sends: list[tuple[int, memoryview]],
        recvs: list[tuple[int, memoryview | None]],
        kind: int,
        tag: int,
        desc: int,
    ) -> list[memoryview]:
        m = self.members
        return self.parent.exchange(
            [(m[p], v) for p, v in sends], [(m[p], v) for p, v in recvs], kind, tag, desc
        )


def as_bytes(a: Any) -> memoryview:
    """A flat byte view of an array or buffer."""
    if isinstance(a, np.ndarray):
        return a.reshape(-1).view(np.uint8).data
    return memoryview(a).cast("B")


def bounds(size: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` near-equal segments of ``range(size)``."""
    return [(i * size // parts, (i + 1) * size // parts) for i in range(parts)]


def pieces(lo: int, hi: int, per: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` cut into pieces of at most ``per``."""
    return [(a, min(a + per, hi)) for a in range(lo, hi, per)] or [(lo, hi)]
