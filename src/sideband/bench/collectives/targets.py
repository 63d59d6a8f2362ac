"""The issue's targets, and their ratios (sideband median / baseline median) in one run."""

from __future__ import annotations

from typing import Any

from sideband.bench.collectives.config import _MIB

# Issue 15's targets: (what, ops, world sizes, smallest and largest nbytes, sideband transport,
# baseline, goal). A row holds when every point it covers does: the table shows its worst point.
_EVERY_OP = ("allreduce", "broadcast", "allgather", "reduce_scatter", "send/recv", "barrier")
_SIZED = tuple(op for op in _EVERY_OP if op != "barrier")
_ALL = 1 << 62
TARGETS: tuple[tuple[str, tuple[str, ...], tuple[int, ...], int, int, str, str, float], ...] = (
    ("shm, 2 ranks, every op, 8 B - 1 MiB vs MPICH", _EVERY_OP, (2,), 0, _MIB, "shm", "mpich", 2.5),
    ("shm, 2 ranks, >= 4 MiB vs MPICH", _SIZED, (2,), 4 * _MIB, _ALL, "shm", "mpich", 1.0),
    ("shm, 4 ranks, every op and size vs MPICH", _EVERY_OP, (4,), 0, _ALL, "shm", "mpich", 3.0),
    ("shm, 4 ranks, >= 4 MiB vs MPICH", _SIZED, (4,), 4 * _MIB, _ALL, "shm", "mpich", 1.0),
    (
        "tcp, 2 and 4 ranks, every op and size vs torch gloo",
        _EVERY_OP,
        (2, 4),
        0,
        _ALL,
        "tcp",
        "torch_gloo",
        1.0,
    ),
    ("moonshot: shm, every point vs MPICH", _EVERY_OP, (2, 4), 0, _ALL, "shm", "mpich", 1.0),
)


def _range_row(
    idx: dict[tuple, dict[str, Any]],
    what: str,
    ops: tuple[str, ...],
    wss: tuple[int, ...],
    lo: int,
    hi: int,
    transport: str,
    base: str,
) -> dict[str, Any]:
    """The worst measured point of one range target (None fields when none was measured)."""
    worst: tuple[float, dict[str, Any], dict[str, Any]] | None = None
    for (impl, op, ws, nbytes, tr), sb in idx.items():
        if impl != "sideband" or tr != transport or op not in ops or ws not in wss:
            continue
        if op != "barrier" and not lo <= nbytes <= hi:
            continue
        bl = idx.get((base, op, ws, nbytes, None))
        if bl is None or bl["median_s"] <= 0:
            continue
        ratio = sb["median_s"] / bl["median_s"]
        if worst is None or ratio > worst[0]:
            worst = (ratio, sb, bl)
    if worst is None:
        return {
            "target": what,
            "point": None,
            "sideband_s": None,
            "baseline_s": None,
            "ratio": None,
        }
    ratio, sb, bl = worst
    point = f"{sb['op']} {sb['world_size']}r" + (
        f" {_size(sb['nbytes'])}" if sb["op"] != "barrier" else ""
    )
    return {
        "target": what,
        "point": point,
        "sideband_s": sb["median_s"],
        "baseline_s": bl["median_s"],
        "ratio": ratio,
    }


def _size(n: int) -> str:
    for unit, f in (("MiB", _MIB), ("KiB", 1024)):
        if n >= f and n % f == 0:
            return f"{n // f} {unit}"
    return f"{n} B"


def ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 15's target rows (worst sideband median / baseline median of each) in one run."""
    idx = {(r["impl"], r["op"], r["world_size"], r["nbytes"], r["transport"]): r for r in records}
    out = []
    for what, ops, wss, lo, hi, transport, base, goal in TARGETS:
        row = _range_row(idx, what, ops, wss, lo, hi, transport, base)
        ratio = row["ratio"]
        row.update(baseline=base, goal=goal, met=None if ratio is None else ratio <= goal)
        out.append(row)
    return out
