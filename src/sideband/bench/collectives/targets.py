"""The issue's targets, and their ratios (sideband median / baseline median) in one run."""

from __future__ import annotations

from typing import Any

from sideband.bench.collectives.config import _MIB

# The targets: (what, op, world size, nbytes, sideband transport, baseline, goal).
TARGETS: tuple[tuple[str, str, int, int, str, str, float], ...] = (
    ("allreduce 64 MiB, 2 actors vs ray gloo", "allreduce", 2, 64 * _MIB, "shm", "ray_gloo", 0.5),
    ("allreduce 64 MiB, 2 actors vs MPICH", "allreduce", 2, 64 * _MIB, "shm", "mpich", 1.0),
    ("allreduce 64 MiB, 4 actors vs ray gloo", "allreduce", 4, 64 * _MIB, "shm", "ray_gloo", 0.5),
    ("allreduce 8 B, 2 actors vs ray gloo", "allreduce", 2, 8, "shm", "ray_gloo", 0.1),
    ("allreduce 8 B, 4 actors vs ray gloo", "allreduce", 4, 8, "shm", "ray_gloo", 0.2),
    ("allgather 64 MiB, 4 actors vs ray gloo", "allgather", 4, 64 * _MIB, "shm", "ray_gloo", 0.2),
    ("broadcast 64 MiB, 4 actors vs ray gloo", "broadcast", 4, 64 * _MIB, "shm", "ray_gloo", 0.5),
    ("send/recv 64 MiB vs one np.copyto", "send/recv", 2, 64 * _MIB, "shm", "memcpy", 1.2),
    (
        "tcp allreduce 64 MiB, 2 actors vs torch gloo",
        "allreduce",
        2,
        64 * _MIB,
        "tcp",
        "torch_gloo",
        1.0,
    ),
    ("create a group of 4 running actors vs ray gloo", "create", 4, 0, "shm", "ray_gloo", 0.2),
    # Group.empty buffers (issue 4, point 3): the gain over the rows above with ordinary arrays.
    (
        "send/recv 64 MiB, g.empty vs one np.copyto",
        "send/recv",
        2,
        64 * _MIB,
        "empty",
        "memcpy",
        1.2,
    ),
    (
        "allreduce 64 MiB, 4 actors, g.empty vs ray gloo",
        "allreduce",
        4,
        64 * _MIB,
        "empty",
        "ray_gloo",
        0.5,
    ),
)


def ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's target ratios (sideband median / baseline median) from one run's records."""
    idx = {(r["impl"], r["op"], r["world_size"], r["nbytes"], r["transport"]): r for r in records}
    out = []
    for what, op, ws, nbytes, transport, base, goal in TARGETS:
        sb = idx.get(("sideband", op, ws, nbytes, transport))
        bl = idx.get((base, op, ws, nbytes, None))
        ratio = sb["median_s"] / bl["median_s"] if sb and bl and bl["median_s"] > 0 else None
        out.append(
            {
                "target": what,
                "sideband_s": sb["median_s"] if sb else None,
                "baseline": base,
                "baseline_s": bl["median_s"] if bl else None,
                "ratio": ratio,
                "goal": goal,
                # "faster than MPICH" is strict; every other goal is "at most".
                "met": None
                if ratio is None
                else ratio < goal
                if base == "mpich"
                else ratio <= goal,
            }
        )
    return out
