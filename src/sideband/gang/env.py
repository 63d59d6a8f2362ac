"""Setup "env": only the env contract, for libraries that rendezvous on their own.

Horovod-style and DeepSpeed-style launchers read RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
themselves and bind MASTER_PORT inside ``fn``. Rank 0 holds the port until the first ``fn``
starts, then releases it for the library: a library that takes no socket from outside cannot be
handed one, so a short window remains (see docs/gangs.md).
"""

from __future__ import annotations

import socket
from typing import Any

from sideband.gang.contract import GangContext
from sideband.gang.setup import Setup


class EnvSetup(Setup):
    """Export the env contract; nothing else."""

    name = "env"

    def __init__(self) -> None:
        self._held: socket.socket | None = None

    def setup(
        self, ctx: GangContext, master_socket: socket.socket | None, options: dict[str, Any]
    ) -> None:
        self._held = master_socket

    def before_run(self, ctx: GangContext) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    def teardown(self, ctx: GangContext) -> None:
        self.before_run(ctx)
