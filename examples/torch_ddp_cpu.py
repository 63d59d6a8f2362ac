"""A few DistributedDataParallel steps of a tiny model on CPU (gloo), in a gang of 2 workers.

Run: python examples/torch_ddp_cpu.py   (needs: pip install 'sideband[torch]')
"""

from __future__ import annotations

from typing import Any


def train(steps: int = 5) -> dict[str, Any]:
    """Runs on every member: the torch process group is already initialised by the gang."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from sideband.gang import context

    ctx = context()
    torch.manual_seed(0)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    model = DDP(torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(100 + ctx.rank)  # each rank sees its own data shard
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen)
        y = x.sum(dim=1, keepdim=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()  # gradients are allreduced across the gang here
        opt.step()
        losses.append(loss.item())
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {
        "rank": ctx.rank,
        "world_size": dist.get_world_size(),
        "losses": losses,
        "weights": weights.tolist(),
    }


def main(num_workers: int = 2, resources_per_worker: dict[str, float] | None = None) -> list[Any]:
    import ray

    from sideband import Gang

    if not ray.is_initialized():
        ray.init()
    with Gang(num_workers, resources_per_worker=resources_per_worker, setup="torch") as gang:
        results = gang.run(train, steps=5)
    for r in results:
        print(f"rank {r['rank']}: loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}")
    # DDP keeps replicas identical: every rank ends with the same weights.
    assert all(r["weights"] == results[0]["weights"] for r in results)
    return results


if __name__ == "__main__":
    main()
