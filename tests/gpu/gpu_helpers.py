"""Actors for the GPU tests: several share the one GPU (fractional num_gpus)."""

from __future__ import annotations

import ray


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


HAS_CUDA = _cuda()


@ray.remote(num_cpus=0, num_gpus=0.2)
class GpuMember:
    """A plain actor on a fraction of a GPU: tests run code in it via __ray_call__."""

    def ready(self) -> str:
        import torch

        torch.cuda.init()
        return torch.cuda.get_device_name(0)
