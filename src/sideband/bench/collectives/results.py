"""What a run measured: the records of every point, with their statistics, and bandwidths."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# NCCL-tests bus-bandwidth factors: busbw = algbw * factor(world size).
_BUS: dict[str, Callable[[int], float]] = {
    "allreduce": lambda n: 2 * (n - 1) / n,
    "allgather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "send/recv": lambda n: 1.0,
}


@dataclass
class Run:
    """What one benchmark run produced."""

    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    impls_run: set[str] = field(default_factory=set)

    def add(
        self, impl: str, op: str, ws: int, nbytes: int, transport: str | None, ts: list[float]
    ) -> None:
        self.impls_run.add(impl)
        self.records.append(
            {
                "impl": impl,
                "op": op,
                "world_size": ws,
                "nbytes": nbytes,
                "transport": transport,
                "median_s": statistics.median(ts),
                "min_s": min(ts),
                "max_s": max(ts),
            }
        )


def _per_iteration_max(per_rank: list[list[float]]) -> list[float]:
    return [max(c) for c in zip(*per_rank)]


def busbw(op: str, nbytes: int, ws: int, seconds: float) -> tuple[float, float]:
    """(algbw, busbw) in GB/s, NCCL-tests conventions."""
    if op not in _BUS or seconds <= 0:
        return 0.0, 0.0
    alg = nbytes / seconds / 1e9
    return alg, alg * _BUS[op](ws)
