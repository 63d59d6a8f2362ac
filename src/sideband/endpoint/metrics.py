"""Per-endpoint request counters and latency histograms.

Recorded in the actor process into :mod:`sideband._metrics` families (a few hundred nanoseconds
per request), exported from there to Ray's metrics pipeline by its flush thread (``metrics="ray"``,
the default), and rendered on demand by ``GET /-/metrics`` in the Prometheus text format, for
those who scrape endpoints directly.
"""

from __future__ import annotations

from sideband import _metrics

BUCKETS = _metrics.LATENCY_BUCKETS


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Request counts by (route, method, status) and latency histograms by (route, method).

    ``mode``: "ray" (exported through ``ray.util.metrics`` and served), "local" (served only) or
    "off" (nothing counted).
    """

    def __init__(self, prefix: str, labels: dict[str, str], mode: str = "local") -> None:
        self.prefix = prefix
        self.mode = mode
        self.const = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
        export = mode == "ray"
        self.requests = _metrics.counter(
            f"{prefix}_requests",
            "Requests handled, by route, method and status.",
            ("route", "method", "status"),
            labels,
            export=export,
        )
        self.latency = _metrics.histogram(
            f"{prefix}_request_duration_seconds",
            "Time from request to response, by route.",
            ("route", "method"),
            labels,
            export=export,
        )
        if mode == "off":
            self.observe = _ignore  # type: ignore[method-assign]

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.inc((route, method, str(status)))
        self.latency.observe((route, method), seconds)

    def start(self) -> None:
        if self.mode == "ray":
            _metrics.start()

    def stop(self) -> None:
        if self.mode == "ray":
            _metrics.drop(self.requests, self.latency)

    def render(self) -> str:
        p, c = self.prefix, self.const
        sep = "," if c else ""
        lines = [
            f"# HELP {p}_requests_total Requests handled, by route, method and status.",
            f"# TYPE {p}_requests_total counter",
        ]
        for (route, method, status), n in sorted(self.requests.values.items()):
            lines.append(
                f'{p}_requests_total{{{c}{sep}route="{_esc(route)}",method="{method}",status="{status}"}} {n}'
            )
        lines += [
            f"# HELP {p}_request_duration_seconds Time from request to response, by route.",
            f"# TYPE {p}_request_duration_seconds histogram",
        ]
        for (route, method), b in sorted(self.latency.counts.items()):
            lab = f'{c}{sep}route="{_esc(route)}",method="{method}"'
            total = 0
            for le, n in zip((*BUCKETS, "+Inf"), b):
                total += n
                lines.append(f'{p}_request_duration_seconds_bucket{{{lab},le="{le}"}} {total}')
            s = self.latency.sums[(route, method)]
            lines.append(f"{p}_request_duration_seconds_sum{{{lab}}} {s:.9f}")
            lines.append(f"{p}_request_duration_seconds_count{{{lab}}} {total}")
        return "\n".join(lines) + "\n"


def _ignore(route: str, method: str, status: int, seconds: float) -> None:
    pass
