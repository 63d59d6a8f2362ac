"""Gangs with the "torch" setup: the process group is up and allreduce is right."""

from __future__ import annotations

import gang_helpers
import pytest
from gang_helpers import ZERO, ship_by_value, wait_pids_gone

from sideband.gang import Gang, context

pytest.importorskip("torch")
ship_by_value(__name__)
ship_by_value(gang_helpers.__name__)


def _allreduce() -> tuple[list[float], str, int, int]:
    import torch
    import torch.distributed as dist

    ctx = context()
    t = torch.tensor([float(ctx.rank + 1), 1.0])
    dist.all_reduce(t)
    return t.tolist(), dist.get_backend(), dist.get_rank(), dist.get_world_size()


@pytest.mark.parametrize("n", [2, 4])
def test_torch_allreduce(ray_session: None, n: int) -> None:
    with Gang(n, resources_per_worker=ZERO, setup="torch") as gang:
        out = gang.run(_allreduce)
        # A second run reuses the same process group.
        assert gang.run(_allreduce) == out
    assert wait_pids_gone([m["pid"] for m in gang.members]) == []
    expected = [float(n * (n + 1) // 2), float(n)]
    assert out == [(expected, "gloo", r, n) for r in range(n)]
