"""Child process of test_http_metrics: a local Ray with its metrics export on, an endpoint with
``metrics="ray"``, known requests, then Ray's own Prometheus export read back. Prints JSON."""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.error
import urllib.request

import ray

import sideband


@ray.remote(num_cpus=0)
@sideband.http.expose()
class Metered:
    @sideband.http.get("/")
    async def hi(self) -> str:
        return "hi"

    @sideband.http.get("/n/{k}")
    async def n(self, k: int) -> int:
        return k

    async def flush(self) -> None:
        from sideband import _metrics

        _metrics.flush()  # what the flush thread does every few seconds, now


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _metrics_export_port=port,
        _system_config={"metrics_report_interval_ms": 500},
    )
    try:
        a = Metered.remote()
        url = sideband.http.url(a)
        statuses = [_get(url + "/") for _ in range(7)] + [_get(url + "/n/x") for _ in range(3)]
        ray.get(a.flush.remote())
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
                if ln.startswith("ray_sideband_http_") and "Metered" in ln
            ]
            done = [
                any(n in ln and ln.endswith(v) for ln in lines)
                for n, v in (
                    ('status="200"', " 7.0"),
                    ('status="422"', " 3.0"),
                    ("_count_total", " 7.0"),
                )
            ]
            if all(done):
                break
            time.sleep(0.5)
        print(json.dumps({"statuses": statuses, "lines": lines}))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
