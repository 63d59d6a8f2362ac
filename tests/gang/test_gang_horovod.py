"""Gangs with the "horovod" setup: Horovod's gloo rendezvous from the driver, hvd.allreduce.

Horovod 0.28.1 installs from source only (with patches for torch 2.13, see docs/gangs.md), so
this test runs only where ``horovod.torch`` imports.
"""

from __future__ import annotations

import gang_helpers
import pytest
from gang_helpers import ZERO, load_example, ship_by_value, wait_pids_gone

pytest.importorskip("torch")
pytest.importorskip("horovod.torch", reason="horovod is not built here (docs/gangs.md: horovod)")
ship_by_value(__name__)
ship_by_value(gang_helpers.__name__)


def test_horovod_allreduce(ray_session: None) -> None:
    from sideband.gang import Gang

    results = load_example("gang_horovod").main(num_workers=2, resources_per_worker=ZERO)
    assert [(r["rank"], r["size"], r["sum"]) for r in results] == [(0, 2, 3.0), (1, 2, 3.0)]
    with Gang(2, resources_per_worker=ZERO, setup="horovod") as gang:
        pids = [m["pid"] for m in gang.members]
        assert gang.run(lambda: __import__("horovod.torch").torch.rank()) == [0, 1]
    assert wait_pids_gone(pids) == []
