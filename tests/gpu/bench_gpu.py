"""64 MiB between 2 actors on one GPU: sideband (CUDA IPC, and staged through pinned memory)
against Ray's object store (``ray.put`` of ``.cpu()``, then ``ray.get`` and ``.cuda()``).

Run by scripts/gpu_check.sh (``python3 tests/gpu/bench_gpu.py``); prints a table. Every time is
the median of several repetitions measured in the actors (from a common barrier to the receiver
holding the data on its GPU, synchronized), except the object-store path, timed on the driver
from the put to the receiver's synchronized ``.cuda()``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

import ray

NBYTES = 64 * 1024 * 1024
REPS = int(os.environ.get("BENCH_REPS", "7"))


@ray.remote(num_cpus=0, num_gpus=0.25)
class Peer:
    def __init__(self) -> None:
        import torch

        self.x = torch.ones(NBYTES // 4, device="cuda")

    def ipc_env(self, on: bool) -> None:
        os.environ["SIDEBAND_CUDA_IPC"] = "1" if on else "0"

    def run(self, name: str, op: str, reps: int) -> list[float]:
        import torch

        import sideband

        g = sideband.get_group(name)
        times = []
        for i in range(reps + 1):
            g.barrier()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            if op == "broadcast":
                g.broadcast(self.x, src=0)
            elif g.rank == 0:
                g.send(self.x, dst=1, tag=i)
            else:
                g.recv(self.x, src=0, tag=i)
            torch.cuda.synchronize()
            if i:  # the first round opens mappings, pins buffers: not timed
                times.append(time.perf_counter() - t0)
        g.barrier()
        return times

    def produce(self) -> Any:
        import torch

        torch.cuda.synchronize()
        return self.x.cpu()

    def consume(self, t: Any) -> float:
        import torch

        y = t.cuda()
        torch.cuda.synchronize()
        return float(y[0].item())


def _sideband(op: str, ipc: bool) -> float:
    import sideband

    peers = [Peer.remote() for _ in range(2)]
    ray.get([p.ipc_env.remote(ipc) for p in peers])
    name = f"bench-{op}-{int(ipc)}"
    h = sideband.create_group(peers, name=name, timeout_s=120)
    try:
        per = ray.get([p.run.remote(name, op, REPS) for p in peers], timeout=300)
    finally:
        h.destroy()
        for p in peers:
            ray.kill(p)
    # The op is done when the slower rank is done.
    return statistics.median(max(a, b) for a, b in zip(*per))


def _object_store() -> float:
    peers = [Peer.remote() for _ in range(2)]
    try:
        times = []
        for i in range(REPS + 1):
            t0 = time.perf_counter()
            ref = peers[0].produce.remote()
            ray.get(peers[1].consume.remote(ref), timeout=120)
            if i:
                times.append(time.perf_counter() - t0)
            del ref
    finally:
        for p in peers:
            ray.kill(p)
    return statistics.median(times)


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device; nothing to measure")
        return 0
    if not ray.is_initialized():
        ray.init(
            address="local",  # a new instance, never a leftover one
            num_gpus=1,
            num_cpus=max(4, os.cpu_count() or 4),
            include_dashboard=False,
            object_store_memory=2 * 1024**3,
            _node_ip_address="127.0.0.1",
        )
    print(f"GPU: {torch.cuda.get_device_name(0)}, 64 MiB float32, median of {REPS}")
    rows = []
    base = _object_store()
    rows.append(("send/recv + broadcast", "Ray object store (put .cpu(), get .cuda())", base))
    for op in ("broadcast", "send/recv"):
        key = "broadcast" if op == "broadcast" else "sendrecv"
        rows.append((op, "sideband CUDA IPC (same GPU)", _sideband(key, True)))
        rows.append((op, "sideband staged (pinned host)", _sideband(key, False)))
    print()
    print(f"{'op':<22} {'path':<44} {'ms':>8} {'GB/s':>7} {'vs object store':>16}")
    print("-" * 101)
    for op, path, t in rows:
        gbs = NBYTES / t / 1e9
        print(f"{op:<22} {path:<44} {t * 1e3:8.2f} {gbs:7.1f} {base / t:15.1f}x")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
