"""Setup "mpi": a real ``mpi4py.MPI.COMM_WORLD`` spanning the gang, in gang rank order.

No ``mpiexec``: the driver serves PMI (sideband.gang.pmi) and each member initialises MPICH
against it, so members stay Ray actors controlled from the driver. MPI can be initialised only
once per process; a gang's members are fresh processes, and a restarted gang gets new ones.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from sideband.errors import GangSetupError
from sideband.gang.contract import GangContext
from sideband.gang.pmi import PMIServer
from sideband.gang.setup import GangPlan, Setup, require


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
        return {"pmi_port": self._server.address}

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
        os.environ["PMI_ID"] = str(ctx.rank)
        for stale in ("PMI_FD", "PMI_RANK", "PMI_SIZE", "PMIX_RANK"):
            os.environ.pop(stale, None)
        require("mpi4py", "mpi")
        mpi = require("mpi4py.MPI", "mpi")  # importing it runs MPI_Init
        comm = mpi.COMM_WORLD
        if (comm.Get_rank(), comm.Get_size()) != (ctx.rank, ctx.world_size):
            raise GangSetupError(
                f"rank {ctx.rank}: MPI gave rank {comm.Get_rank()} of {comm.Get_size()}, expected "
                f"rank {ctx.rank} of {ctx.world_size}; was mpi4py imported before the gang set up?"
            )

    def teardown(self, ctx: GangContext) -> None:
        mpi = require("mpi4py.MPI", "mpi")
        if mpi.Is_initialized() and not mpi.Is_finalized():
            mpi.Finalize()
