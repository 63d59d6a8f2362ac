"""Horovod in a gang: the gang serves Horovod's gloo rendezvous, members call hvd.allreduce.

Run: python examples/gang_horovod.py   (needs horovod 0.28.1 built with gloo and torch: see
docs/gangs.md, "horovod", for the build recipe)
"""

from __future__ import annotations

from typing import Any


def allreduce() -> dict[str, Any]:
    import horovod.torch as hvd
    import torch

    total = hvd.allreduce(torch.tensor([hvd.rank() + 1.0]), op=hvd.Sum)
    return {"rank": hvd.rank(), "size": hvd.size(), "sum": float(total.item())}


def main(num_workers: int = 2, resources_per_worker: dict[str, float] | None = None) -> Any:
    import ray

    from sideband import Gang

    if not ray.is_initialized():
        ray.init()
    with Gang(num_workers, resources_per_worker=resources_per_worker, setup="horovod") as gang:
        results = gang.run(allreduce)
    for r in results:
        print(f"rank {r['rank']} of {r['size']}: allreduce = {r['sum']}")
    return results


if __name__ == "__main__":
    main()
