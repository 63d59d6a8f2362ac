"""Forming a group: session records in Ray's KV store, topology, and connecting the members.

Members meet in Ray's internal key-value store (no helper actor to leak), agree on a roster,
then connect: shared memory between ranks that can share it, authenticated TCP between the
others.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sideband.collective.algorithms.context import Plan
from sideband.collective.comm.engine import Comm
from sideband.collective.rendezvous import session
from sideband.collective.rendezvous.connect import connect
from sideband.collective.transports import shm

log = logging.getLogger("sideband.collective")


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
    log.debug(
        "group %r rank %d/%d: joining (backend %s, timeout %.1f s)",
        name, rank, world_size, backend, timeout_s,
    )  # fmt: skip
    shm.remove_stale_segments()
    rec, roster = session.agree(name, world_size, rank, backend, deadline, session_rec)
    log.debug(
        "group %r rank %d: roster agreed in session %s: %s",
        name, rank, rec["session"][:12],
        ", ".join(f"rank {e['rank']} pid {e['pid']} node {str(e['node_id'])[:12]}" for e in roster),
    )  # fmt: skip
    try:
        comm, plan = connect(name, rank, world_size, backend, rec, roster, deadline)
    except BaseException:
        if rank == 0 or session_rec is not None:
            session.retire_quietly(name, rec["session"])  # its secret leaves the KV too
        raise
    return Joined(rec["session"], roster, comm, plan, backend)
