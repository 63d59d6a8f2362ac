"""`sideband bench endpoints` runs end to end (a functional check; no timing is asserted)."""

from __future__ import annotations

import json

from sideband.bench import endpoints


def test_bench_endpoints_runs(ray_session: None, capsys) -> None:  # noqa: ANN001
    argv = ["--skip-serve", "--duration", "1", "--repeats", "1", "--connections", "4", "--json"]
    assert endpoints.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["results"]) == {
        "aiohttp, plain process",
        "sideband actor endpoint",
        "Ray call from driver",
    }
    for r in report["results"].values():
        assert r["rps"] > 0 and 0 < r["p50"] <= r["p99"]
    assert report["notes"] == ["Ray Serve skipped: --skip-serve"]


def test_bench_ws_and_metrics_suites_run(ray_session: None, capsys) -> None:  # noqa: ANN001
    for suite, names in (
        (
            "ws",
            {
                "aiohttp WebSocket, plain process",
                "sideband WebSocket endpoint",
                "aiohttp WebSocket in a Ray actor",
            },
        ),
        ("metrics", {"sideband, metrics off", "sideband, metrics through Ray"}),
    ):
        argv = ["--suite", suite, "--duration", "0.5", "--repeats", "1", "--connections", "2"]
        assert endpoints.main([*argv, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert set(report["results"]) == names
        assert all(r["rps"] > 0 for r in report["results"].values())
        assert all(v > 0 for v in report["ratios"].values())
