"""Where the ranks are: which share memory (a *host*), and the host-aware plan.

A host is a set of ranks that can share memory (same boot and the same ``/dev/shm``), decided
from the roster, not by IP. Every rank derives the same hosts and the same plan from the roster,
with rank 0's settings, so all ranks agree without talking.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from sideband import config
from sideband.collective.algorithms.hierarchical import Hier
from sideband.collective.transports import shm
from sideband.collective.types import Backend

ENV = "SIDEBAND_HIERARCHICAL"
PIPE_ENV = "SIDEBAND_HIER_PIPELINE_BYTES"
log = logging.getLogger("sideband.collective")


def settings() -> dict[str, Any]:
    """This rank's entries of the roster that the group takes from rank 0 (validated here, so a
    bad value fails on the rank that has it, when the group forms)."""
    return {"hier": config.get(ENV), "hier_pipeline": config.get(PIPE_ENV)}


def host_key() -> str:
    """Equal for two processes exactly when they can share memory through /dev/shm.

    ``SIDEBAND_HOST_KEY`` splits one machine into several "hosts" (ranks with different values
    never share memory): for testing multi-host algorithms, or to keep shared memory off.
    """
    extra = config.get("SIDEBAND_HOST_KEY")
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        st = os.stat(shm.SHM_DIR)
        return f"{boot}:{st.st_dev}:{st.st_ino}:{extra}"
    except OSError as e:
        log.debug("no shared memory here (%s): this rank is a host of its own (TCP only)", e)
        return f"pid-{os.getpid()}"  # no shared memory: every rank is its own host


def hosts(roster: list[dict[str, Any]], backend: str) -> list[list[int]]:
    """Ranks that share memory, grouped per host in order of their lowest rank."""
    if backend == Backend.TCP.value:
        return [[e["rank"]] for e in roster]
    by_key: dict[str, list[int]] = {}
    for e in roster:
        by_key.setdefault(e["host_key"], []).append(e["rank"])
    return sorted(by_key.values())


def plan(hosts: list[list[int]], rank: int, roster: list[dict[str, Any]]) -> Hier | None:
    """The hierarchical plan, or None where flat algorithms are as good (or forced).

    Every rank derives it from the roster alone, with rank 0's settings, so all ranks agree
    even where their environments or core counts differ.
    """
    hier, _ = choice(hosts, roster)
    return Hier(hosts, rank, _pipeline_bytes(hosts, roster)) if hier else None


def choice(hosts: list[list[int]], roster: list[dict[str, Any]]) -> tuple[bool, str]:
    """Whether the plan is host-aware, and why (the formation log says it)."""
    mode = str(roster[0].get("hier") or "").strip().lower()
    if mode in ("0", "false", "off", "flat"):
        return False, f"flat ({ENV}={mode} on rank 0)"
    if len(hosts) < 2:
        return False, "flat (one host)"
    if mode not in ("1", "true", "on") and all(len(h) == 1 for h in hosts):
        # One rank per host: the flat algorithms already cross once per host.
        return False, "flat (one rank per host)"
    how = "forced" if mode in ("1", "true", "on") else "auto"
    pipe = _pipeline_bytes(hosts, roster)
    return True, f"host-aware over {len(hosts)} hosts ({how}, pipeline pieces {pipe} bytes)"


def _pipeline_bytes(hosts: list[list[int]], roster: list[dict[str, Any]]) -> int:
    """Piece size of pipelined allreduces (0: not pipelined).

    The network phase of one piece runs on a second thread beside the shared-memory phases of
    its neighbours: that pays only while every rank has a spare core for it. Where the cores are
    already busy (a 2-core machine with 2 ranks per host), the extra thread only adds switching,
    and the phases run one after the other. ``SIDEBAND_HIER_PIPELINE_BYTES`` (rank 0's) sets
    it; 0 turns it off.
    """
    env = roster[0].get("hier_pipeline")
    if env is not None:
        return int(env)
    spare = all(2 * len(h) <= int(roster[h[0]].get("cpus") or 1) for h in hosts)
    return 8 << 20 if spare else 0
