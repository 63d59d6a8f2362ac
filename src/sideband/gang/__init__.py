"""Gangs: wrap libraries that bring their own communication stack (torch.distributed, MPI, JAX).

``sideband.Gang(4, setup="torch").run(train_fn)`` places 4 Ray actors in one placement group,
ranks them, exports the env contract (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, NODE_RANK,
MASTER_ADDR, MASTER_PORT), initialises the library, and watches them as one.
"""

from __future__ import annotations

from sideband.errors import GangMemberError
from sideband.gang.contract import GangContext, context
from sideband.gang.gang import Gang
from sideband.gang.member import save_checkpoint
from sideband.gang.prestart import prestart
from sideband.gang.registry import list_gangs
from sideband.gang.setup import GangPlan, Setup, register_setup

__all__ = [
    "Gang",
    "GangContext",
    "GangMemberError",
    "GangPlan",
    "Setup",
    "context",
    "list_gangs",
    "prestart",
    "register_setup",
    "save_checkpoint",
]
