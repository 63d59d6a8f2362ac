"""Actors for the sideband tensor transport tests (imported by Ray's workers too)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import numpy as np
import ray

import sideband.rdt

# Ray checks tensor_transport names when @ray.method runs: in the test process and in every
# worker that imports this module.
sideband.rdt.register()


def proc_memory(pid: int | None = None) -> dict[str, int]:
    """RSS (anonymous + shared, in bytes), memfd fds and memfd mappings of a process."""
    pid = os.getpid() if pid is None else pid
    out = {"rss": 0, "memfds": 0, "mappings": 0}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1]) * 1024
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:sideband"):
                out["memfds"] += 1
        except OSError:
            pass
    with open(f"/proc/{pid}/maps") as f:
        out["mappings"] = sum(1 for line in f if "/memfd:sideband" in line)
    return out


class _Common:
    def pid(self) -> int:
        return os.getpid()

    def memory(self) -> dict[str, int]:
        import gc

        gc.collect()
        return proc_memory()

    def stats(self) -> dict[str, Any]:
        import gc

        gc.collect()
        return sideband.rdt.stats()

    def configure(self, **kw: Any) -> None:
        sideband.rdt.configure(**kw)

    def trim(self) -> None:
        sideband.rdt.trim()


@ray.remote(num_cpus=0)
class Producer(_Common):
    def __init__(self) -> None:
        self.kept: Any = None

    @ray.method(tensor_transport="sideband")
    def full(self, n: int, value: float = 1.0) -> Any:
        import torch

        return torch.full((n,), value)

    @ray.method(tensor_transport="sideband")
    def make(self, spec: str) -> Any:
        import torch

        if spec == "mixed":
            return {
                "a": torch.arange(10, dtype=torch.int64),
                "b": torch.ones(3, 4, dtype=torch.bfloat16) * 1.5,
                "c": torch.tensor(True),
                "d": torch.empty(0, 5),
                "e": torch.arange(20.0).reshape(4, 5).t(),  # not contiguous
                "big": torch.arange(1 << 18, dtype=torch.float64),
                "note": "not a tensor",
            }
        raise ValueError(spec)

    @ray.method(tensor_transport="sideband")
    def keep_and_return(self, n: int) -> Any:
        import torch

        self.kept = torch.zeros(n)
        return self.kept

    def mutate_kept(self, value: float) -> None:
        self.kept.fill_(value)

    @ray.method(tensor_transport="sideband")
    def shared(self, n: int, value: float) -> Any:
        """A tensor in shared memory: exported in place (no copy), so it is live."""
        self.kept = sideband.rdt.empty(n).fill_(value)
        return self.kept

    @ray.method(tensor_transport="sideband_numpy")
    def shared_numpy(self, n: int) -> Any:
        self.kept = sideband.rdt.empty(n, np.int32, numpy=True)
        self.kept[:] = np.arange(n, dtype=np.int32)
        return self.kept

    @ray.method(tensor_transport="sideband_numpy")
    def numpy(self, n: int) -> Any:
        return np.arange(n, dtype=np.int32)

    def die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


@ray.remote(num_cpus=0, enable_tensor_transport=True)
class Consumer(_Common):
    def __init__(self) -> None:
        self.held: list[Any] = []

    def total(self, x: Any) -> float:
        return float(x.sum())

    def describe(self, x: Any) -> Any:
        import torch

        def one(v: Any) -> Any:
            if isinstance(v, torch.Tensor):
                return ("tensor", tuple(v.shape), str(v.dtype), v.float().sum().item())
            if isinstance(v, np.ndarray):
                return ("ndarray", v.shape, str(v.dtype), float(v.sum()))
            return v

        if isinstance(x, dict):
            return {k: one(v) for k, v in x.items()}
        return one(x)

    @ray.method(tensor_transport="sideband")
    def forward(self, x: Any) -> Any:
        """Pass a received tensor on (it lives in this process's shared memory already)."""
        self.held.append(x)
        return x

    def hold(self, x: Any) -> float:
        self.held.append(x)
        return float(x.sum())

    def drop(self) -> None:
        self.held.clear()

    def write_held(self, value: float) -> float:
        self.held[-1].fill_(value)
        return float(self.held[-1].sum())

    def held_sum(self) -> float:
        return float(self.held[-1].sum())

    def timed_total(self, x: Any) -> tuple[float, float]:
        return float(x.sum()), time.time()


@ray.remote(num_cpus=0, max_concurrency=4)
class ThreadedProducer(_Common):
    @ray.method(tensor_transport="sideband")
    def full(self, n: int, value: float = 1.0) -> Any:
        import torch

        time.sleep(0.01)
        return torch.full((n,), value)

    def total(self, x: Any) -> float:
        return float(x.sum())


@ray.remote(num_cpus=0)
class AsyncActor(_Common):
    @ray.method(tensor_transport="sideband")
    async def full(self, n: int, value: float = 1.0) -> Any:
        import torch

        await asyncio.sleep(0.01)
        return torch.full((n,), value)

    async def total(self, x: Any) -> float:
        await asyncio.sleep(0)
        return float(x.sum())
