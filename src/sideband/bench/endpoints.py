"""Benchmark: requests/s and p50/p99 latency of a small GET on an exposed actor (``sideband bench
endpoints``), next to the same aiohttp handler in a plain process, Ray Serve's HTTP proxy in front
of a deployment doing the same, and calling the actor method through Ray from the driver.

Every HTTP target answers ``GET /`` with a counter as text. The load generator runs in another
process on loopback: ``wrk`` when installed (Debian: ``apt-get install wrk``), else an aiohttp
client. Targets are measured one after another with the same load; each gets a warm-up first.
Ray Serve needs ``pip install 'ray[serve]'`` (skipped with a note otherwise).

``--suite ws``: WebSocket echo round trips (one message in flight per connection) and messages/s,
sideband's ``@sideband.http.websocket`` against the same aiohttp handler in a plain process.
``--suite metrics``: requests/s of one endpoint with ``metrics="ray"`` against ``metrics=None``
(runs alternate, best of each kept): what exporting metrics through Ray costs the hot path.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

from sideband.bench import endpoint_targets as targets

_TARGETS = "sideband.bench.endpoint_targets"

# --- load generation ---------------------------------------------------------------------------

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _wrk(url: str, duration: float, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        return float(m.group(1)) * _UNITS[m.group(2)]  # type: ignore[union-attr]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url} answered {errors.group(1)} requests with errors:\n{out}")
    return {"rps": rps, "p50": pct("50"), "p99": pct("99")}


def _child(kind: str, url: str, duration: float, connections: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", _TARGETS, "loadgen", kind, url, str(duration), str(connections)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _aiohttp(url: str, duration: float, connections: int) -> dict[str, float]:
    return _child("http", url, duration, connections)


def _ws(url: str, duration: float, connections: int) -> dict[str, float]:
    return _child("ws", url, duration, connections)


def _measure(url: str, args: argparse.Namespace, gen: Any = None) -> dict[str, float]:
    return _measure_all({"x": url}, args, gen)["x"]


def _measure_all(urls: dict[str, str], args: argparse.Namespace, gen: Any = None) -> dict:
    """Each target measured ``repeats`` times, runs of the targets alternating; best kept."""
    gen = gen or (_wrk if args.loadgen == "wrk" else _aiohttp)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
    for url in urls.values():
        gen(url, 1.0, args.connections)  # warm-up: connections, caches
    for _ in range(args.repeats):
        for name, url in urls.items():
            runs[name].append(gen(url, args.duration, args.connections))
    out = {}
    for name, rs in runs.items():
        best = max(rs, key=lambda r: r["rps"])
        out[name] = {**best, "runs_rps": [r["rps"] for r in rs]}
    return out


def _ray_calls(actor: Any, duration: float, in_flight: int) -> dict[str, float]:
    """Latency of sequential ``ray.get(actor.value.remote())``, throughput with calls in flight."""
    import ray

    lat = []
    stop = time.perf_counter() + duration / 2
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        ray.get(actor.value.remote())
        lat.append(time.perf_counter() - t0)
    done = 0
    t0 = time.perf_counter()
    stop = t0 + duration / 2
    pending = [actor.value.remote() for _ in range(in_flight)]
    while time.perf_counter() < stop:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready)
        done += 1
        pending.append(actor.value.remote())
    ray.get(pending)
    return {"rps": done / (time.perf_counter() - t0), **targets.percentiles(lat)}


# --- main --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plain_process() -> tuple[subprocess.Popen, int]:
    plain = subprocess.Popen(
        [sys.executable, "-m", _TARGETS, "plain-server"],
        stdout=subprocess.PIPE,
        text=True,
    )
    return plain, int(plain.stdout.readline())  # type: ignore[union-attr]


def _http_suite(args: argparse.Namespace, results: dict, notes: list) -> dict[str, float]:
    import ray

    import sideband

    plain, port = _plain_process()
    actor = targets.counter_class().remote()
    try:
        urls = {
            "aiohttp, plain process": f"http://127.0.0.1:{port}/",
            "sideband actor endpoint": sideband.http.url(actor) + "/",
        }
        results.update(_measure_all(urls, args))  # runs alternate: load changes hit both
        results["Ray call from driver"] = _ray_calls(actor, args.duration, args.connections)
    finally:
        plain.terminate()
        plain.wait(10)
        ray.kill(actor)
    if args.skip_serve:
        notes.append("Ray Serve skipped: --skip-serve")
    else:
        try:
            from ray import serve
        except ImportError as e:
            notes.append(f"Ray Serve skipped: {e} (pip install 'ray[serve]')")
        else:
            serve_port = _free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
            try:
                serve.run(
                    targets.serve_app(args.connections), name="sideband-bench", route_prefix="/"
                )
                results["Ray Serve HTTP proxy"] = _measure(f"http://127.0.0.1:{serve_port}/", args)
            finally:
                serve.shutdown()
    ours = results["sideband actor endpoint"]["rps"]
    checks = {
        "sideband / plain aiohttp (target >= 0.9)": ours / results["aiohttp, plain process"]["rps"]
    }
    if "Ray Serve HTTP proxy" in results:
        checks["sideband / Ray Serve (target >= 3)"] = ours / results["Ray Serve HTTP proxy"]["rps"]
    return checks


def _ws_suite(args: argparse.Namespace, results: dict, notes: list) -> dict[str, float]:
    import ray

    import sideband

    plain, port = _plain_process()
    actor, raw = targets.counter_class().remote(), targets.raw_ws_class().remote()
    try:
        urls = {
            "aiohttp WebSocket, plain process": f"http://127.0.0.1:{port}/ws",
            "sideband WebSocket endpoint": sideband.http.url(actor) + "/ws",
            # The control: the same aiohttp code in a Ray worker (nice 15, Ray's threads).
            "aiohttp WebSocket in a Ray actor": f"http://127.0.0.1:{ray.get(raw.start.remote())}/ws",
        }
        results.update(_measure_all(urls, args, _ws))
    finally:
        plain.terminate()
        plain.wait(10)
        ray.kill(actor)
        ray.kill(raw)
    ours = results["sideband WebSocket endpoint"]["rps"]
    plain_rps = results["aiohttp WebSocket, plain process"]["rps"]
    actor_rps = results["aiohttp WebSocket in a Ray actor"]["rps"]
    return {
        "sideband / plain aiohttp, messages/s (target >= 0.9)": ours / plain_rps,
        "sideband / aiohttp in a Ray actor, messages/s": ours / actor_rps,
    }


def _metrics_suite(args: argparse.Namespace, results: dict, notes: list) -> dict[str, float]:
    import ray

    import sideband

    on, off = targets.counter_class("ray").remote(), targets.counter_class(None).remote()
    try:
        urls = {
            "sideband, metrics off": sideband.http.url(off) + "/",
            "sideband, metrics through Ray": sideband.http.url(on) + "/",
        }
        results.update(_measure_all(urls, args))
    finally:
        ray.kill(on)
        ray.kill(off)
    ratio = (
        results["sideband, metrics through Ray"]["rps"] / results["sideband, metrics off"]["rps"]
    )
    return {"metrics on / off, req/s (target: 1 within noise)": ratio}


_SUITES = {"http": _http_suite, "ws": _ws_suite, "metrics": _metrics_suite}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sideband bench endpoints``; prints a table (or JSON) and returns 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="sideband bench endpoints", description=__doc__.splitlines()[0]
    )
    p.add_argument("--suite", choices=sorted(_SUITES), default="http", help="what to measure")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    p.add_argument("--repeats", type=int, default=2, help="runs per target (the best is kept)")
    p.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections")
    p.add_argument("--loadgen", choices=("auto", "wrk", "aiohttp"), default="auto")
    p.add_argument("--skip-serve", action="store_true", help="leave Ray Serve out")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "aiohttp"
    if args.suite == "ws":
        args.loadgen = "aiohttp"  # wrk speaks no WebSocket

    import ray

    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        started = True
    results: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    try:
        checks = _SUITES[args.suite](args, results, notes)
    finally:
        if started:
            ray.shutdown()
    if args.json:
        report = {"suite": args.suite, "loadgen": args.loadgen, "connections": args.connections}
        print(
            json.dumps({**report, "results": results, "ratios": checks, "notes": notes}, indent=2)
        )
        return 0
    from sideband._table import render

    base = next(iter(results.values()))["rps"]
    unit = "msg/s" if args.suite == "ws" else "req/s"
    rows = [
        [
            name,
            f"{r['rps']:,.0f}",
            f"{r['p50'] * 1e3:.2f}",
            f"{r['p99'] * 1e3:.2f}",
            f"{r['rps'] / base:.2f}",
        ]
        for name, r in results.items()
    ]
    print(
        f"suite {args.suite} on loopback, load generator {args.loadgen} in another process, "
        f"{args.connections} connections, {args.duration:g} s x {args.repeats} (best), "
        f"{os.cpu_count()} cores"
    )
    print(render(["target", unit, "p50 ms", "p99 ms", "x first"], rows))
    if args.suite == "http":
        print(
            "Ray call: p50/p99 of sequential ray.get; req/s with",
            args.connections,
            "calls in flight",
        )
    for name, ratio in checks.items():
        print(f"{name}: {ratio:.2f}")
    for n in notes:
        print(n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
