"""Shared fixtures: one Ray instance for the whole test session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Tests talk over loopback only: sideband's listeners bind there, and so does Ray.
os.environ.setdefault("SIDEBAND_HOST", "127.0.0.1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

# Ray workers must import test modules (functions shipped into actors are pickled by reference):
# give them the same folders pytest puts on sys.path. Ray's processes inherit this environment.
_here = os.path.dirname(os.path.abspath(__file__))
_dirs = [_here] + [
    os.path.join(_here, d)
    for d in sorted(os.listdir(_here))
    if os.path.isdir(os.path.join(_here, d))
]
os.environ["PYTHONPATH"] = os.pathsep.join(
    _dirs + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray started once per test session and shut down at its end."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(
            # Always a fresh local instance, never a cluster that happens to run on this machine
            # (ray.init() alone joins whatever /tmp/ray/ray_current_cluster points at).
            address="local",
            num_cpus=4,
            include_dashboard=False,
            object_store_memory=512 * 1024 * 1024,
            _node_ip_address="127.0.0.1",
        )
        started = True
    yield
    if started:
        ray.shutdown()
