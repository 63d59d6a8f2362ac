"""Benchmark: time from ``Gang(n, setup="torch")`` to the first completed allreduce, next to Ray
Train's ``TorchTrainer`` doing the same (``sideband bench gang``).

Both sides run the same worker function: one gloo allreduce, then a wall-clock stamp, then a MAX
allreduce of the stamps so the reported time is when the *last* rank finished the first allreduce.
The time is measured from the driver's wall clock just before the gang/trainer is constructed.
Every sample starts fresh worker processes (each imports torch); runs alternate between the two
so background load hits both alike. Ray Train needs ``pip install 'ray[train]'``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any


def _first_allreduce() -> float:
    """On every worker: one allreduce, then the latest finish time over all ranks."""
    import torch
    import torch.distributed as dist

    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == dist.get_world_size()
    stamp = torch.tensor([time.time()], dtype=torch.float64)
    dist.all_reduce(stamp, op=dist.ReduceOp.MAX)
    return float(stamp.item())


def run_sideband(workers: int, cpus: float) -> float:
    from sideband.gang import Gang

    t0 = time.time()
    gang = Gang(workers, resources_per_worker={"CPU": cpus}, setup="torch")
    try:
        done = gang.run(_first_allreduce)[0]
    finally:
        gang.shutdown()
    return done - t0


def run_ray_train(workers: int, cpus: float, storage: str) -> float:
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def loop(config: dict[str, Any]) -> None:
        done = _first_allreduce()
        if ray.train.get_context().get_world_rank() == 0:
            # Ray Train v2 keeps no metrics reported without a checkpoint: hand it back by file.
            with open(config["out"], "w") as f:
                f.write(repr(done))

    out = f"{storage}/done-{time.time_ns()}"
    t0 = time.time()
    trainer = TorchTrainer(
        loop,
        train_loop_config={"out": out},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(storage_path=storage, name=f"bench-{time.time_ns()}"),
    )
    trainer.fit()
    with open(out) as f:
        return float(f.read()) - t0


def _ray_train_available() -> str | None:
    try:
        import ray.train.torch  # noqa: F401
    except ImportError as e:
        return f"{e} (pip install 'ray[train]')"
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sideband bench gang``; prints a table (or JSON) and returns 0."""
    p = argparse.ArgumentParser(prog="sideband bench gang", description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="samples per side")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--skip-ray-train", action="store_true")
    p.add_argument("--json", action="store_true", help="print the samples as JSON")
    args = p.parse_args(argv)

    import ray

    started = False
    if not ray.is_initialized():
        # Logical CPUs for every worker plus Ray Train's controller, whatever the core count.
        ray.init(num_cpus=int(args.workers * args.cpus_per_worker) + 2, include_dashboard=False)
        started = True
    skip_reason = "--skip-ray-train" if args.skip_ray_train else _ray_train_available()
    samples: dict[str, list[float]] = {"sideband Gang": []}
    runners: dict[str, Callable[[], float]] = {
        "sideband Gang": lambda: run_sideband(args.workers, args.cpus_per_worker)
    }
    try:
        with tempfile.TemporaryDirectory(prefix="sideband-bench-gang-") as storage:
            if skip_reason is None:
                samples["Ray Train TorchTrainer"] = []
                runners["Ray Train TorchTrainer"] = lambda: run_ray_train(
                    args.workers, args.cpus_per_worker, storage
                )
            for _ in range(args.repeats):
                for name, fn in runners.items():
                    samples[name].append(fn())
    finally:
        if started:
            ray.shutdown()

    if args.json:
        print(json.dumps({"workers": args.workers, "samples_s": samples}, indent=2))
        return 0
    print(f"time from construction to the first completed allreduce, {args.workers} workers (gloo)")
    print(f"{'':26}{'median':>9}{'min':>9}{'max':>9}  samples (s)")
    for name, xs in samples.items():
        print(
            f"{name:26}{statistics.median(xs):9.2f}{min(xs):9.2f}{max(xs):9.2f}  "
            + " ".join(f"{x:.2f}" for x in xs)
        )
    if skip_reason is not None:
        print(f"Ray Train skipped: {skip_reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
