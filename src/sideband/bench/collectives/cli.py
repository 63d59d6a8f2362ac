"""``sideband bench collectives``: sideband and its peers side by side, in one run, on one machine.

The command line: its options, which implementations can run here, Ray and the actors, the
sweep over world sizes, then the tables, the JSON and the plot.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from sideband._extras import require
from sideband.bench.collectives.config import IMPLS, MODES, OPS, TRANSPORTS, _csv, _parse_size
from sideband.bench.collectives.mpich import _mpiexec, _run_mpich
from sideband.bench.collectives.report import _print_tables, plot, write_json
from sideband.bench.collectives.results import Run
from sideband.bench.collectives.sweep import _bench_world, _keys, _total
from sideband.bench.collectives.targets import ratios
from sideband.bench.collectives.worker import BenchWorker, _a_setup, _on_each


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sideband bench collectives", description=__doc__.split("\n")[0]
    )
    m = p.add_mutually_exclusive_group()
    m.add_argument(
        "--quick", action="store_true", help="fewer sizes and iterations (< 3 min on 2 cores)"
    )
    m.add_argument("--smoke", action="store_true", help="smallest mode, for tests (seconds)")
    p.add_argument("--json", metavar="PATH", help="write every record (and the ratios) as JSON")
    p.add_argument("--plot", metavar="PATH.png", help="draw time vs size per implementation")
    p.add_argument("--ops", help=f"comma list of {','.join(OPS)}")
    p.add_argument("--sizes", help="comma list of sizes, e.g. 8,1K,1M,64M,256M")
    p.add_argument("--world-sizes", help="comma list, e.g. 2,4")
    p.add_argument("--impls", help=f"comma list of {','.join(IMPLS)}")
    p.add_argument(
        "--transports", help="sideband transports: shm,tcp,empty (shm with Group.empty buffers)"
    )
    p.add_argument(
        "--iters", type=int, help="timed iterations per point (at most; big sizes use fewer)"
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds allowed for one point")
    return p.parse_args(argv)


def _select(
    value: str | None, allowed: tuple[str, ...], default: Iterable[str], what: str
) -> list[str]:
    if value is None:
        return list(default)
    items = ["send/recv" if v in ("sendrecv", "send_recv") else v for v in _csv(value)]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise SystemExit(
            f"sideband bench collectives: unknown {what} {bad}; choose from {list(allowed)}"
        )
    return items


def main(argv: list[str] | None = None) -> int:
    """Run the collectives benchmark; returns 0 when every implementation ran and checked out."""
    import ray

    require("rich", "bench", "sideband bench")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    args = _args(argv)
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.sizes:
        mode = dataclasses.replace(mode, sizes=tuple(_parse_size(v) for v in _csv(args.sizes)))
    if args.world_sizes:
        mode = dataclasses.replace(mode, world_sizes=tuple(int(w) for w in _csv(args.world_sizes)))
    if args.iters:
        mode = dataclasses.replace(
            mode, max_iters=args.iters, min_iters=min(mode.min_iters, args.iters)
        )
    ops = _select(args.ops, OPS, OPS, "ops")
    impls = _select(args.impls, IMPLS, IMPLS, "impls")
    transports = _select(args.transports, TRANSPORTS, TRANSPORTS, "transports")
    if any(w < 2 for w in mode.world_sizes):
        raise SystemExit(
            "sideband bench collectives: world sizes must be >= 2 (send/recv needs two ranks)"
        )
    console = Console(stderr=True)
    run = Run()

    # Loopback only: sideband's listeners, gloo's sockets and Ray's node address.
    os.environ["SIDEBAND_HOST"] = "127.0.0.1"
    env = {"SIDEBAND_HOST": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    has_torch = importlib.util.find_spec("torch") is not None
    for impl in ("ray_gloo", "torch_gloo"):
        if impl in impls and not has_torch:
            impls.remove(impl)
            run.notes.append(
                f"{impl} skipped: torch is not installed (pip install 'sideband[torch]')"
            )
    if "mpich" in impls and (importlib.util.find_spec("mpi4py") is None or _mpiexec() is None):
        impls.remove("mpich")
        run.notes.append("mpich skipped: mpi4py or mpiexec missing (pip install 'sideband[bench]')")
    started_ray = False
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
        started_ray = True

    keys = _keys(impls, transports)
    total = _total(ops, mode, keys, "mpich" in impls)

    actor_cls = ray.remote(num_cpus=0)(BenchWorker)
    actors: list[Any] = [actor_cls.remote() for _ in range(max(mode.world_sizes))]
    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    try:
        _on_each(actors, args.timeout, _a_setup, env, has_torch, rank_arg=False)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("starting", total=total)
            for ws in mode.world_sizes:
                _bench_world(run, actors[:ws], keys, ops, mode, args.timeout, progress, task)
                if "mpich" in impls:
                    progress.update(task, description=f"mpich {ws} ranks (mpiexec)")
                    n = _run_mpich(run, ws, ops, mode.sizes, mode, args.timeout * 4)
                    progress.advance(task, n)
    finally:
        for a in actors:
            ray.kill(a)
        if started_ray:
            ray.shutdown()
    elapsed = time.perf_counter() - started
    # Ray's actors run at nice 15, mpiexec's ranks at the caller's niceness: on a machine busy
    # with other work the actors get the CPU last, so every figure needs its load beside it.
    run.notes.append(
        f"load average (1 min) {load_at_start:.2f} at the start, {os.getloadavg()[0]:.2f} at "
        f"the end, on {os.cpu_count()} cores"
    )
    rats = ratios(run.records)
    # Tables are read in files and CI logs too: never squeeze them to a pipe's 80 columns.
    out = Console() if sys.stdout.isatty() else Console(width=160)
    _print_tables(run, rats, out)
    for note in run.notes:
        out.print(f"note: {note}")
    for f in run.failures:
        out.print(f"[red]FAILED[/red]: {f}")
    out.print(
        f"{len(run.records)} records in {elapsed:.0f} s; time per iteration = max over ranks, "
        "timed inside the actors (object store: on the driver); median/min/max over iterations"
    )
    if args.json:
        write_json(args.json, run, rats, argv)
    if args.plot:
        plot(run.records, args.plot)
    return 1 if run.failures else 0
