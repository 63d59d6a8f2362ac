"""Collective metrics (issue 17 item 5): ops, bytes, latency and errors by group, rank and op,
recorded by the executor into sideband._metrics.OpStats and read back from Ray's own Prometheus
export on a real local Ray; SIDEBAND_COLLECTIVE_METRICS=0 turns them off.

Run as a script, this file is the child process of the Ray test: a Ray of its own with its
metrics export on a known port, two actors, known ops, then Ray's export printed as JSON.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

from sideband import _metrics
from sideband.collective.runtime.executor import Executor
from sideband.errors import CollectiveTimeoutError, ConfigError


class _Comm:
    """What the executor asks of a comm, and nothing else."""

    rank, world_size = 1, 2

    def settle(self) -> None:
        pass

    def begin(self, *a: Any) -> None:
        self.started = time.monotonic()

    def end(self) -> float:  # the op bracket times the op (comm/liveness.Liveness.end)
        return time.monotonic() - self.started

    def abort(self, e: BaseException) -> None:
        self.aborted = e

    def raise_if_aborted(self) -> None:
        pass

    def describe(self) -> str:
        return "test comm"


def _sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float, dict]]:
    sent: list[tuple[str, float, dict]] = []

    class FakeCounter:
        def __init__(self, name: str) -> None:
            self.name = name

        def inc(self, value: float, tags: dict) -> None:
            sent.append((self.name, value, tags))

    monkeypatch.setattr(_metrics, "_ray_counter", lambda n, d, k: FakeCounter(n))
    return sent


def test_executor_meters_ops_bytes_latency_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    sent = _sent(monkeypatch)
    monkeypatch.setattr(_metrics, "start", lambda interval_s=None: None)  # flushed by hand here
    ex = Executor("gm", 1, 5.0, _Comm(), None)  # type: ignore[arg-type]
    assert ex.stats is not None

    def fail(op: Any) -> None:
        raise CollectiveTimeoutError("late")

    for _ in range(3):
        ex.submit("allreduce(float32[4], SUM)", 7, lambda op: None, False, None, nbytes=16)
    ex.submit("send(float32[2], dst=0, tag=3)", 0, lambda op: None, False, None, True, nbytes=8)
    with pytest.raises(CollectiveTimeoutError):
        ex.submit("barrier()", 9, fail, False, None)
    _metrics.flush()
    const = {"group": "gm", "rank": "1"}
    ar, sd, br = {**const, "op": "allreduce"}, {**const, "op": "send"}, {**const, "op": "barrier"}
    assert ("sideband_collective_ops", 3, ar) in sent
    assert ("sideband_collective_bytes", 48, ar) in sent
    assert ("sideband_collective_ops", 1, sd) in sent
    assert ("sideband_collective_bytes", 8, sd) in sent
    assert ("sideband_collective_ops", 1, br) in sent  # a failed op is an op too
    errors = {"error": "CollectiveTimeoutError", **br}
    assert ("sideband_collective_errors", 1, errors) in sent
    inf = {**ar, "le": "+Inf"}
    assert ("sideband_collective_op_seconds_bucket", 3, inf) in sent
    assert ("sideband_collective_op_seconds_count", 3, ar) in sent
    sums = [v for n, v, t in sent if n == "sideband_collective_op_seconds_sum" and t == ar]
    assert len(sums) == 1 and 0 < sums[0] < 1
    sent.clear()
    _metrics.flush()
    assert sent == []  # exported once
    ex.submit("allreduce(float32[4], SUM)", 7, lambda op: None, False, None, nbytes=16)
    ex.close(lambda idle: None)  # the last export happens at close, then the families go
    assert ("sideband_collective_ops", 1, ar) in sent
    sent.clear()
    _metrics.flush()
    assert sent == [] and ex.stats not in _metrics._folds


def test_metrics_off_and_bad_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDEBAND_COLLECTIVE_METRICS", "0")
    ex = Executor("off", 0, 5.0, _Comm(), None)  # type: ignore[arg-type]
    assert ex.stats is None
    assert ex.submit("barrier()", 9, lambda op: 42, False, None) == 42
    monkeypatch.setenv("SIDEBAND_COLLECTIVE_METRICS", "sometimes")
    with pytest.raises(ConfigError, match="SIDEBAND_COLLECTIVE_METRICS='sometimes'.*1 or 0"):
        Executor("bad", 0, 5.0, _Comm(), None)  # type: ignore[arg-type]


def _value(lines: list[str], *needles: str) -> float:
    found = [ln for ln in lines if all(n in ln for n in needles)]
    assert len(found) == 1, (needles, found)
    return float(found[0].rsplit(" ", 1)[1])


def test_collective_metrics_reach_rays_export() -> None:
    pytest.importorskip("opentelemetry.exporter.prometheus", reason="needs ray[default]")
    out = subprocess.run(
        [sys.executable, __file__],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "RAY_DEDUP_LOGS": "0"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = json.loads(out.stdout.strip().splitlines()[-1])["lines"]
    for rank in ("0", "1"):
        tags = ('group="gmetrics"', f'rank="{rank}"', 'op="allreduce"')
        assert _value(lines, "ray_sideband_collective_ops_total{", *tags) == 5
        assert _value(lines, "ray_sideband_collective_bytes_total{", *tags) == 5 * 4096
        assert _value(lines, "_op_seconds_bucket_total{", *tags, 'le="+Inf"') == 5
        assert _value(lines, "_op_seconds_count_total{", *tags) == 5
        assert 0 < _value(lines, "_op_seconds_sum_total{", *tags) < 5 * 10
        b = ('group="gmetrics"', f'rank="{rank}"', 'op="broadcast"')
        assert _value(lines, "ray_sideband_collective_ops_total{", *b) == 2
    err = ('rank="0"', 'op="recv"', 'error="CollectiveTimeoutError"')
    assert _value(lines, "ray_sideband_collective_errors_total{", *err) == 1


# -- the child process -----------------------------------------------------------------------------
class _Member:
    """A plain actor (made one in main()); the ops run in it through __ray_call__."""

    def ping(self) -> int:
        return 1


def _ops(self: Any, rank: int) -> None:
    import numpy as np

    import sideband

    g = sideband.get_group("gmetrics")
    x = np.ones(1024, np.float32)  # 4096 bytes
    for _ in range(5):
        g.allreduce(x)
    for _ in range(2):
        g.broadcast(x, 0)
    if rank == 0:  # nobody sends: a timeout, counted as an error of op "recv"
        try:
            g.recv(x, 1, timeout_s=0.3)
        except sideband.CollectiveTimeoutError:
            pass
    _metrics.flush()  # what the metrics thread does every few seconds, now


def main() -> None:
    import ray

    import sideband

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["SIDEBAND_HOST"] = "127.0.0.1"
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _metrics_export_port=port,
        _system_config={"metrics_report_interval_ms": 500},
    )
    try:
        actors = [ray.remote(num_cpus=0)(_Member).remote() for _ in range(2)]
        sideband.create_group(actors, name="gmetrics")
        ray.get([a.__ray_call__.remote(_ops, r) for r, a in enumerate(actors)], timeout=120)
        deadline = time.monotonic() + 60
        lines: list[str] = []
        while time.monotonic() < deadline:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            except OSError:
                text = b""
            lines = [
                ln
                for ln in text.decode().splitlines()
                if ln.startswith("ray_sideband_collective_") and "gmetrics" in ln
            ]
            want = ("_ops_total", "_bytes_total", "_count_total", "_errors_total")
            if all(
                sum(w in ln for ln in lines) >= (1 if w == "_errors_total" else 4) for w in want
            ):
                break
            time.sleep(0.5)
        print(json.dumps({"lines": lines}))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
