"""GPU tests: one Ray for the session with the machine's GPUs, actors sharing them fractionally."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def gpu_ray(ray_session_gpu_init: None, ray_session: None) -> Iterator[None]:
    """Ray with the GPUs declared (``ray_session`` then reuses this instance)."""
    yield


@pytest.fixture(scope="session")
def ray_session_gpu_init() -> Iterator[None]:
    import ray

    started = False
    if not ray.is_initialized():
        import torch

        ray.init(
            address="local",  # a new instance, never a leftover one
            num_cpus=max(4, os.cpu_count() or 4),
            num_gpus=torch.cuda.device_count(),
            include_dashboard=False,
            object_store_memory=1024 * 1024 * 1024,
            _node_ip_address="127.0.0.1",
        )
        started = True
    yield
    if started:
        ray.shutdown()
