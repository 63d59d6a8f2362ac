"""Gangs with the "xgboost" setup: a tracker on the driver, one model trained by every member."""

from __future__ import annotations

import gang_helpers
import numpy as np
import pytest
from gang_helpers import ZERO, load_example, ship_by_value, wait_pids_gone

pytest.importorskip("xgboost")
ship_by_value(__name__)
ship_by_value(gang_helpers.__name__)


def test_xgboost_gang_matches_single_process(ray_session: None) -> None:
    example = load_example("gang_xgboost")
    out = example.main(num_workers=3, resources_per_worker=ZERO, rounds=15)
    results = out["results"]
    assert [(r["rank"], r["world"]) for r in results] == [(0, 3), (1, 3), (2, 3)]
    for r in results:  # every member holds the same model...
        np.testing.assert_array_equal(r["pred"], results[0]["pred"])
    # ...and it is the model single-process xgb.train builds from all the rows.
    np.testing.assert_allclose(results[0]["pred"], out["single"], rtol=1e-4, atol=1e-4)


def test_xgboost_gang_stays_up_between_runs(ray_session: None) -> None:
    from sideband.gang import Gang

    def ranks() -> tuple[int, float]:
        from xgboost import collective

        total = collective.allreduce(np.array([1.0]), collective.Op.SUM)
        return collective.get_rank(), float(total[0])

    with Gang(2, resources_per_worker=ZERO, setup="xgboost") as gang:
        assert gang.run(ranks) == [(0, 2.0), (1, 2.0)]
        assert gang.run(ranks) == [(0, 2.0), (1, 2.0)]
    assert wait_pids_gone([m["pid"] for m in gang.members]) == []
