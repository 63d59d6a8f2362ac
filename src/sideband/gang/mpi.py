"""Setup "mpi": a real ``mpi4py.MPI.COMM_WORLD`` spanning the gang, in gang rank order.

No ``mpiexec``: the driver serves PMI (sideband.gang.pmi) and each member initialises MPICH
against it, so members stay Ray actors controlled from the driver. MPI can be initialised only
once per process; a gang's members are fresh processes, and a restarted gang gets new ones.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from sideband.errors import GangSetupError
from sideband.gang.contract import GangContext
from sideband.gang.pmi import PMIServer
from sideband.gang.setup import GangPlan, Setup, require


def check_library(version: str, rank: int) -> None:
    """Refuse an MPI the gang cannot serve: Open MPI (and other PMIx-only MPIs) need their own
    launcher; the gang speaks PMI-1, MPICH's protocol."""
    if "open mpi" in version.lower() or "pmix" in version.lower():
        first = version.strip().splitlines()[0] if version.strip() else version
        raise GangSetupError(
            f"rank {rank}: mpi4py is linked to {first!r}, which starts only under its own "
            "launcher (PMIx: mpirun/prterun). The mpi gang speaks PMI-1 (MPICH's protocol): "
            "pip install 'sideband[mpi]' (mpi4py with the mpich wheel), or point mpi4py at an "
            "MPICH-ABI library (MPI4PY_LIBMPI / the mpi4py[mpich] wheels)"
        )


class MPISetup(Setup):
    """MPI_Init in every member against a PMI server run by the driver."""

    name = "mpi"

    def __init__(self) -> None:
        self._server: PMIServer | None = None

    def prepare(self, plan: GangPlan) -> dict[str, Any]:
        require("mpi4py", "mpi")  # fail on the driver, before any member waits in MPI_Init
        # Single-node gangs stay on loopback; otherwise members reach the driver's node address.
        if plan.single_node:
            host = "127.0.0.1"
        else:
            import ray

            host = ray.util.get_node_ip_address()
        self._server = PMIServer(plan.world_size, plan.node_sizes, host)
        # Each rank's PMI_ID is its one-time secret for the PMI server (see sideband.gang.pmi).
        return {"pmi_port": self._server.address, "pmi_ids": self._server.tokens}

    def failure_note(self) -> str | None:
        if self._server is not None and self._server.aborted:
            return f"MPI_Abort was called ({self._server.aborted})"
        return None

    def release(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def setup(
        self, ctx: GangContext, master_socket: socket.socket | None, options: dict[str, Any]
    ) -> None:
        if master_socket is not None:
            master_socket.close()  # MPI does not use MASTER_PORT
        os.environ["PMI_PORT"] = options["pmi_port"]
        os.environ["PMI_ID"] = str(options["pmi_ids"][ctx.rank])
        for stale in ("PMI_FD", "PMI_RANK", "PMI_SIZE", "PMIX_RANK"):
            os.environ.pop(stale, None)
        mpi4py = require("mpi4py", "mpi")
        if "mpi4py.MPI" in sys.modules and sys.modules["mpi4py.MPI"].Is_initialized():
            raise GangSetupError(
                f"rank {ctx.rank}: MPI was initialised in this process before the gang set it up "
                "(mpi4py.MPI imported at actor start?); import mpi4py.MPI inside fn only"
            )
        mpi4py.rc.initialize = False  # look at the library before MPI_Init talks to us
        mpi = require("mpi4py.MPI", "mpi")
        check_library(mpi.Get_library_version(), ctx.rank)
        mpi.Init_thread(mpi.THREAD_MULTIPLE)
        comm = mpi.COMM_WORLD
        if (comm.Get_rank(), comm.Get_size()) != (ctx.rank, ctx.world_size):
            raise GangSetupError(
                f"rank {ctx.rank}: MPI gave rank {comm.Get_rank()} of {comm.Get_size()}, expected "
                f"rank {ctx.rank} of {ctx.world_size}"
            )

    def teardown(self, ctx: GangContext) -> None:
        mpi = require("mpi4py.MPI", "mpi")
        if mpi.Is_initialized() and not mpi.Is_finalized():
            mpi.Finalize()
