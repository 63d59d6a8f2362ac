"""Benchmark: gangs against their anchors, one row each (``sideband bench gang``).

* torch: ``Gang(n, setup="torch")`` to the first completed allreduce, vs Ray Train's
  ``TorchTrainer`` (both import torch in fresh workers; the time is when the *last* rank finished).
* spark: ``Gang(n, setup="spark")`` -> SparkSession -> ``spark.range(10_000_000)`` summed, and the
  shutdown, vs ``raydp.init_spark`` with the same executors (RayDP pins pyspark<=3.5.7: it runs in
  its own virtualenv, ``--raydp-python`` or SIDEBAND_RAYDP_PYTHON, with its own local Ray).
* xgboost: ``Gang(n, setup="xgboost")`` training 100 rounds on 200k x 20 synthetic rows, to the
  trained model, vs Ray Train's ``XGBoostTrainer`` with the same worker function.
* dask: ``Gang(n, setup="dask")`` to a Client with n workers, vs ``distributed.LocalCluster(n)``
  outside Ray (the floor).

Times start on the driver just before construction; every sample starts fresh processes; the two
sides of a row alternate so background load hits both alike. Ray Train needs 'ray[train]'.
``--prestart``: before each sideband sample, outside its time, ``sideband.gang.prestart(n)``
leaves n idle Ray workers on the node (it returns once they are idle, so no load is left over for
the anchor); without it every member waits for Ray to start its worker process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from sideband import config

ROWS = ("torch", "spark", "xgboost", "dask")
XGB_ROWS, XGB_FEATURES, XGB_ROUNDS = 200_000, 20, 100
XGB_PARAMS = {"objective": "reg:squarederror", "tree_method": "hist", "max_depth": 6, "nthread": 1}


# --- torch -------------------------------------------------------------------------------------
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


def torch_sideband(n: int, cpus: float, storage: str) -> dict[str, float]:
    from sideband.gang import Gang

    t0 = time.time()
    gang = Gang(n, resources_per_worker={"CPU": cpus}, setup="torch")
    try:
        done = gang.run(_first_allreduce)[0]
    finally:
        gang.shutdown()
    return {"s": done - t0}


def _ray_train_fit(trainer_cls: Any, loop: Any, n: int, cpus: float, storage: str) -> float:
    from ray.train import RunConfig, ScalingConfig

    out = f"{storage}/done-{time.time_ns()}"
    t0 = time.time()
    trainer_cls(
        loop,
        train_loop_config={"out": out},
        scaling_config=ScalingConfig(num_workers=n, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(storage_path=storage, name=f"bench-{time.time_ns()}"),
    ).fit()
    with open(out) as f:  # Ray Train v2 keeps no metrics without a checkpoint: a file it is
        return float(f.read()) - t0


def torch_anchor(n: int, cpus: float, storage: str) -> dict[str, float]:
    import ray.train
    from ray.train.torch import TorchTrainer

    def loop(config: dict[str, Any]) -> None:
        done = _first_allreduce()
        if ray.train.get_context().get_world_rank() == 0:
            with open(config["out"], "w") as f:
                f.write(repr(done))

    return {"s": _ray_train_fit(TorchTrainer, loop, n, cpus, storage)}


# --- spark -------------------------------------------------------------------------------------
_RAYDP = """
import json, sys, time
import ray, raydp
n, cpus = int(sys.argv[1]), float(sys.argv[2])
ray.init(num_cpus=int(n * cpus) + 2, include_dashboard=False, log_to_driver=False)
t0 = time.time()
spark = raydp.init_spark("bench", num_executors=n, executor_cores=1, executor_memory="1GB")
assert spark.range(10_000_000).selectExpr("sum(id)").collect()[0][0] == 49999995000000
t1 = time.time()
raydp.stop_spark()
print("RESULT", json.dumps({"s": t1 - t0, "shutdown_s": time.time() - t1}), flush=True)
"""


def spark_sideband(n: int, cpus: float, storage: str) -> dict[str, float]:
    from sideband.gang import Gang
    from sideband.gang import spark as gang_spark

    t0 = time.time()
    gang = Gang(n, resources_per_worker={"CPU": cpus}, setup="spark")
    try:
        spark = gang_spark.session(gang)
        assert spark.range(10_000_000).selectExpr("sum(id)").collect()[0][0] == 49999995000000
        t1 = time.time()
    finally:
        t_stop = time.time()
        gang.shutdown()
    return {"s": t1 - t0, "shutdown_s": time.time() - t_stop}


def spark_warm(n: int, cpus: float) -> str | None:
    """The Spark JVMs' CDS archive is built once per machine, by the first gang: build it before
    timing (the steady state). Returns what was done, or None if it was there already."""
    import glob

    from sideband.gang import cds

    where = cds.root()
    if where is None or glob.glob(os.path.join(where, "*.jsa")):
        return None
    t0 = time.time()
    spark_sideband(n, cpus, "")
    cds.wait_builds()
    return (
        f"the CDS archive was built first (one untimed gang + the build, {time.time() - t0:.1f} s)"
    )


def spark_anchor(n: int, cpus: float, storage: str) -> dict[str, float]:
    python = config.get("SIDEBAND_RAYDP_PYTHON") or ""
    proc = subprocess.run(
        [python, "-c", _RAYDP, str(n), str(cpus)], capture_output=True, text=True, timeout=900
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"RayDP run failed ({proc.returncode}): {proc.stderr[-1500:]}")


# --- xgboost -----------------------------------------------------------------------------------
def _xgb_shard(rank: int, world: int) -> Any:
    import numpy as np
    import xgboost as xgb

    rng = np.random.default_rng(0)
    x = rng.normal(size=(XGB_ROWS, XGB_FEATURES)).astype(np.float32)
    y = x @ rng.normal(size=XGB_FEATURES).astype(np.float32)
    return xgb.DMatrix(x[rank::world], label=y[rank::world])


def _xgb_train(rank: int, world: int) -> float:
    import xgboost as xgb

    xgb.train(XGB_PARAMS, _xgb_shard(rank, world), num_boost_round=XGB_ROUNDS)
    return time.time()


def xgboost_sideband(n: int, cpus: float, storage: str) -> dict[str, float]:
    from sideband.gang import Gang, context

    def train() -> float:
        return _xgb_train(context().rank, context().world_size)

    t0 = time.time()
    with Gang(n, resources_per_worker={"CPU": cpus}, setup="xgboost") as gang:
        done = max(gang.run(train))
    return {"s": done - t0}


def xgboost_anchor(n: int, cpus: float, storage: str) -> dict[str, float]:
    import ray.train
    from ray.train.xgboost import XGBoostTrainer

    def loop(config: dict[str, Any]) -> None:
        ctx = ray.train.get_context()
        done = _xgb_train(ctx.get_world_rank(), ctx.get_world_size())
        if ctx.get_world_rank() == 0:
            with open(config["out"], "w") as f:
                f.write(repr(done))

    return {"s": _ray_train_fit(XGBoostTrainer, loop, n, cpus, storage)}


# --- dask --------------------------------------------------------------------------------------
def dask_sideband(n: int, cpus: float, storage: str) -> dict[str, float]:
    from sideband.gang import Gang

    t0 = time.time()
    with Gang(n, resources_per_worker={"CPU": cpus}, setup="dask") as gang:
        assert gang.client.submit(sum, [1, 2]).result() == 3
        t1 = time.time()
    # Shutdown returns once Ray freed the members and their placement group.
    return {"s": t1 - t0, "shutdown_s": time.time() - t1}


def dask_anchor(n: int, cpus: float, storage: str) -> dict[str, float]:
    from distributed import Client, LocalCluster

    t0 = time.time()
    with LocalCluster(n_workers=n, threads_per_worker=1, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            client.wait_for_workers(n)
            assert client.submit(sum, [1, 2]).result() == 3
            t1 = time.time()
    return {"s": t1 - t0}


# --- the table ---------------------------------------------------------------------------------
Runner = Callable[[int, float, str], dict[str, float]]
SIDES: dict[str, tuple[tuple[str, Runner], tuple[str, Runner]]] = {
    "torch": (("sideband Gang torch", torch_sideband), ("Ray Train TorchTrainer", torch_anchor)),
    "spark": (("sideband Gang spark", spark_sideband), ("RayDP init_spark", spark_anchor)),
    "xgboost": (
        ("sideband Gang xgboost", xgboost_sideband),
        ("Ray Train XGBoostTrainer", xgboost_anchor),
    ),
    "dask": (("sideband Gang dask", dask_sideband), ("LocalCluster (no Ray)", dask_anchor)),
}
WHAT = {
    "torch": "construction -> first completed allreduce (gloo)",
    "spark": "construction -> spark.range(10M) summed; shutdown separately",
    "xgboost": f"construction -> {XGB_ROUNDS} rounds on {XGB_ROWS // 1000}k x {XGB_FEATURES} trained",
    "dask": "construction -> client with all workers answers; shutdown separately",
}


def _missing(row: str) -> str | None:
    """Why a row's anchor cannot run here, or None."""
    try:
        if row in ("torch", "xgboost"):
            import ray.train  # noqa: F401
        if row == "spark" and not config.get("SIDEBAND_RAYDP_PYTHON"):
            return "no RayDP virtualenv: --raydp-python PATH (raydp 1.6.5, pyspark 3.5.7)"
        if row == "dask":
            import distributed  # noqa: F401
    except ImportError as e:
        return f"{e}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sideband bench gang``; prints a table (or JSON) and returns 0."""
    p = argparse.ArgumentParser(prog="sideband bench gang", description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="samples per side")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--rows", default="torch", help=f"comma-separated, of {','.join(ROWS)}; or all")
    p.add_argument("--raydp-python", help="python of a virtualenv with raydp (spark row)")
    p.add_argument("--skip-anchors", "--skip-ray-train", action="store_true")
    p.add_argument(
        "--prestart",
        action="store_true",
        help="before each sideband sample, outside its time: sideband.gang.prestart(workers)",
    )
    p.add_argument("--json", action="store_true", help="print the samples as JSON")
    args = p.parse_args(argv)
    rows = list(ROWS) if args.rows == "all" else [r.strip() for r in args.rows.split(",")]
    if args.raydp_python:
        os.environ["SIDEBAND_RAYDP_PYTHON"] = args.raydp_python

    import ray

    from sideband.gang import prestart

    started = False
    if not ray.is_initialized():
        # Logical CPUs for every worker plus Ray Train's controller, whatever the core count.
        ray.init(num_cpus=int(args.workers * args.cpus_per_worker) + 2, include_dashboard=False)
        started = True
    samples: dict[str, dict[str, list[dict[str, float]]]] = {}
    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="sideband-bench-gang-") as storage:
            for row in rows:
                ours, anchor = SIDES[row]
                sides = [ours]
                reason = "--skip-anchors" if args.skip_anchors else _missing(row)
                if reason is None:
                    sides.append(anchor)
                else:
                    skipped[row] = f"{anchor[0]} skipped: {reason}"
                samples[row] = {name: [] for name, _ in sides}
                warm = spark_warm(args.workers, args.cpus_per_worker) if row == "spark" else None
                if warm:
                    notes[row] = warm
                for _ in range(args.repeats):
                    for name, fn in sides:
                        if args.prestart and fn is ours[1]:
                            prestart(args.workers)  # returns once they idle: no load left over
                        samples[row][name].append(fn(args.workers, args.cpus_per_worker, storage))
                if args.prestart:
                    warmed = "sideband samples start with prestarted workers (--prestart)"
                    notes[row] = f"{notes[row]}; {warmed}" if row in notes else warmed
    finally:
        if started:
            ray.shutdown()

    if args.json:
        out = {"workers": args.workers, "samples": samples, "skipped": skipped, "notes": notes}
        print(json.dumps(out))
        return 0
    _print(samples, {**notes, **skipped}, args.workers)
    return 0


def _print(samples: dict[str, Any], skipped: dict[str, str], workers: int) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{workers} workers; seconds; machine load (1-min) at the end {load:.1f}")
    for row, sides in samples.items():
        print(f"\n{row}: {WHAT[row]}")
        print(f"{'':28}{'median':>8}{'min':>8}{'max':>8}  samples")
        medians = []
        for name, xs in sides.items():
            for key in ("s", "shutdown_s"):
                vals = [x[key] for x in xs if key in x]
                if not vals:
                    continue
                label = name if key == "s" else f"  {name} shutdown"
                med = statistics.median(vals)
                if key == "s":
                    medians.append(med)
                print(
                    f"{label:28}{med:8.2f}{min(vals):8.2f}{max(vals):8.2f}  "
                    + " ".join(f"{v:.2f}" for v in vals)
                )
        if len(medians) == 2:
            print(f"{'ratio sideband / anchor':28}{medians[0] / medians[1]:8.2f}")
        if row in skipped:
            print(skipped[row])


if __name__ == "__main__":
    sys.exit(main())
