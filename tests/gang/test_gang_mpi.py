"""Gangs with the "mpi" setup: a real COMM_WORLD served by the driver's PMI, no mpiexec."""

from __future__ import annotations

import gang_helpers
import pytest
from gang_helpers import ZERO, ship_by_value, wait_pids_gone

from sideband.gang import Gang, context
from sideband.gang.pmi import process_mapping

pytest.importorskip("mpi4py")
ship_by_value(__name__)
ship_by_value(gang_helpers.__name__)


def _mpi_checks() -> dict:
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    total = np.zeros(2)
    comm.Allreduce(np.array([rank + 1.0, 1.0]), total, op=MPI.SUM)
    # A ring: everyone sends its rank to the right and receives from the left.
    buf = np.empty(1, dtype=np.int64)
    req = comm.Irecv(buf, source=(rank - 1) % size, tag=7)
    comm.Send(np.array([rank], dtype=np.int64), dest=(rank + 1) % size, tag=7)
    req.Wait()
    return {
        "rank": rank,
        "size": size,
        "gang_rank": context().rank,
        "sum": total.tolist(),
        "from_left": int(buf[0]),
        "obj": comm.allgather(f"r{rank}"),
    }


@pytest.mark.parametrize("n", [2, 4])
def test_mpi_allreduce_and_ring(ray_session: None, n: int) -> None:
    with Gang(n, resources_per_worker=ZERO, setup="mpi") as gang:
        out = gang.run(_mpi_checks)
        again = gang.run(_mpi_checks)  # MPI stays initialised between runs
    assert again == out
    for r, res in enumerate(out):
        assert res["rank"] == res["gang_rank"] == r
        assert res["size"] == n
        assert res["sum"] == [n * (n + 1) / 2, float(n)]
        assert res["from_left"] == (r - 1) % n
        assert res["obj"] == [f"r{i}" for i in range(n)]
    assert wait_pids_gone([m["pid"] for m in gang.members]) == []


def test_process_mapping() -> None:
    assert process_mapping((4,)) == "(vector,(0,1,4))"
    assert process_mapping((2, 2, 1)) == "(vector,(0,2,2),(2,1,1))"
