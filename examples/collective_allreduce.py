"""Group four plain Ray actors and average their arrays with sideband (run: python this_file)."""

from __future__ import annotations

import numpy as np
import ray

import sideband


@ray.remote(num_cpus=0)
class Worker:
    def __init__(self, seed: int) -> None:
        self.weights = np.random.default_rng(seed).standard_normal(1_000_000).astype(np.float32)

    def average(self) -> float:
        g = sideband.get_group("example")
        g.allreduce(self.weights, sideband.ReduceOp.AVG)  # in place, on every rank
        return float(self.weights[:3].sum())


def main() -> list[float]:
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False)
    workers = [Worker.remote(seed) for seed in range(4)]
    group = sideband.create_group(workers, name="example")
    try:
        results = ray.get([w.average.remote() for w in workers])
    finally:
        group.destroy()
        for w in workers:
            ray.kill(w)
        if started:
            ray.shutdown()
    print("every rank holds the same average:", results)
    return results


if __name__ == "__main__":
    main()
