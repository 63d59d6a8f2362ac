"""A producer actor and a consumer actor passing tensors by ref through the sideband transport.

    python examples/rdt_pipeline.py

``a.produce.remote()`` returns an ObjectRef whose tensors stay in the producer (in shared memory);
passing the ref to ``b.consume.remote`` moves them straight to the consumer, never through Ray's
object store, and Ray's reference counting frees them when the last ref dies.
"""

from __future__ import annotations

import time

import ray
import torch

import sideband.rdt

# Before the classes: Ray checks the transport's name when @ray.method runs.
sideband.rdt.register()


@ray.remote(num_cpus=0)
class Producer:
    @ray.method(tensor_transport="sideband")
    def produce(self, step: int, n: int) -> dict[str, torch.Tensor]:
        return {"x": torch.full((n,), float(step)), "step": torch.tensor(step)}


# A consumer with no tensor_transport methods of its own still needs enable_tensor_transport.
@ray.remote(num_cpus=0, enable_tensor_transport=True)
class Consumer:
    def consume(self, batch: dict[str, torch.Tensor]) -> float:
        return float(batch["x"].sum()) / batch["x"].numel() + int(batch["step"])


def main(steps: int = 5, n: int = 4 << 20) -> list[float]:
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False)
    a, b = Producer.remote(), Consumer.remote()
    try:
        out = []
        for step in range(steps):
            t0 = time.perf_counter()
            value = ray.get(b.consume.remote(a.produce.remote(step, n)))
            ms = (time.perf_counter() - t0) * 1e3
            print(f"step {step}: {n * 4 >> 20} MiB by ref -> {value:.1f} in {ms:.1f} ms")
            out.append(value)
        # The driver can read a ref directly too (one-sided: it maps the producer's memory).
        print("driver got", ray.get(a.produce.remote(99, 4))["x"].tolist())
        return out
    finally:
        for actor in (a, b):
            ray.kill(actor)
        if started:
            ray.shutdown()


if __name__ == "__main__":
    main()
