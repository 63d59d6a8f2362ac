"""``sideband bench collectives`` in its smallest mode: correctness of the harness, never timing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sideband.bench import collectives

KEYS = {"impl", "op", "world_size", "nbytes", "transport", "median_s", "min_s", "max_s"}


@pytest.mark.timeout(240)
def test_smoke_run_writes_one_record_per_point(ray_session: None, tmp_path: Path) -> None:
    import ray

    import sideband

    out = tmp_path / "bench.json"
    png = tmp_path / "bench.png"
    # MPICH is left out here: its launcher listens on every interface, and tests keep to loopback.
    impls = "sideband,ray_gloo,torch_gloo,object_store,memcpy"
    rc = collectives.main(["--smoke", "--impls", impls, "--json", str(out), "--plot", str(png)])
    doc = json.loads(out.read_text())
    assert doc["failures"] == [], doc["failures"]
    assert rc == 0
    # The driver's Ray is reused, not shut down.
    assert ray.is_initialized()

    records = doc["records"]
    assert records
    for r in records:
        assert set(r) == KEYS, r
        assert r["impl"] in collectives.IMPLS
        assert r["op"] in collectives.SUPPORTS[r["impl"]]
        assert r["world_size"] == 2
        assert isinstance(r["nbytes"], int) and r["nbytes"] >= 0
        assert (r["nbytes"] > 0) == (r["op"] in collectives.SIZED_OPS)
        if r["impl"] == "sideband":
            assert r["transport"] in ("shm", "tcp", "empty")
        else:
            assert r["transport"] is None
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]

    # Every implementation that ran covers every op it supports at every size, once;
    # one that did not run is named in the notes with the reason.
    mode = collectives.MODES["smoke"]
    keys = [(r["impl"], r["op"], r["nbytes"], r["transport"]) for r in records]
    assert len(keys) == len(set(keys))
    for impl in collectives.IMPLS:
        if impl not in doc["impls"]:
            if impl in impls.split(","):
                assert any(n.startswith(f"{impl} skipped") for n in doc["notes"]), doc["notes"]
            continue
        for transport in ("shm", "tcp", "empty") if impl == "sideband" else (None,):
            for op in collectives.SUPPORTS[impl]:
                sizes = mode.sizes if op in collectives.SIZED_OPS else (0,)
                for nbytes in sizes:
                    actual = collectives._shape(op, nbytes, 2)[2]
                    assert (impl, op, actual, transport) in keys, (impl, op, actual, transport)
    # sideband, and the baselines that need only Ray and numpy, always run.
    assert {"sideband", "object_store", "memcpy"} <= set(doc["impls"])

    # Ratios are computed from this run's records (smoke mode measures 8 B only, no 4 MiB).
    by_target = {x["target"]: x for x in doc["ratios"]}
    assert len(by_target) == len(collectives.TARGETS)
    small = by_target["shm, 2 ranks, every op, 8 B - 1 MiB vs MPICH"]
    if "mpich" in doc["impls"]:
        assert small["point"]
        assert small["ratio"] == pytest.approx(small["sideband_s"] / small["baseline_s"])
    assert by_target["shm, 2 ranks, >= 4 MiB vs MPICH"]["ratio"] is None

    assert png.stat().st_size > 0
    # Everything the bench created is gone: its groups, and ray.util.collective's info actor.
    assert not [g for g in sideband.list_groups() if g["name"].startswith("sbbench-")]
    with pytest.raises(ValueError):
        ray.get_actor("info_default")


def test_bad_option_is_refused() -> None:
    with pytest.raises(SystemExit):
        collectives.main(["--impls", "nccl"])


def test_sizes_and_bandwidth_conventions() -> None:
    assert [collectives._parse_size(s) for s in ("8", "8B", "64K", "1MiB", "256M")] == [
        8,
        8,
        64 << 10,
        1 << 20,
        256 << 20,
    ]
    # allgather / reduce_scatter: nbytes is the whole (world_size, chunk) array (NCCL-tests).
    assert collectives._shape("allgather", 64 << 20, 4) == (4 << 20, 4 << 20, 64 << 20)
    assert collectives._shape("allreduce", 8, 4) == (2, 2, 8)
    alg, bus = collectives.busbw("allreduce", 1 << 30, 4, 1.0)
    assert bus == pytest.approx(alg * 1.5)
