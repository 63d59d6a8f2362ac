"""Driver scenarios for tensors by ref across test-bed hosts: ``python rdt_drivers.py SCENARIO
JSON_ARGS``, run on host 0 (the consumer's host); the producer lives on host 1.

Run as a script, so the actor classes are pickled by value (the remote host's workers need only
sideband installed); ``sideband.rdt.register()`` here makes Ray ship the transport to them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import ray

import sideband.rdt
from sideband import testbed as tb

sideband.rdt.register()
MIB = 1 << 20


@ray.remote(num_cpus=0)
class Producer:
    @ray.method(tensor_transport="sideband")
    def full(self, n: int, value: float) -> Any:
        import torch

        return torch.full((n,), value)

    @ray.method(tensor_transport="sideband")
    def mixed(self) -> Any:
        import torch

        return {
            "a": torch.arange(10, dtype=torch.int64),
            "e": torch.arange(20.0).reshape(4, 5).t(),  # not contiguous
            "big": torch.arange(1 << 18, dtype=torch.float64),
            "note": "not a tensor",
        }

    def where(self) -> dict[str, Any]:
        return {"ip": ray.util.get_node_ip_address(), "pid": os.getpid()}

    def stats(self) -> dict[str, Any]:
        return sideband.rdt.stats()

    def die(self) -> None:
        os._exit(1)


@ray.remote(num_cpus=0, enable_tensor_transport=True)
class Consumer:
    def total(self, x: Any) -> float:
        return float(x.sum())

    def describe(self, x: dict[str, Any]) -> dict[str, Any]:
        return {
            k: (tuple(v.shape), str(v.dtype), float(v.double().sum())) if hasattr(v, "shape") else v
            for k, v in x.items()
        }

    def where(self) -> dict[str, Any]:
        return {"ip": ray.util.get_node_ip_address(), "pid": os.getpid()}

    def stats(self) -> dict[str, Any]:
        return sideband.rdt.stats()


def _pair(bed: dict[str, Any]) -> tuple[Any, Any]:
    # In local mode the hosts share one kernel and /dev/shm: make consumers pull over TCP anyway.
    opts: dict[str, Any] = {}
    if bed["mode"] != "netns":
        opts["runtime_env"] = {"env_vars": {"SIDEBAND_RDT_SAME_HOST": "0"}}
    a = Producer.options(**tb.on_host(1), **opts).remote()
    b = Consumer.options(**tb.on_host(0), **opts).remote()
    ray.get([a.where.remote(), b.where.remote()], timeout=120)
    return a, b


def _wait_serving(a: Any, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while ray.get(a.stats.remote(), timeout=10)["serving"] < 1:
        if time.monotonic() > end:
            raise TimeoutError("the producer never started serving the fetch")
        time.sleep(0.05)


def _outcome(ref: Any, t_cut: float) -> dict[str, Any]:
    try:
        value = ray.get(ref, timeout=60)
        return {"value": value, "error": None, "after_s": time.time() - t_cut}
    except Exception as e:
        return {"value": None, "error": str(e)[-1500:], "after_s": time.time() - t_cut}


def scenario_pull(args: dict[str, Any]) -> dict[str, Any]:
    """Values across hosts, then the producer actor killed while a fetch streams."""
    bed = tb.connect()
    a, b = _pair(bed)
    out: dict[str, Any] = {
        "mode": bed["mode"],
        "where": ray.get([a.where.remote(), b.where.remote()]),
    }
    out["totals"] = [
        ray.get(b.total.remote(a.full.remote(n, 2.0)), timeout=120) for n in args["sizes"]
    ]
    out["mixed"] = ray.get(b.describe.remote(a.mixed.remote()), timeout=60)
    out["consumer"] = ray.get(b.stats.remote())
    if args.get("kill"):
        # The outside slowed host 1's link, so that this fetch streams for many seconds.
        ref = a.full.remote(args["kill"] // 4, 1.0)
        ray.wait([ref], fetch_local=False, timeout=60)
        res = b.total.remote(ref)
        _wait_serving(a)
        t_cut = time.time()
        a.die.remote()
        out["killed"] = _outcome(res, t_cut)
        # The consumer survives and serves again.
        c = Producer.options(**tb.on_host(1)).remote()
        out["after"] = ray.get(b.total.remote(c.full.remote(MIB, 3.0)), timeout=120)
    return out


def scenario_host(args: dict[str, Any]) -> dict[str, Any]:
    """A fetch streams from host 1; the outside kills host 1 after event 'fetching'."""
    bed = tb.connect()
    a, b = _pair(bed)
    ref = a.full.remote(args["nbytes"] // 4, 1.0)
    ray.wait([ref], fetch_local=False, timeout=60)
    res = b.total.remote(ref)
    _wait_serving(a)
    tb.event("fetching")
    out = _outcome(res, 0.0)
    out["t"] = time.time()
    out["consumer_alive"] = isinstance(ray.get(b.stats.remote(), timeout=30), dict)
    return out


SCENARIOS = {"pull": scenario_pull, "host": scenario_host}

if __name__ == "__main__":
    result = SCENARIOS[sys.argv[1]](json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
    tb.emit(result)
    sys.stdout.flush()
    os._exit(0)  # skip Ray's shutdown: after a host kill it would wait on a node that is gone
