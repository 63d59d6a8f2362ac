"""Driver scenarios run on the test bed's host 0: ``python mn_drivers.py SCENARIO JSON_ARGS``.

Run as a script, so the functions shipped into actors are pickled by value: the remote host's
Ray workers need nothing but sideband installed. Each scenario prints one result line
(``sideband.testbed.emit``) that the test reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Any

import numpy as np
import ray

import sideband
from sideband import testbed as tb

# Ranks 0, 1 on host 0 and ranks 2, 3 on host 1: the layout of issue 8's tests and benchmark.
LAYOUT = (0, 0, 1, 1)


@ray.remote(num_cpus=0)
class Member:
    """A plain actor; everything it runs arrives through ``__ray_call__``."""

    def ready(self) -> int:
        return os.getpid()


def make_actors(env: dict[str, str] | None = None, layout: tuple[int, ...] = LAYOUT) -> list:
    opts: dict[str, Any] = {}
    if env:
        opts["runtime_env"] = {"env_vars": env}
    actors = [Member.options(**tb.on_host(h), **opts).remote() for h in layout]
    ray.get([a.ready.remote() for a in actors], timeout=120)
    return actors


def on_all(actors: list, fn: Any, *args: Any, timeout: float = 120) -> list:
    return ray.get([a.__ray_call__.remote(fn, *args) for a in actors], timeout=timeout)


# -- inside the actors -----------------------------------------------------------------------------
def _a_where(self: Any, name: str) -> dict[str, Any]:
    g = sideband.get_group(name)
    st = os.stat("/dev/shm")
    topo = g.topology()
    return {
        "rank": g.rank,
        "topology": topo,
        "shm": f"{st.st_dev}:{st.st_ino}",
        "hier_env": os.environ.get("SIDEBAND_HIERARCHICAL"),
        # Whether the host-aware algorithms run (None where the core does not report it).
        "hier": topo.get("hierarchical"),
    }


def _check(ok: list[str], what: str, good: bool) -> None:
    if not good:
        ok.append(what)


def _a_ops(self: Any, name: str, sizes: list[int]) -> dict[str, Any]:
    """Every sized op at every size with known inputs; returns the failures and a digest of a
    random-data allreduce (every rank must get the same bytes)."""
    g = sideband.get_group(name)
    r, n = g.rank, g.world_size
    bad: list[str] = []
    for size in sizes:
        # Integer-valued float32 stays exact: every sum is far below 2**24.
        base = np.arange(size, dtype=np.float32) % 1000
        x = base * (r + 1) + r
        g.allreduce(x)
        want = base * (n * (n + 1) // 2) + n * (n - 1) // 2
        _check(bad, f"allreduce sum {size}", np.array_equal(x, want))
        y = (np.arange(size, dtype=np.int64) * 7 + r * 13) % 101
        g.allreduce(y, op=sideband.ReduceOp.MAX)
        want_y = np.max([(np.arange(size, dtype=np.int64) * 7 + q * 13) % 101 for q in range(n)], 0)
        _check(bad, f"allreduce max {size}", np.array_equal(y, want_y))
        for root in (0, n - 1):
            b = base + root if r == root else np.zeros(size, np.float32)
            g.broadcast(b, src=root)
            _check(bad, f"broadcast root {root} {size}", np.array_equal(b, base + root))
        out = g.allgather(np.full(size, r, np.int32))
        _check(
            bad,
            f"allgather {size}",
            all(np.array_equal(out[p], np.full(size, p, np.int32)) for p in range(n)),
        )
        rs_in = np.stack([base + k * (r + 1) for k in range(n)])
        got = g.reduce_scatter(rs_in)
        _check(
            bad,
            f"reduce_scatter {size}",
            np.array_equal(got, base * n + r * (n * (n + 1) // 2)),
        )
    rnd = np.random.default_rng(r).standard_normal(max(sizes)).astype(np.float32)
    g.allreduce(rnd)
    return {"rank": r, "bad": bad, "digest": hashlib.sha256(rnd.tobytes()).hexdigest()}


def _a_loop(self: Any, name: str, nbytes: int, max_s: float) -> dict[str, Any]:
    """Allreduce until an error or ``max_s``; when and what raised."""
    g = sideband.get_group(name)
    x = np.ones(nbytes // 4, np.float32)
    iters = 0
    end = time.monotonic() + max_s
    try:
        while time.monotonic() < end:
            x.fill(1.0)
            g.allreduce(x)
            iters += 1
    except Exception as e:
        return {
            "rank": g.rank,
            "error": type(e).__name__,
            "peer_lost": isinstance(e, sideband.PeerLostError),
            "t": time.time(),
            "iters": iters,
            "message": str(e)[:500],
        }
    return {"rank": g.rank, "error": None, "t": time.time(), "iters": iters, "message": ""}


# -- scenarios -------------------------------------------------------------------------------------
def scenario_ops(args: dict[str, Any]) -> dict[str, Any]:
    """Topology and op correctness of a 2 hosts x 2 actors group (env: SIDEBAND_HIERARCHICAL)."""
    bed = tb.connect()
    env = {"SIDEBAND_HIERARCHICAL": args["hier"]} if args.get("hier") is not None else None
    actors = make_actors(env)
    name = f"mn-ops-{args.get('hier')}"
    t0 = time.monotonic()
    h = sideband.create_group(actors, name=name, backend=bed["backend"], timeout_s=60)
    created_s = time.monotonic() - t0
    where = on_all(actors, _a_where, name)
    ops = on_all(actors, _a_ops, name, args["sizes"], timeout=args.get("timeout", 180))
    h.destroy()
    return {"mode": bed["mode"], "where": where, "ops": ops, "create_s": created_s}


def scenario_fault(args: dict[str, Any]) -> dict[str, Any]:
    """A long series of allreduces; the outside cuts host 1 after event 'looping'."""
    bed = tb.connect()
    actors = make_actors()
    name = "mn-fault"
    sideband.create_group(actors, name=name, backend=bed["backend"], timeout_s=60)
    refs = [a.__ray_call__.remote(_a_loop, name, args["nbytes"], args["max_s"]) for a in actors]
    time.sleep(1.0)  # every rank is inside the loop by now
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    if ready:  # a loop ended before the cut: report it rather than measure nothing
        return {"early": ray.get(ready)}
    tb.event("looping")
    # Survivors only: host 1's actors die (or are cut off) with their host.
    survivors = [ref for ref, h in zip(refs, LAYOUT) if h == 0]
    return {"survivors": ray.get(survivors, timeout=args["max_s"] + 30)}


SCENARIOS = {"ops": scenario_ops, "fault": scenario_fault}

if __name__ == "__main__":
    out = SCENARIOS[sys.argv[1]](json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
    tb.emit(out)
    sys.stdout.flush()
    # Skip Ray's shutdown: after a fault test it would wait on a node that is gone.
    os._exit(0)
