"""``sideband bench reliability``: how fast dead peers are noticed, and what cycles leave behind.

Kills one rank of a 2-rank group while the other waits in an allreduce, alternating ``ray.kill``
and SIGKILL and the shm and tcp transports, and reports the time from the kill to the survivor's
PeerLostError. Then runs create/op/destroy cycles inside actors and reports file descriptors,
threads and memory before and after, and what is left in /dev/shm and the registry.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import threading
import time
from typing import Any

import numpy as np

import sideband
from sideband._table import render


def _wait_in_allreduce(self: Any, name: str) -> tuple[str, float]:
    try:
        sideband.get_group(name).allreduce(np.ones(1000))
        return "no error", time.time()
    except sideband.SidebandError as e:
        return type(e).__name__, time.time()


def _pid(self: Any) -> int:
    return os.getpid()


def _cycles(self: Any, rank: int, backend: str, count: int) -> tuple[tuple, tuple]:
    import gc

    def snap() -> tuple[int, int, int]:
        gc.collect()
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return len(os.listdir("/proc/self/fd")), threading.active_count(), rss

    def cycle(i: int) -> None:
        g = sideband.init_group(2, rank, name=f"bench-cycle-{backend}", backend=backend)
        g.allreduce(np.ones(1 << 16, np.float32))
        sideband.destroy_group(f"bench-cycle-{backend}")

    for i in range(20):
        cycle(i)
    before = snap()
    for i in range(count):
        cycle(i)
    return before, snap()


def main(argv: list[str] | None = None) -> int:
    import ray

    p = argparse.ArgumentParser(prog="sideband bench reliability", description=__doc__)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--cycles", type=int, default=200)
    args = p.parse_args(argv)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)

    class _Member:
        def ready(self) -> bool:
            return True

    Member: Any = ray.remote(num_cpus=0)(_Member)

    survivor = Member.remote()
    delays: dict[tuple[str, str], list[float]] = {}
    wrong = 0
    for i in range(args.kills):
        backend = ("shm", "tcp")[i % 2]
        how = ("ray.kill", "SIGKILL")[(i // 2) % 2]
        victim = Member.remote()
        ray.get([survivor.ready.remote(), victim.ready.remote()])
        h = sideband.create_group([survivor, victim], name="bench-kill", backend=backend)
        ref = survivor.__ray_call__.remote(_wait_in_allreduce, "bench-kill")
        time.sleep(0.2)
        if how == "SIGKILL":
            os.kill(ray.get(victim.__ray_call__.remote(_pid)), signal.SIGKILL)
        else:
            ray.kill(victim)
        killed = time.time()
        kind, at = ray.get(ref)
        wrong += kind != "PeerLostError"
        delays.setdefault((backend, how), []).append(at - killed)
        h.destroy()
    rows = [
        [b, how, len(d), f"{statistics.median(d) * 1e3:.0f} ms", f"{max(d) * 1e3:.0f} ms"]
        for (b, how), d in sorted(delays.items())
    ]
    print(render(["transport", "kill", "kills", "median detection", "max detection"], rows))
    print(f"errors other than PeerLostError: {wrong}\n")

    pair = [survivor, Member.remote()]
    rows = []
    for backend in ("shm", "tcp"):
        res = ray.get(
            [a.__ray_call__.remote(_cycles, r, backend, args.cycles) for r, a in enumerate(pair)]
        )
        for r, ((fd0, th0, rss0), (fd1, th1, rss1)) in enumerate(res):
            rows.append(
                [
                    backend,
                    r,
                    args.cycles,
                    f"{fd0} -> {fd1}",
                    f"{th0} -> {th1}",
                    f"{rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB",
                ]
            )
    print(render(["transport", "rank", "cycles", "fds", "threads", "rss"], rows))
    shm_left = [f for f in os.listdir("/dev/shm") if f.startswith("sideband-")]
    groups_left = [g["name"] for g in sideband.list_groups() if g["name"].startswith("bench-")]
    print(f"/dev/shm segments left: {len(shm_left)}; registry groups left: {len(groups_left)}")
    for a in pair:
        ray.kill(a)
    return 0 if wrong == 0 and not shm_left and not groups_left else 1
