"""Everything a gang can leave behind, and the one place that releases it."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from sideband.gang import checkpoint as _checkpoint
from sideband.gang import registry
from sideband.gang.setup import Setup

log = logging.getLogger(__name__)

#: How long release waits for Ray to have really freed the gang (members gone, group removed).
RELEASE_WAIT_S = 10.0
_POLL_S = 0.01


@dataclass
class Resources:
    """Members, placement group and driver-side setup; released by shutdown, a failure, or
    garbage collection."""

    members: list[Any] = field(default_factory=list)
    pg: Any = None
    driver_setup: Setup | None = None
    #: pids of the members on the driver's node (known once they answered ``info``).
    local_pids: list[int] = field(default_factory=list)

    def release(self, wait_s: float = RELEASE_WAIT_S) -> None:
        """Kill the members, remove the placement group, and wait (up to ``wait_s``) until Ray
        has done both: the next placement then finds the resources free, instead of waiting
        for Ray's asynchronous removal."""
        import ray

        members, self.members = self.members, []
        pg, self.pg = self.pg, None
        pids, self.local_pids = self.local_pids, []
        driver_setup, self.driver_setup = self.driver_setup, None
        if ray.is_initialized():
            actor_ids = []
            for m in members:
                try:
                    actor_ids.append(m._actor_id.hex())
                    ray.kill(m, no_restart=True)
                except Exception:  # already dead
                    pass
            if pg is not None:
                try:
                    from ray.util.placement_group import remove_placement_group

                    remove_placement_group(pg)
                except Exception:
                    pass
            if wait_s > 0 and (actor_ids or pg is not None):
                pg_hex = pg.id.hex() if pg is not None else None
                if not _wait_freed(pg_hex, actor_ids, pids, wait_s):
                    log.warning(
                        "gang members or placement group still held by Ray %.0fs after release",
                        wait_s,
                    )
        if driver_setup is not None:
            for step in (driver_setup.stop, driver_setup.release):
                try:
                    step()
                except Exception as e:  # the members are gone; never fail a cleanup over it
                    log.warning("gang driver-side %s failed: %s", step.__name__, e)


def _wait_freed(pg_hex: str | None, actor_ids: list[str], pids: list[int], wait_s: float) -> bool:
    """Until the group's resources left the cluster's view (what Ray's scheduler places by),
    every member is DEAD in the GCS, and the local members' processes are gone."""
    import ray
    from ray._private import state

    deadline = time.monotonic() + wait_s
    while True:
        try:
            pids = [p for p in pids if _alive(p)]
            actor_ids = [a for a in actor_ids if state.actors(actor_id=a).get("State") != "DEAD"]
            held = pg_hex is not None and any(k.endswith(pg_hex) for k in ray.cluster_resources())
        except Exception:  # Ray is going away: nothing left to wait for
            return True
        if not (pids or actor_ids or held):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_S)


def _alive(pid: int) -> bool:
    if not os.path.isdir("/proc"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie holds nothing
    except OSError:
        return False


def finalize(res: Resources, name: str) -> None:
    """Release everything and forget the gang in the cluster (registry entry, checkpoint)."""
    import ray

    res.release()
    if ray.is_initialized():
        try:
            registry.remove(name)
            _checkpoint.delete(name)
        except Exception:
            pass
