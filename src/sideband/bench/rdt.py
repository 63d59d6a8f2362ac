"""``sideband bench rdt``: tensors from one actor to another, by ref, driven from the driver.

Per round the driver times ``ray.get(b.consume.remote(a.produce.remote(n)))`` with the tensor
passed (a) through the object store (a plain method), (b) by RDT ``tensor_transport="gloo"``,
(c) by RDT ``tensor_transport="sideband"``, and, for reference, (d) sideband ``send``/``recv``
driven by two Ray calls (``ray.get([a.send.remote(n), b.recv.remote(n)])``). All four run in the
same two actors, size by size, implementations back to back, after warm-up rounds. The producer
returns a tensor it made once per size (the transports' cost, not torch's allocator's); the
consumer returns its element count. Figures: median, min and max per round, and ratios of RDT
sideband against RDT gloo and the object store in the same run.

``--hosts 2`` runs the same rounds across two hosts of :mod:`sideband.testbed` (network
namespaces with their own addresses and /dev/shm where permitted): the producer on host 1, the
consumer and the driver on host 0, so sideband's bytes come through its TCP pull.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from sideband import config
from sideband.bench import json_header

IMPLS = ("object_store", "rdt_gloo", "rdt_sideband", "rdt_sideband_shm", "sideband_p2p")
LABELS = {
    "object_store": "object store",
    "rdt_gloo": "RDT gloo",
    "rdt_sideband": "RDT sideband",
    "rdt_sideband_shm": "RDT sideband, tensor in shm",
    "sideband_p2p": "sideband send/recv",
}
_KIB, _MIB = 1 << 10, 1 << 20
SIZES = (8, 64 * _KIB, _MIB, 16 * _MIB, 64 * _MIB, 256 * _MIB)
SMOKE_SIZES = (8, 64 * _KIB, _MIB)
# Targets of issue 14 (ratio of RDT sideband's median to the baseline's, same run).
TARGETS = {
    8: {"rdt_gloo": 0.5, "object_store": 1.0},
    _MIB: {"rdt_gloo": 0.4},
    64 * _MIB: {"rdt_gloo": 0.25, "object_store": 0.1},
}
# Across two test-bed hosts: what runs by default, and the target.
HOSTS_SIZES = (_MIB, 64 * _MIB)
HOSTS_IMPLS = ("rdt_gloo", "rdt_sideband")
HOSTS_TARGETS = {64 * _MIB: {"rdt_gloo": 1.0}}
_ARGS_ENV = "SIDEBAND_BENCH_RDT"


def _rounds(nbytes: int, smoke: bool) -> tuple[int, int]:
    """(warm-up, timed) rounds for one size."""
    if smoke:
        return 1, 3
    if nbytes <= _MIB:
        return 3, 30
    if nbytes <= 16 * _MIB:
        return 2, 15
    return 2, 7


def _actor_class() -> Any:
    import ray

    import sideband.rdt

    sideband.rdt.register()

    @ray.remote(num_cpus=0, enable_tensor_transport=True)  # type: ignore[call-overload]
    class Peer:
        def __init__(self) -> None:
            self.cache: dict[tuple[int, bool], Any] = {}

        def _tensor(self, nbytes: int, shm: bool = False) -> Any:
            import torch

            if (nbytes, shm) not in self.cache:
                n = max(1, nbytes // 4)
                t = sideband.rdt.empty(n).fill_(1.0) if shm else torch.ones(n)
                self.cache = {k: v for k, v in self.cache.items() if k[0] == nbytes}
                self.cache[(nbytes, shm)] = t
            return self.cache[(nbytes, shm)]

        def produce_plain(self, nbytes: int) -> Any:
            return self._tensor(nbytes)

        @ray.method(tensor_transport="gloo")
        def produce_gloo(self, nbytes: int) -> Any:
            return self._tensor(nbytes)

        @ray.method(tensor_transport="sideband")
        def produce_sideband(self, nbytes: int) -> Any:
            return self._tensor(nbytes)

        @ray.method(tensor_transport="sideband")
        def produce_sideband_shm(self, nbytes: int) -> Any:
            return self._tensor(nbytes, shm=True)  # sideband.rdt.empty: exported in place

        def consume(self, t: Any) -> int:
            return int(t.numel())

        def send(self, name: str, nbytes: int) -> int:
            import sideband

            t = self._tensor(nbytes)
            sideband.get_group(name).send(t, 1)
            return int(t.numel())

        def recv(self, name: str, nbytes: int) -> int:
            import sideband

            t = self._tensor(nbytes)
            sideband.get_group(name).recv(t, 0)
            return int(t.numel())

    return Peer


def _round(impl: str, a: Any, b: Any, nbytes: int, group: str) -> float:
    import ray

    t0 = time.perf_counter()
    if impl == "object_store":
        n = ray.get(b.consume.remote(a.produce_plain.remote(nbytes)))
    elif impl == "rdt_gloo":
        n = ray.get(b.consume.remote(a.produce_gloo.remote(nbytes)))
    elif impl == "rdt_sideband":
        n = ray.get(b.consume.remote(a.produce_sideband.remote(nbytes)))
    elif impl == "rdt_sideband_shm":
        n = ray.get(b.consume.remote(a.produce_sideband_shm.remote(nbytes)))
    else:
        n = ray.get([a.send.remote(group, nbytes), b.recv.remote(group, nbytes)])[1]
    dt = time.perf_counter() - t0
    assert n == max(1, nbytes // 4), (impl, nbytes, n)
    return dt


def run(
    sizes: tuple[int, ...],
    impls: tuple[str, ...],
    smoke: bool,
    placement: tuple[dict[str, Any], dict[str, Any]] = ({}, {}),
    backend: str = "auto",
) -> list[dict[str, Any]]:
    """Time every implementation at every size; one record per (impl, size).

    ``placement``: actor options of the producer and the consumer (hosts, environment)."""
    import ray
    from ray.experimental.collective import create_collective_group, destroy_collective_group

    import sideband

    Peer = _actor_class()
    a, b = Peer.options(**placement[0]).remote(), Peer.options(**placement[1]).remote()
    gloo = create_collective_group([a, b], backend="gloo") if "rdt_gloo" in impls else None
    name = f"bench-rdt-{time.time_ns()}"
    handle = (
        sideband.create_group([a, b], name=name, backend=backend)
        if "sideband_p2p" in impls
        else None
    )
    records = []
    try:
        for nbytes in sizes:
            warm, timed = _rounds(nbytes, smoke)
            samples: dict[str, list[float]] = {i: [] for i in impls}
            for _ in range(warm):
                for impl in impls:
                    _round(impl, a, b, nbytes, name)
            for _ in range(timed):
                for impl in impls:  # interleaved, so that background load hits all alike
                    samples[impl].append(_round(impl, a, b, nbytes, name))
            for impl in impls:
                xs = samples[impl]
                records.append(
                    {
                        "impl": impl,
                        "nbytes": nbytes,
                        "rounds": len(xs),
                        "median_s": statistics.median(xs),
                        "min_s": min(xs),
                        "max_s": max(xs),
                    }
                )
    finally:
        if handle is not None:
            handle.destroy()
        if gloo is not None:
            destroy_collective_group(gloo)
        for x in (a, b):
            ray.kill(x)
    return records


def driver_main() -> None:
    """``--hosts 2``: runs on host 0 of the test bed; the producer goes to host 1."""
    from sideband import testbed as tb

    args = config.get(_ARGS_ENV)
    if args is None:
        raise SystemExit(f"{_ARGS_ENV} is not set: this driver runs under `sideband bench rdt`")
    bed = tb.connect()
    # gloo picks its interface by name (every namespaced host calls its link "sb0"); in local
    # mode the "hosts" share one kernel, so sideband is told to pull over TCP all the same.
    env = {"GLOO_SOCKET_IFNAME": "sb0" if bed["mode"] == "netns" else "lo"}
    if bed["mode"] != "netns":
        env["SIDEBAND_RDT_SAME_HOST"] = "0"
    rt = {"runtime_env": {"env_vars": env}}
    placement = ({**tb.on_host(1), **rt}, {**tb.on_host(0), **rt})
    records = run(
        tuple(args["sizes"]), tuple(args["impls"]), args["smoke"], placement, bed["backend"]
    )
    tb.emit({"mode": bed["mode"], "records": records})


def measure(bed: Any, sizes: tuple[int, ...], impls: tuple[str, ...], smoke: bool) -> list:
    """The rounds on a started test bed (driver on host 0, producer on host 1); the records."""
    spec = {"sizes": list(sizes), "impls": list(impls), "smoke": smoke}
    code = "from sideband.bench.rdt import driver_main; driver_main()"
    d = bed.start_driver([sys.executable, "-c", code], env={_ARGS_ENV: json.dumps(spec)})
    return d.result(300 + 60 * len(sizes) * len(impls))["records"]


def _run_hosts(sizes: tuple[int, ...], impls: tuple[str, ...], smoke: bool, mode: str) -> tuple:
    """(records, test-bed description): the rounds inside a 2-host test bed of their own."""
    from sideband.testbed import Testbed

    # Room in each host's object store for the largest tensor and its copies in flight.
    store_mb = max(200, 3 * max(sizes) >> 20)
    with Testbed(2, mode=mode, quiet=True, object_store_mb=store_mb) as bed:
        describe = bed.describe()
        print(describe, file=sys.stderr, flush=True)
        return measure(bed, sizes, impls, smoke), describe


def ratios(records: list[dict[str, Any]], hosts: int = 1) -> list[dict[str, Any]]:
    """RDT sideband's median over each baseline's, per size, with the issue's targets."""
    targets = HOSTS_TARGETS if hosts > 1 else TARGETS
    med = {(r["impl"], r["nbytes"]): r["median_s"] for r in records}
    out = []
    for (impl, nbytes), m in med.items():
        if impl not in ("rdt_sideband", "rdt_sideband_shm"):
            continue
        for base in ("rdt_gloo", "object_store"):
            if (base, nbytes) in med:
                target = targets.get(nbytes, {}).get(base)
                ratio = m / med[(base, nbytes)]
                out.append(
                    {
                        "nbytes": nbytes,
                        "impl": impl,
                        "baseline": base,
                        "ratio": ratio,
                        "target": target,
                        "met": None if target is None else ratio <= target,
                    }
                )
    return out


def _size(n: int) -> str:
    for unit, k in (("MiB", _MIB), ("KiB", _KIB)):
        if n >= k and n % k == 0:
            return f"{n // k} {unit}"
    return f"{n} B"


def _ms(s: float) -> str:
    return f"{s * 1e3:.2f}"


def table(records: list[dict[str, Any]], impls: tuple[str, ...], hosts: int = 1) -> str:
    from sideband._table import render

    by = {(r["impl"], r["nbytes"]): r for r in records}
    sizes = sorted({r["nbytes"] for r in records})
    rows = []
    for n in sizes:
        row: list[Any] = [_size(n)]
        for impl in impls:
            r = by.get((impl, n))
            row.append(
                "-" if r is None else f"{_ms(r['median_s'])} ({_ms(r['min_s'])}-{_ms(r['max_s'])})"
            )
        rows.append(row)
    head = ["size"] + [f"{LABELS[i]} ms" for i in impls]
    text = "median (min-max) per round from the driver\n" + render(head, rows)
    rat = ratios(records, hosts)
    if rat:
        rrows = [
            [
                _size(r["nbytes"]),
                LABELS[r["impl"]],
                LABELS[r["baseline"]],
                f"{r['ratio']:.3f}",
                "" if r["target"] is None else f"<= {r['target']}",
                "" if r["met"] is None else ("met" if r["met"] else "MISSED"),
            ]
            for r in rat
        ]
        text += "\n\nRDT sideband / baseline (medians)\n" + render(
            ["size", "impl", "baseline", "ratio", "target", ""], rrows
        )
    return text


def plot(records: list[dict[str, Any]], path: str, hosts: int = 1) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for impl in IMPLS:
        pts = sorted((r["nbytes"], r["median_s"]) for r in records if r["impl"] == impl)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], marker="o", label=LABELS[impl])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tensor size (bytes)")
    ax.set_ylabel("ms per round (median)")
    where = "one host" if hosts == 1 else f"{hosts} test-bed hosts"
    ax.set_title(f"b.consume.remote(a.produce.remote()), 2 actors, {where}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sideband bench rdt``."""
    p = argparse.ArgumentParser(prog="sideband bench rdt", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="small sizes, few rounds (for tests)")
    p.add_argument("--sizes", help="comma-separated byte counts (default: 8 B .. 256 MiB)")
    p.add_argument(
        "--impls",
        help=f"subset of {','.join(IMPLS)} (default: all; --hosts 2: rdt_gloo,rdt_sideband)",
    )
    p.add_argument("--hosts", type=int, choices=(1, 2), default=1, help="2: across test-bed hosts")
    p.add_argument("--mode", choices=("auto", "netns", "local"), default="auto", help="test bed")
    p.add_argument("--json", metavar="PATH", help="write the records as JSON ('-': stdout)")
    p.add_argument("--plot", metavar="PATH.png", help="draw time vs size per implementation")
    args = p.parse_args(argv)
    default = HOSTS_IMPLS if args.hosts > 1 else IMPLS
    impls = tuple(i for i in (args.impls or ",".join(default)).split(",") if i)
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        p.error(f"unknown implementations {unknown}; choose from {','.join(IMPLS)}")
    if args.sizes:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    else:
        sizes = SMOKE_SIZES if args.smoke else (HOSTS_SIZES if args.hosts > 1 else SIZES)
    describe = "one host"
    if args.hosts > 1:
        records, describe = _run_hosts(sizes, impls, args.smoke, args.mode)
    else:
        records = _run_local(sizes, impls, args.smoke)
    doc = {
        **json_header("rdt", argv),
        "hosts": args.hosts,
        "testbed": describe,
        "records": records,
        "ratios": ratios(records, args.hosts),
    }
    if args.json == "-":
        print(json.dumps(doc, indent=2))
    else:
        print(describe)
        print(table(records, impls, args.hosts))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(doc, f, indent=2)
    if args.plot:
        plot(records, args.plot, args.hosts)
    return 0


def _run_local(sizes: tuple[int, ...], impls: tuple[str, ...], smoke: bool) -> list:
    import ray

    started = False
    if not ray.is_initialized():
        # Room in the object store for the largest tensor and its copies in flight.
        store = max(512 * _MIB, 4 * max(sizes))
        ray.init(include_dashboard=False, object_store_memory=store)
        started = True
    try:
        records = run(sizes, impls, smoke)
    finally:
        if started:
            ray.shutdown()
    return records


if __name__ == "__main__":
    raise SystemExit(main())
