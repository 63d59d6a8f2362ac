"""The env contract every gang member sees, as environment variables and as an object."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from sideband import config
from sideband.errors import GangError

# The torchrun-style names that torch.distributed, DeepSpeed, Horovod-style launchers and most
# training scripts read on their own.
ENV_KEYS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)


@dataclass(frozen=True)
class GangContext:
    """Where this member stands in its gang (the same values as the env contract)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    master_addr: str
    master_port: int
    gang_name: str = ""
    attempt: int = 0
    node_id: str = ""
    #: The last value any member passed to ``save_checkpoint`` in an earlier attempt, else None.
    checkpoint: Any = field(default=None, compare=False, repr=False)

    def env(self) -> dict[str, str]:
        """The env contract as a dict of strings."""
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "NODE_RANK": str(self.node_rank),
            # torchrun's name for the node rank; some launchers read it instead.
            "GROUP_RANK": str(self.node_rank),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "SIDEBAND_GANG": self.gang_name,
            "SIDEBAND_GANG_ATTEMPT": str(self.attempt),
        }

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("checkpoint")
        return d


_current: GangContext | None = None


def _install(ctx: GangContext) -> None:
    """Called on the member: export the env contract and remember the context."""
    global _current
    os.environ.update(ctx.env())
    _current = ctx


def context() -> GangContext:
    """This member's place in its gang.

    Inside a gang member it is the object installed by the gang; in a subprocess a member
    started, it is rebuilt from the env contract (without the checkpoint).
    """
    if _current is not None:
        return _current
    env = os.environ
    gang = config.get("SIDEBAND_GANG")
    if gang is not None and all(k in env for k in ENV_KEYS):
        return GangContext(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env["LOCAL_RANK"]),
            local_world_size=int(env["LOCAL_WORLD_SIZE"]),
            node_rank=int(env["NODE_RANK"]),
            master_addr=env["MASTER_ADDR"],
            master_port=int(env["MASTER_PORT"]),
            gang_name=gang,
            attempt=config.get("SIDEBAND_GANG_ATTEMPT"),
        )
    raise GangError(
        "sideband.gang.context() was called outside a gang member: call it inside a function "
        "passed to Gang.run / Gang.execute_single"
    )
