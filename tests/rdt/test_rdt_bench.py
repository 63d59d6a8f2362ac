"""``sideband bench rdt`` in its smallest mode: the harness's records, never timing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sideband.bench import rdt


@pytest.mark.timeout(240)
def test_smoke_run_writes_one_record_per_point(ray_session: None, tmp_path: Path) -> None:
    import ray

    out = tmp_path / "rdt.json"
    assert rdt.main(["--smoke", "--json", str(out)]) == 0
    assert ray.is_initialized()  # the session's Ray is reused, not shut down
    doc = json.loads(out.read_text())
    assert doc["command"][:3] == ["sideband", "bench", "rdt"]
    keys = {(r["impl"], r["nbytes"]) for r in doc["records"]}
    assert keys == {(i, n) for i in rdt.IMPLS for n in rdt.SMOKE_SIZES}
    for r in doc["records"]:
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
    assert {(x["nbytes"], x["baseline"]) for x in doc["ratios"]} == {
        (n, b) for n in rdt.SMOKE_SIZES for b in ("rdt_gloo", "object_store")
    }


def test_ratios_across_hosts_use_their_own_target() -> None:
    recs = [
        {"impl": "rdt_gloo", "nbytes": 64 << 20, "median_s": 0.1},
        {"impl": "rdt_sideband", "nbytes": 64 << 20, "median_s": 0.05},
    ]
    (one,) = rdt.ratios(recs, hosts=2)
    assert one["ratio"] == 0.5 and one["target"] == 1.0 and one["met"]
    assert rdt.ratios(recs)[0]["target"] == 0.25
