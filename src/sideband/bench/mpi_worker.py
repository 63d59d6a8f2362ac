"""The MPI side of ``sideband bench``: run under ``mpiexec -n N python -m sideband.bench.mpi_worker``.

Reads a JSON spec of points written by :mod:`sideband.bench.collectives`, times each op with the
same loop as the Ray actors (barrier, warm-ups, perf_counter around the op), gathers every
rank's times on rank 0 and writes, per point, each iteration's maximum over ranks.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _op_fn(comm: Any, mpi: Any, op: str, count: int, chunk: int) -> Callable[[], None]:
    """The op on freshly allocated buffers shaped like the actors' (float32, NCCL-tests sizes)."""
    rank, ws = comm.Get_rank(), comm.Get_size()
    if op in ("allreduce", "broadcast", "send/recv"):
        x = np.ones(count, np.float32)
    if op == "allreduce":
        return lambda: comm.Allreduce(mpi.IN_PLACE, x, op=mpi.SUM)
    if op == "broadcast":
        return lambda: comm.Bcast(x, root=0)
    if op == "allgather":
        xs, out = np.ones(chunk, np.float32), np.zeros((ws, chunk), np.float32)
        return lambda: comm.Allgather(xs, out)
    if op == "reduce_scatter":
        x2, out = np.ones((ws, chunk), np.float32), np.zeros(chunk, np.float32)
        return lambda: comm.Reduce_scatter_block(x2, out, op=mpi.SUM)
    if op == "send/recv":
        if rank == 0:
            return lambda: comm.Send(x, dest=1, tag=7)
        if rank == 1:
            return lambda: comm.Recv(x, source=0, tag=7)
        return lambda: None
    if op == "barrier":
        return comm.Barrier
    raise ValueError(f"mpi_worker: unknown op {op!r}")


def main(argv: list[str] | None = None) -> int:
    """Run every point of ``--spec`` and write the per-iteration maxima to ``--out`` (rank 0)."""
    p = argparse.ArgumentParser(prog="python -m sideband.bench.mpi_worker", description=__doc__)
    p.add_argument("--spec", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, ws = comm.Get_rank(), comm.Get_size()
    with open(args.spec) as f:
        spec = json.load(f)
    # Correctness once, outside any timed loop.
    v = np.full(1024, rank + 1, np.float32)
    comm.Allreduce(MPI.IN_PLACE, v, op=MPI.SUM)
    oks = comm.gather(bool(np.all(v == ws * (ws + 1) / 2)), root=0)
    points = []
    for pt in spec["points"]:
        fn = _op_fn(comm, MPI, pt["op"], pt["count"], pt["chunk"])
        times = []
        for i in range(pt["warmup"] + pt["iters"]):
            comm.Barrier()
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if i >= pt["warmup"]:
                times.append(dt)
        per_rank = comm.gather(times, root=0)
        if rank == 0:
            assert per_rank is not None  # the root gathers
            points.append({**pt, "times": [max(c) for c in zip(*per_rank)]})
    if rank == 0:
        assert oks is not None  # the root gathers
        with open(args.out, "w") as f:
            json.dump(
                {
                    "verified": all(oks),
                    "library": MPI.Get_library_version().splitlines()[0].strip(),
                    "points": points,
                },
                f,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
