"""MPI in a gang: mpi4py's COMM_WORLD spans the gang's actors, no mpiexec needed.

Run: python examples/mpi_allreduce.py   (needs: pip install 'sideband[mpi]')
"""

from __future__ import annotations

from typing import Any


def allreduce(n: int = 1 << 20) -> dict[str, Any]:
    """Runs on every member: MPI is already initialised by the gang."""
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    send = np.full(n, comm.Get_rank() + 1.0)
    recv = np.empty_like(send)
    comm.Allreduce(send, recv, op=MPI.SUM)
    return {"rank": comm.Get_rank(), "size": comm.Get_size(), "value": float(recv[0])}


def main(num_workers: int = 2, resources_per_worker: dict[str, float] | None = None) -> list[Any]:
    import ray

    from sideband import Gang

    if not ray.is_initialized():
        ray.init()
    with Gang(num_workers, resources_per_worker=resources_per_worker, setup="mpi") as gang:
        results = gang.run(allreduce)
    expected = num_workers * (num_workers + 1) / 2
    for r in results:
        print(f"rank {r['rank']} of {r['size']}: allreduce = {r['value']} (expected {expected})")
    assert all(r["value"] == expected for r in results)
    return results


if __name__ == "__main__":
    main()
