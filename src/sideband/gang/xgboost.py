"""Setup "xgboost": a RabitTracker on the driver, ``xgboost.collective`` up in every member.

The tracker runs in the driver process (a C++ thread of libxgboost), bound to the gang's master
address and, when set, a port of SIDEBAND_PORT_RANGE. Every member initialises the collective
with task id = its gang rank (sorted by task), so XGBoost's rank is the gang rank; ``fn`` calls
``xgb.train`` on its shard and the members train one model together. The communicator lives as
long as the gang and is finalised at shutdown.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from sideband.errors import GangSetupError
from sideband.gang.contract import GangContext
from sideband.gang.ports import pick_port
from sideband.gang.setup import GangPlan, Setup, require

log = logging.getLogger(__name__)


class XGBoostSetup(Setup):
    """``xgboost.collective.init`` against the driver's tracker before ``fn``."""

    name = "xgboost"
    preload = ("xgboost",)

    def __init__(self) -> None:
        self._tracker: Any = None
        self._initialised = False

    def prepare(self, plan: GangPlan) -> dict[str, Any]:
        require("xgboost", "xgboost")
        from xgboost.tracker import RabitTracker

        if plan.single_node:
            host = "127.0.0.1"
        else:
            import ray

            host = ray.util.get_node_ip_address()
        self._tracker = RabitTracker(
            n_workers=plan.world_size,
            host_ip=host,
            port=pick_port(host),
            sortby="task",
            # No timeout of its own: the gang's deadline bounds the bootstrap, and its failure
            # watch (not a timer) ends a training whose member died.
            timeout=0,
        )
        self._tracker.start()
        return {"worker_args": self._tracker.worker_args()}

    def release(self) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is None:
            return
        try:
            tracker.wait_for(timeout=1)  # every member finalised: the tracker is done
        except Exception:
            pass  # members were killed: free() stops it anyway
        try:
            tracker.free()
        except Exception as e:
            log.debug("xgboost tracker free: %s", e)

    def setup(
        self, ctx: GangContext, master_socket: socket.socket | None, options: dict[str, Any]
    ) -> None:
        if master_socket is not None:
            master_socket.close()  # the tracker, not rank 0, is the rendezvous
        require("xgboost", "xgboost")
        from xgboost import collective

        # CommunicatorContext finds NCCL for GPU training; its arguments are what init takes.
        args = collective.CommunicatorContext(
            **options["worker_args"],
            dmlc_task_id=f"{ctx.rank:08d}",
        ).args
        collective.init(**args)
        self._initialised = True
        if (collective.get_rank(), collective.get_world_size()) != (ctx.rank, ctx.world_size):
            raise GangSetupError(
                f"rank {ctx.rank}: xgboost.collective gave rank {collective.get_rank()} of "
                f"{collective.get_world_size()}, expected {ctx.rank} of {ctx.world_size}"
            )

    def teardown(self, ctx: GangContext) -> None:
        if self._initialised:
            from xgboost import collective

            collective.finalize()
            self._initialised = False
