"""Setup "torch": a torch.distributed process group (gloo on CPU, nccl on GPU).

Rank 0 hands its already-listening MASTER_PORT socket to torch's TCPStore
(``master_listen_fd``), so the port is never free between being chosen and being used: the race
behind Ray Train's "Address already in use" (ray#34271, ray#35907) cannot happen.
"""

from __future__ import annotations

import datetime
import socket
from typing import Any

from sideband.errors import GangSetupError
from sideband.gang.contract import GangContext
from sideband.gang.setup import GangPlan, Setup, require


class TorchSetup(Setup):
    """``torch.distributed.init_process_group`` before ``fn``, destroyed at shutdown."""

    name = "torch"
    listen_master = True

    def prepare(self, plan: GangPlan) -> dict[str, Any]:
        return {"timeout_s": plan.timeout_s}

    def setup(
        self, ctx: GangContext, master_socket: socket.socket | None, options: dict[str, Any]
    ) -> None:
        torch = require("torch", "torch")
        dist = require("torch.distributed", "torch")
        backend = options.get("backend") or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            # Ray sets CUDA_VISIBLE_DEVICES to this member's GPUs; ranks follow GPU ids already.
            torch.cuda.set_device(0)
        timeout = datetime.timedelta(seconds=float(options.get("timeout_s", 120.0)))
        if ctx.rank == 0:
            if master_socket is None:
                raise GangSetupError("torch setup: rank 0 got no MASTER_PORT socket")
            # detach(): torch's server now owns the fd and closes it itself.
            store = dist.TCPStore(
                ctx.master_addr,
                ctx.master_port,
                ctx.world_size,
                True,
                timeout,
                wait_for_workers=False,
                master_listen_fd=master_socket.detach(),
            )
        else:
            store = dist.TCPStore(ctx.master_addr, ctx.master_port, ctx.world_size, False, timeout)
        dist.init_process_group(
            backend, store=store, rank=ctx.rank, world_size=ctx.world_size, timeout=timeout
        )

    def before_run(self, ctx: GangContext) -> None:
        dist = require("torch.distributed", "torch")
        if not dist.is_initialized():
            raise GangSetupError(
                f"rank {ctx.rank}: the torch process group was destroyed by an earlier fn; "
                "leave it to the gang (it is destroyed at shutdown) or create a new gang"
            )

    def teardown(self, ctx: GangContext) -> None:
        dist = require("torch.distributed", "torch")
        if dist.is_initialized():
            dist.destroy_process_group()
