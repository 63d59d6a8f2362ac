"""Per-endpoint request counters and latency histograms, served as Prometheus text.

Kept in the actor process (no extra dependency, a few hundred nanoseconds per request) and
rendered on demand by ``GET /-/metrics`` in the Prometheus text exposition format.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

# Seconds; the usual Prometheus client defaults, extended down to 100 us for loopback calls.
BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Request counts by (route, method, status) and latency histograms by (route, method)."""

    def __init__(self, prefix: str, labels: dict[str, str]) -> None:
        self.prefix = prefix
        self.const = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
        self.counts: dict[tuple[str, str, int], int] = defaultdict(int)
        self.buckets: dict[tuple[str, str], list[int]] = {}
        self.sums: dict[tuple[str, str], float] = defaultdict(float)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.counts[(route, method, status)] += 1
        key = (route, method)
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = [0] * (len(BUCKETS) + 1)
        b[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sums[key] += seconds

    def render(self) -> str:
        p, c = self.prefix, self.const
        sep = "," if c else ""
        lines = [
            f"# HELP {p}_requests_total Requests handled, by route, method and status.",
            f"# TYPE {p}_requests_total counter",
        ]
        for (route, method, status), n in sorted(self.counts.items()):
            lines.append(
                f'{p}_requests_total{{{c}{sep}route="{_esc(route)}",method="{method}",status="{status}"}} {n}'
            )
        lines += [
            f"# HELP {p}_request_duration_seconds Time from request to response, by route.",
            f"# TYPE {p}_request_duration_seconds histogram",
        ]
        for (route, method), b in sorted(self.buckets.items()):
            lab = f'{c}{sep}route="{_esc(route)}",method="{method}"'
            total = 0
            for le, n in zip((*BUCKETS, "+Inf"), b):
                total += n
                lines.append(f'{p}_request_duration_seconds_bucket{{{lab},le="{le}"}} {total}')
            lines.append(
                f"{p}_request_duration_seconds_sum{{{lab}}} {self.sums[(route, method)]:.9f}"
            )
            lines.append(f"{p}_request_duration_seconds_count{{{lab}}} {total}")
        return "\n".join(lines) + "\n"
