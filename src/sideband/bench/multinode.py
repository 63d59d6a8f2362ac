"""``sideband bench multinode``: allreduce across 2 hosts x 2 actors, in one run: sideband's
host-aware (hierarchical) algorithms, sideband's flat ring, and torch.distributed gloo.

The hosts come from :mod:`sideband.testbed` (network namespaces with their own addresses and
/dev/shm where permitted; otherwise Ray nodes on 127.0.0.x with TCP forced, which the output
says). All three implementations run in the same four actors, on the same buffers, size by
size and back to back. Time of one iteration: the maximum over ranks of ``perf_counter`` around
the op after a barrier (the harness of ``sideband bench collectives``); a point reports the
median, min and max of those per-iteration maxima.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import statistics
import sys
import time
from typing import Any

from sideband import config
from sideband._extras import require
from sideband.bench import collectives as C
from sideband.bench import json_header

IMPLS = ("hierarchical", "flat", "torch_gloo")
LABELS = {
    "hierarchical": "sideband hierarchical",
    "flat": "sideband flat ring",
    "torch_gloo": "torch.distributed gloo",
}
DEFAULT_SIZES = (8, C._MIB, 64 * C._MIB)
LAYOUT = (0, 0, 1, 1)  # host of each rank
_ARGS_ENV = "SIDEBAND_BENCH_MULTINODE"
_GROUP = {"hierarchical": ("sbmn-hier", "1"), "flat": ("sbmn-flat", "0")}


# ---------------------------------------------------------------------------------------------
# Inside the actors (shipped with __ray_call__ by reference: sideband is installed everywhere).
# ---------------------------------------------------------------------------------------------
def _a_setenv(self: Any, env: dict[str, str | None]) -> None:
    """Set (or unset, for None) variables read when the next group forms."""
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _a_topology(self: Any, name: str) -> dict[str, Any]:
    import sideband

    return sideband.get_group(name).topology()


def _a_torch_master(self: Any, host: str, ws: int, timeout_s: float) -> int:
    """Rank 0: a TCPStore on its host's address; returns the port it got."""
    import torch.distributed as dist

    st = C._st(self)
    st["torch_store"] = dist.TCPStore(
        host,
        0,
        ws,
        is_master=True,
        timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )
    return int(st["torch_store"].port)


def _a_torch_join(self: Any, host: str, port: int, rank: int, ws: int, timeout_s: float) -> None:
    """A gloo process group of this bench's own, over the store of rank 0 (across hosts)."""
    import torch.distributed as dist

    st = C._st(self)
    td = datetime.timedelta(seconds=timeout_s)
    if rank != 0:
        st["torch_store"] = dist.TCPStore(host, port, ws, is_master=False, timeout=td)
    st["torch_pg"] = dist.ProcessGroupGloo(st["torch_store"], rank, ws, td)


# ---------------------------------------------------------------------------------------------
# The driver, on host 0 of the test bed.
# ---------------------------------------------------------------------------------------------
def _impl_of(key: str) -> tuple[str, str]:
    """(implementation name of the collectives harness, group name) of one of our IMPLS."""
    return ("torch_gloo", "") if key == "torch_gloo" else ("sideband", _GROUP[key][0])


def driver_main() -> None:
    """Runs on host 0: sets the implementations up, measures, emits the records."""
    import ray

    import sideband
    from sideband import testbed as tb

    args = config.get(_ARGS_ENV)
    if args is None:
        raise SystemExit(
            f"{_ARGS_ENV} is not set: this driver runs under `sideband bench multinode`"
        )
    timeout_s = float(args["timeout_s"])
    bed = tb.connect()
    cls = ray.remote(num_cpus=0)(C.BenchWorker)
    actors: list[Any] = [cls.options(**tb.on_host(h)).remote() for h in LAYOUT]
    ws = len(actors)

    def each(fn: Any, *a: Any, rank_args: bool = False) -> list[Any]:
        refs = [
            x.__ray_call__.remote(fn, *(a + ((r, ws) if rank_args else ())))
            for r, x in enumerate(actors)
        ]
        return ray.get(refs, timeout=timeout_s)

    out: dict[str, Any] = {"mode": bed["mode"], "records": [], "notes": [], "failures": []}
    impls = list(args["impls"])
    # gloo picks its interface by name; every namespaced host calls its link "sb0".
    ifname = "sb0" if bed["mode"] == "netns" else "lo"
    each(C._a_setup, {"GLOO_SOCKET_IFNAME": ifname}, "torch_gloo" in impls)
    live = []
    for key in impls:
        try:
            if key == "torch_gloo":
                host0 = bed["hosts"][0]["ip"]
                port = ray.get(
                    actors[0].__ray_call__.remote(_a_torch_master, host0, ws, timeout_s),
                    timeout=timeout_s,
                )
                refs = [
                    a.__ray_call__.remote(_a_torch_join, host0, port, r, ws, timeout_s)
                    for r, a in enumerate(actors)
                ]
                ray.get(refs, timeout=timeout_s)
            else:
                name, flag = _GROUP[key]
                # The plan is fixed when the group forms: the same actors hold both groups.
                each(_a_setenv, {"SIDEBAND_HIERARCHICAL": flag})
                sideband.create_group(actors, name=name, backend=bed["backend"], timeout_s=60)
                each(_a_setenv, {"SIDEBAND_HIERARCHICAL": None})
                topo: dict[str, Any] = ray.get(actors[0].__ray_call__.remote(_a_topology, name))
                out["notes"].append(
                    f"{key}: hosts {topo.get('hosts')}, hierarchical={topo.get('hierarchical')}, "
                    f"rank 0 peers {topo['peers']}"
                )
            impl, name = _impl_of(key)
            if not all(each(C._a_verify, impl, name, rank_args=True)):
                out["failures"].append(f"{key}: allreduce check gave a wrong result")
                continue
            live.append(key)
        except Exception as e:
            out["failures"].append(f"{key}: setup failed: {type(e).__name__}: {e}")
    for nbytes in args["sizes"]:
        count, chunk, actual = C._shape("allreduce", nbytes, ws)
        iters, warmup = C.MODES["quick"].iters(actual)
        if args.get("iters"):
            iters = int(args["iters"])
        each(C._a_alloc, "allreduce", count, chunk, ws)
        for key in list(live):
            impl, name = _impl_of(key)
            tb.event("point", impl=key, nbytes=actual)
            try:
                refs = [
                    a.__ray_call__.remote(C._a_run, impl, name, "allreduce", r, ws, iters, warmup)
                    for r, a in enumerate(actors)
                ]
                per_rank = ray.get(refs, timeout=timeout_s)
            except Exception as e:
                out["failures"].append(f"{key}: allreduce {actual} B: {type(e).__name__}: {e}")
                live.remove(key)
                continue
            ts = C._per_iteration_max(per_rank)
            out["records"].append(
                {
                    "impl": key,
                    "op": "allreduce",
                    "world_size": ws,
                    "hosts": len(set(LAYOUT)),
                    "nbytes": actual,
                    "iters": len(ts),
                    "median_s": statistics.median(ts),
                    "min_s": min(ts),
                    "max_s": max(ts),
                }
            )
    tb.emit(out)


# ---------------------------------------------------------------------------------------------
# Outside: the test bed, the tables, the JSON.
# ---------------------------------------------------------------------------------------------
def ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median ratios per size: each sideband variant vs the flat ring and vs torch gloo."""
    by = {(r["nbytes"], r["impl"]): r["median_s"] for r in records}
    out = []
    for nbytes in sorted({r["nbytes"] for r in records}):
        for impl in ("hierarchical", "flat"):
            for base in ("flat", "torch_gloo"):
                if impl == base or (nbytes, impl) not in by or (nbytes, base) not in by:
                    continue
                out.append(
                    {
                        "nbytes": nbytes,
                        "impl": impl,
                        "baseline": base,
                        "ratio": by[(nbytes, impl)] / by[(nbytes, base)],
                    }
                )
    return out


def _print(res: dict[str, Any], rats: list[dict[str, Any]], console: Any, describe: str) -> None:
    from rich.table import Table

    impls = [i for i in IMPLS if any(r["impl"] == i for r in res["records"])]
    t = Table(title=f"allreduce, 2 hosts x 2 actors: median (min-max) per iteration; {describe}")
    t.add_column("size")
    for i in impls:
        t.add_column(LABELS[i], justify="right")
    for nbytes in sorted({r["nbytes"] for r in res["records"]}):
        cells = []
        for i in impls:
            r = next((x for x in res["records"] if x["impl"] == i and x["nbytes"] == nbytes), None)
            cells.append(
                ""
                if r is None
                else f"{C._fmt_t(r['median_s'])} ({C._fmt_t(r['min_s'])}-{C._fmt_t(r['max_s'])})"
            )
        t.add_row(C._fmt_size(nbytes), *cells)
    console.print(t)
    rt = Table(title="ratios of medians, same run (< 1: faster than the baseline)")
    for h in ("size", "sideband", "baseline", "ratio"):
        rt.add_column(h, justify="right" if h == "ratio" else "left")
    for x in rats:
        rt.add_row(C._fmt_size(x["nbytes"]), x["impl"], LABELS[x["baseline"]], f"{x['ratio']:.3f}")
    console.print(rt)


def measure(
    bed: Any, sizes: list[int], impls: list[str], iters: int | None, timeout_s: float
) -> dict[str, Any]:
    """Run the measuring driver on host 0 of a started test bed; its records, notes, failures."""
    spec = {"sizes": sizes, "impls": impls, "iters": iters, "timeout_s": timeout_s}
    code = "from sideband.bench.multinode import driver_main; driver_main()"
    run = bed.start_driver([sys.executable, "-c", code], env={_ARGS_ENV: json.dumps(spec)})
    return run.result(timeout_s * (len(sizes) * len(impls) + 2))


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sideband bench multinode", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", help="comma list of sizes (default 8,1M,64M)")
    p.add_argument("--impls", help=f"comma list of {','.join(IMPLS)}")
    p.add_argument("--iters", type=int, help="timed iterations per point (default: by size)")
    p.add_argument(
        "--mode",
        choices=("auto", "netns", "local"),
        default="auto",
        help="test bed mode (auto: namespaces where permitted)",
    )
    p.add_argument("--json", metavar="PATH", help="write the records and ratios as JSON")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds allowed for one step")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Bring up the test bed, run the driver on host 0, print and save the results."""
    require("rich", "bench", "sideband bench multinode")
    from rich.console import Console

    from sideband.testbed import Testbed

    args = _args(argv)
    sizes = [C._parse_size(s) for s in C._csv(args.sizes)] if args.sizes else list(DEFAULT_SIZES)
    impls = C._csv(args.impls) if args.impls else list(IMPLS)
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        raise SystemExit(f"sideband bench multinode: unknown impls {bad}; choose from {IMPLS}")
    notes: list[str] = []
    if "torch_gloo" in impls and importlib.util.find_spec("torch") is None:
        impls.remove("torch_gloo")
        notes.append("torch_gloo skipped: torch is not installed (pip install 'sideband[torch]')")
    err = Console(stderr=True)
    started = time.perf_counter()
    with Testbed(2, mode=args.mode, quiet=True) as bed:
        describe = bed.describe()
        err.print(describe)
        res = measure(bed, sizes, impls, args.iters, args.timeout)
        mode = bed.mode
    elapsed = time.perf_counter() - started
    res["notes"] = notes + res["notes"]
    rats = ratios(res["records"])
    out = Console() if sys.stdout.isatty() else Console(width=160)
    _print(res, rats, out, f"{mode} mode")
    for n in res["notes"]:
        out.print(f"note: {n}")
    for f in res["failures"]:
        out.print(f"[red]FAILED[/red]: {f}")
    out.print(f"{len(res['records'])} records in {elapsed:.0f} s ({describe})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    **json_header("multinode", argv),
                    "testbed": describe,
                    "mode": mode,
                    "layout": {"hosts": 2, "actors_per_host": 2},
                    "timing": "per iteration: max over ranks of perf_counter around the op after "
                    "a barrier; median/min/max over iterations; warm-ups excluded",
                    "records": res["records"],
                    "ratios": rats,
                    "notes": res["notes"],
                    "failures": res["failures"],
                },
                f,
                indent=1,
            )
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
