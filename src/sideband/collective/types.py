"""Public enums of the collective layer, named as in ``ray.util.collective.types``."""

from __future__ import annotations

from enum import Enum


class ReduceOp(Enum):
    """How values from all ranks are combined."""

    SUM = 0
    PRODUCT = 1
    MIN = 2
    MAX = 3
    AVG = 4
    BAND = 5
    BOR = 6
    BXOR = 7


class Backend(str, Enum):
    """Backends a group can run on.

    ``AUTO`` (the default) and ``NATIVE`` pick shared memory between ranks that can share it and
    TCP between the others. ``GLOO`` is accepted for code written for ``ray.util.collective`` and
    runs sideband's native CPU backend. ``SHM`` and ``TCP`` force one transport for every pair.
    ``TORCH_GLOO`` and ``NCCL`` / ``TORCH_NCCL`` are torch.distributed's (``sideband[torch]``).
    """

    AUTO = "auto"
    NATIVE = "native"
    SHM = "shm"
    TCP = "tcp"
    GLOO = "gloo"
    TORCH_GLOO = "torch_gloo"
    NCCL = "nccl"
    TORCH_NCCL = "torch_nccl"
