"""Setup "jax": ``jax.distributed.initialize`` with its coordinator on rank 0.

JAX's coordinator binds its port itself and takes no socket from outside, so rank 0 releases the
held MASTER_PORT right before ``initialize``; if the port was taken in that window, the gang
forms again on a fresh port (see ``Gang``'s rendezvous retry).
"""

from __future__ import annotations

import socket
from typing import Any

from sideband.gang.contract import GangContext
from sideband.gang.setup import GangPlan, Setup, require


class JaxSetup(Setup):
    """One JAX process per member; on CPU, cross-process collectives go through gloo."""

    name = "jax"

    def prepare(self, plan: GangPlan) -> dict[str, Any]:
        return {"timeout_s": plan.timeout_s}

    def setup(
        self, ctx: GangContext, master_socket: socket.socket | None, options: dict[str, Any]
    ) -> None:
        jax = require("jax", "jax")
        if options.get("cpu_collectives", "gloo"):
            try:
                jax.config.update(
                    "jax_cpu_collectives_implementation", options.get("cpu_collectives", "gloo")
                )
            except Exception:  # older/newer jax without this flag: its default is fine
                pass
        if master_socket is not None:
            master_socket.close()
        jax.distributed.initialize(
            coordinator_address=f"{ctx.master_addr}:{ctx.master_port}",
            num_processes=ctx.world_size,
            process_id=ctx.rank,
            initialization_timeout=int(options.get("timeout_s", 120)),
        )

    def teardown(self, ctx: GangContext) -> None:
        jax = require("jax", "jax")
        jax.distributed.shutdown()
