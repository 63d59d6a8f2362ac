"""One implementation bound to the actors of one world size: sideband, ray.util.collective gloo,
torch.distributed gloo, the object store or np.copyto; created, checked, run and closed alike."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from sideband.bench.collectives import object_store
from sideband.bench.collectives.results import _per_iteration_max
from sideband.bench.collectives.worker import (
    _a_barrier,
    _a_ray_destroy,
    _a_run,
    _a_torch_destroy,
    _a_torch_init,
    _a_verify,
    _on_each,
    _rget,
)

# Only the default group's destroy also ends torch's default process group, which
# ray.util.collective's gloo backend creates once per process: with any other name, a later group
# of another world size in the same actors would hang.
_RAY_GROUP = "default"


class _Impl:
    """One implementation bound to the actors of one world size: create, verify, run, close."""

    def __init__(self, impl: str, transport: str | None, actors: list[Any], op_timeout_s: float):
        self.impl, self.transport, self.actors = impl, transport, actors
        self.ws = len(actors)
        self.timeout_s = op_timeout_s
        self.name = (
            f"sbbench-{os.getpid()}-{self.ws}-{transport}" if impl == "sideband" else _RAY_GROUP
        )
        self.handle: Any = None
        self.ray_declared = False
        self.tmpdir: str | None = None
        self.live = False

    @property
    def key(self) -> str:
        return f"{self.impl}:{self.transport}" if self.transport else self.impl

    def _each(self, fn: Callable[..., Any], *args: Any, rank_arg: bool = True) -> list[Any]:
        return _on_each(self.actors, self.timeout_s, fn, *args, rank_arg=rank_arg)

    def create(self, reps: int) -> list[float]:
        """Form the group ``reps`` times from the driver (each timed up to a first barrier)."""
        times = []
        for i in range(reps):
            if self.live:
                self.close()
            t0 = time.perf_counter()
            if self.impl == "sideband":
                import sideband

                backend = "shm" if self.transport == "empty" else self.transport
                self.handle = sideband.create_group(
                    self.actors, name=self.name, backend=backend, timeout_s=self.timeout_s
                )
            elif self.impl == "ray_gloo":
                import ray.util.collective as col

                self.ray_declared = True
                from ray.util.collective.types import Backend

                ray_backend: Any = Backend.GLOO  # Ray types its Backend constants as str
                col.create_collective_group(
                    self.actors, self.ws, list(range(self.ws)), ray_backend, group_name=self.name
                )
            elif self.impl == "torch_gloo":
                self.tmpdir = self.tmpdir or tempfile.mkdtemp(prefix="sideband-bench-torch-")
                path = os.path.join(self.tmpdir, f"store-{i}")
                refs = [
                    a.__ray_call__.remote(_a_torch_init, path, r, self.ws, self.timeout_s)
                    for r, a in enumerate(self.actors)
                ]
                _rget(refs, self.timeout_s)
            self.live = True
            if self.impl in ("sideband", "ray_gloo", "torch_gloo"):
                self._each(_a_barrier, self.impl, self.name)
            times.append(time.perf_counter() - t0)
        return times

    def verify(self) -> bool | None:
        """One allreduce of known values, outside the timed loops (None: not a collective)."""
        if self.impl == "object_store":
            return object_store.verify(self.actors, self.timeout_s)
        if self.impl == "memcpy":
            return None
        return all(self._each(_a_verify, self.impl, self.name))

    def run(self, op: str, iters: int, warmup: int) -> list[float]:
        if self.impl == "object_store":
            return object_store.run(self.actors, op, iters, warmup, self.timeout_s)
        if self.impl == "memcpy":
            return _rget(
                self.actors[0].__ray_call__.remote(
                    _a_run, "memcpy", "", op, 0, self.ws, iters, warmup
                ),
                self.timeout_s,
            )
        per_rank = self._each_run(op, iters, warmup)
        return _per_iteration_max(per_rank)

    def _each_run(self, op: str, iters: int, warmup: int) -> list[list[float]]:
        refs = [
            a.__ray_call__.remote(_a_run, self.impl, self.name, op, r, self.ws, iters, warmup)
            for r, a in enumerate(self.actors)
        ]
        return _rget(refs, self.timeout_s)

    def close(self) -> None:
        """Destroy the group in every member; safe to call twice and after errors."""
        if not self.live and not self.ray_declared:
            return
        self.live = False
        try:
            if self.impl == "sideband" and self.handle is not None:
                self.handle.destroy()
                self.handle = None
            elif self.impl == "ray_gloo":
                self._each(_a_ray_destroy, self.name, rank_arg=False)
            elif self.impl == "torch_gloo":
                self._each(_a_torch_destroy, rank_arg=False)
        finally:
            if self.impl == "ray_gloo" and self.ray_declared:
                self.ray_declared = False
                _kill_named(f"info_{self.name}")

    def cleanup(self) -> None:
        try:
            self.close()
        finally:
            if self.tmpdir:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                self.tmpdir = None


def _kill_named(name: str) -> None:
    """Kill ray.util.collective's detached info actor if our destroy left it behind."""
    import ray

    try:
        ray.kill(ray.get_actor(name))
    except ValueError:
        pass  # already gone: destroy_collective_group killed it
