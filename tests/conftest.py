"""Shared fixtures: one Ray instance for the whole test session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Keep Ray quiet and small: many tests run actors with num_cpus=0 on 2-core machines.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray started once per test session and shut down at its end."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            object_store_memory=512 * 1024 * 1024,
            log_to_driver=True,
        )
        started = True
    yield
    if started:
        ray.shutdown()
