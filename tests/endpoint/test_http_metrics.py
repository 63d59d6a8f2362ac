"""Endpoint metrics through Ray's metrics pipeline (issue 17 item 5), read back from Ray's own
Prometheus export; the batching recorder of sideband._metrics on its own."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sideband import _metrics

PROBE = Path(__file__).with_name("metrics_probe.py")


def _value(lines: list[str], *needles: str) -> float:
    found = [ln for ln in lines if all(n in ln for n in needles)]
    assert len(found) == 1, (needles, found)
    return float(found[0].rsplit(" ", 1)[1])


def test_endpoint_metrics_reach_rays_export() -> None:
    pytest.importorskip("opentelemetry.exporter.prometheus", reason="needs ray[default]")
    # A Ray of its own, reporting every 0.5 s (Ray's default is 10 s) on a known export port.
    out = subprocess.run(
        [sys.executable, str(PROBE)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "RAY_DEDUP_LOGS": "0"},
        check=True,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["statuses"] == [200] * 7 + [422] * 3
    lines = report["lines"]
    assert _value(lines, "ray_sideband_http_requests_total{", 'route="/"', 'status="200"') == 7
    assert _value(lines, "ray_sideband_http_requests_total{", 'route="/n/{k}"', 'status="422"') == 3
    inf = 'le="+Inf"'
    assert _value(lines, "_request_duration_seconds_bucket_total{", 'route="/"', inf) == 7
    assert _value(lines, "_request_duration_seconds_count_total{", 'route="/"') == 7
    assert 0 < _value(lines, "_request_duration_seconds_sum_total{", 'route="/"') < 7 * 10
    assert all('actor_class="Metered"' in ln and re.search(r'actor_id="\w+"', ln) for ln in lines)


def test_recorder_exports_deltas_once(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, float, dict]] = []

    class FakeCounter:
        def __init__(self, name: str, description: str, tag_keys: tuple) -> None:
            self.name = name

        def inc(self, value: float, tags: dict) -> None:
            sent.append((self.name, value, tags))

    monkeypatch.setattr(_metrics, "_ray_counter", lambda n, d, k: FakeCounter(n, d, k))
    c = _metrics.counter("t_ops", "ops", ("op",), {"group": "g"})
    h = _metrics.histogram("t_lat", "lat", ("op",), boundaries=(0.1, 1.0))
    try:
        for _ in range(3):
            c.inc(("allreduce",))
        h.observe(("allreduce",), 0.05)
        h.observe(("allreduce",), 0.5)
        h.observe(("allreduce",), 5.0)
        _metrics.flush()
        assert ("t_ops", 3, {"group": "g", "op": "allreduce"}) in sent
        buckets = {t["le"]: v for n, v, t in sent if n == "t_lat_bucket"}
        assert buckets == {"0.1": 1, "1.0": 2, "+Inf": 3}  # cumulative, as Prometheus wants
        assert ("t_lat_count", 3, {"op": "allreduce"}) in sent
        sent.clear()
        _metrics.flush()
        assert sent == []  # nothing new, nothing sent
        c.inc(("allreduce",), 2)
        h.observe(("allreduce",), 0.05)
        _metrics.flush()
        assert ("t_ops", 2, {"group": "g", "op": "allreduce"}) in sent
        assert {t["le"]: v for n, v, t in sent if n == "t_lat_bucket"} == {
            "0.1": 1,
            "1.0": 1,
            "+Inf": 1,
        }
    finally:
        _metrics.drop(c, h)
    local = _metrics.counter("t_local", "x", ("a",), export=False)
    local.inc(("1",))
    sent.clear()
    _metrics.flush()
    assert sent == [] and local.values == {("1",): 1}
