"""Everything a gang can leave behind, and the one place that releases it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sideband.gang import checkpoint as _checkpoint
from sideband.gang import registry
from sideband.gang.setup import Setup

log = logging.getLogger(__name__)


@dataclass
class Resources:
    """Members, placement group and driver-side setup; released by shutdown, a failure, or
    garbage collection."""

    members: list[Any] = field(default_factory=list)
    pg: Any = None
    driver_setup: Setup | None = None

    def release(self) -> None:
        import ray

        members, self.members = self.members, []
        pg, self.pg = self.pg, None
        driver_setup, self.driver_setup = self.driver_setup, None
        if ray.is_initialized():
            for m in members:
                try:
                    ray.kill(m, no_restart=True)
                except Exception:  # already dead
                    pass
            if pg is not None:
                try:
                    from ray.util.placement_group import remove_placement_group

                    remove_placement_group(pg)
                except Exception:
                    pass
        if driver_setup is not None:
            for step in (driver_setup.stop, driver_setup.release):
                try:
                    step()
                except Exception as e:  # the members are gone; never fail a cleanup over it
                    log.warning("gang driver-side %s failed: %s", step.__name__, e)


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
