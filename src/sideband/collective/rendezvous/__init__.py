"""Forming a group: session records in Ray's KV store, topology, and connecting the members.

Members meet in Ray's internal key-value store (no helper actor to leak), agree on a roster,
then connect: shared memory between ranks that can share it, authenticated TCP between the
others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sideband.collective.algorithms.context import Plan
from sideband.collective.comm.engine import Comm
from sideband.collective.rendezvous import session
from sideband.collective.rendezvous.connect import connect
from sideband.collective.transports import shm


@dataclass
class Joined:
    """What a member knows once the group is formed."""

    session: str
    roster: list[dict[str, Any]]
    comm: Comm
    plan: Plan
    backend: str


def join(
    name: str,
    world_size: int,
    rank: int,
    backend: str,
    timeout_s: float,
    session_rec: dict[str, Any] | None = None,
) -> Joined:
    """Register this process as ``rank`` of group ``name`` and connect to the other members."""
    deadline = time.monotonic() + timeout_s
    shm.remove_stale_segments()
    rec, roster = session.agree(name, world_size, rank, backend, deadline, session_rec)
    comm, plan = connect(name, rank, world_size, backend, rec, roster, deadline)
    return Joined(rec["session"], roster, comm, plan, backend)
