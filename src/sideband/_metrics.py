"""Process-wide metrics: recorded in-process for nanoseconds, flushed to ``ray.util.metrics``.

A ``ray.util.metrics`` call costs about 4-5 us (measured on these machines), too much for a
request or a collective op that itself takes tens of microseconds. So hot paths record into plain
dicts here, and one daemon thread per process exports what changed every few seconds::

    ops = _metrics.counter("sideband_ops", "Ops run.", ("group", "op"), {"actor_id": aid})
    lat = _metrics.histogram("sideband_op_seconds", "Op latency.", ("group", "op"))
    ops.inc(("g", "allreduce"))            # a dict update
    lat.observe(("g", "allreduce"), 1e-4)  # a bisect and two list/dict updates
    _metrics.start()                       # the flush thread; idempotent

A histogram reaches Ray as counters, so that a flush costs one call per series and bucket, not
one per observation: ``<name>_bucket`` (tag ``le``, cumulative, as Prometheus histograms),
``<name>_sum`` and ``<name>_count``; Ray's Prometheus export appends ``_total``, so
``histogram_quantile(0.99, sum by (le) (rate(ray_<name>_bucket_total[5m])))`` is the p99.

Writers are meant to be one thread per series family (an event loop, a rank's op thread): the
exporter only reads, and sends the difference to what it sent before, so nothing is counted
twice or lost. This module imports nothing of sideband, so that every layer may use it.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger("sideband.metrics")

# Seconds; the usual Prometheus client defaults, extended down to 100 us for loopback calls.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip


class Counter:
    """Monotonic counts by tag values (a tuple in ``tag_keys`` order)."""

    kind = "counter"

    def __init__(
        self, name: str, description: str, tag_keys: tuple[str, ...], const: dict[str, str]
    ) -> None:
        self.name, self.description, self.tag_keys, self.const = name, description, tag_keys, const
        self.values: dict[tuple[str, ...], float] = {}
        self._sent: dict[tuple[str, ...], float] = {}

    def inc(self, tags: tuple[str, ...], n: float = 1) -> None:
        v = self.values
        v[tags] = v.get(tags, 0) + n


class Histogram:
    """Observations by tag values, counted into ``boundaries`` buckets (upper bounds)."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        description: str,
        tag_keys: tuple[str, ...],
        const: dict[str, str],
        boundaries: tuple[float, ...],
    ) -> None:
        self.name, self.description, self.tag_keys, self.const = name, description, tag_keys, const
        self.boundaries = tuple(sorted(boundaries))
        self.counts: dict[tuple[str, ...], list[int]] = {}
        self.sums: dict[tuple[str, ...], float] = {}
        self._sent: dict[tuple[Any, ...], float] = {}

    def observe(self, tags: tuple[str, ...], value: float) -> None:
        c = self.counts.get(tags)
        if c is None:
            c = self.counts[tags] = [0] * (len(self.boundaries) + 1)
        c[bisect.bisect_left(self.boundaries, value)] += 1
        s = self.sums
        s[tags] = s.get(tags, 0.0) + value


_lock = threading.Lock()
_families: list[Counter | Histogram] = []
_ray_metrics: dict[str, Any] = {}
_thread: threading.Thread | None = None
_stop = threading.Event()
_interval_s = 5.0


def counter(
    name: str,
    description: str,
    tag_keys: Iterable[str] = (),
    const: dict[str, str] | None = None,
    export: bool = True,
) -> Counter:
    """A new counter family; families of one ``name`` share one Ray metric.

    ``const`` tags are the same for every series of the family (an actor id); ``export=False``
    keeps it in-process only (read ``values`` yourself).
    """
    c = Counter(name, description, tuple(tag_keys), dict(const or {}))
    if export:
        with _lock:
            _families.append(c)
    return c


def histogram(
    name: str,
    description: str,
    tag_keys: Iterable[str] = (),
    const: dict[str, str] | None = None,
    boundaries: Iterable[float] = LATENCY_BUCKETS,
    export: bool = True,
) -> Histogram:
    """A new histogram family (exported as ``_bucket``/``_sum``/``_count`` counters)."""
    h = Histogram(name, description, tuple(tag_keys), dict(const or {}), tuple(boundaries))
    if export:
        with _lock:
            _families.append(h)
    return h


def drop(*families: Counter | Histogram) -> None:
    """Stop exporting ``families`` (after a last flush of what they hold)."""
    flush()
    with _lock:
        for f in families:
            if f in _families:
                _families.remove(f)


def _ray_counter(name: str, description: str, keys: tuple[str, ...]) -> Any:
    m = _ray_metrics.get(name)
    if m is None:
        from ray.util import metrics

        m = _ray_metrics[name] = metrics.Counter(name, description, tag_keys=keys)
    return m


def _export_counter(c: Counter) -> None:
    keys = (*c.const, *c.tag_keys)
    ray_c = None
    for tags, total in list(c.values.items()):
        delta = total - c._sent.get(tags, 0)
        if delta > 0:
            ray_c = ray_c or _ray_counter(c.name, c.description, keys)
            ray_c.inc(delta, tags={**c.const, **dict(zip(c.tag_keys, map(str, tags)))})
            c._sent[tags] = total


def _export_histogram(h: Histogram) -> None:
    keys = (*h.const, *h.tag_keys)
    les = [*(repr(float(b)) for b in h.boundaries), "+Inf"]
    for tags, counts in list(h.counts.items()):
        counts = list(counts)
        base = {**h.const, **dict(zip(h.tag_keys, map(str, tags)))}
        running = 0
        for le, n in zip(les, counts):
            running += n
            delta = running - h._sent.get((tags, le), 0)
            if delta > 0:
                bucket = _ray_counter(f"{h.name}_bucket", h.description, (*keys, "le"))
                bucket.inc(delta, tags={**base, "le": le})
                h._sent[(tags, le)] = running
        total, sent = running, h._sent.get((tags, "count"), 0)
        if total > sent:
            _ray_counter(f"{h.name}_count", h.description, keys).inc(total - sent, tags=base)
            h._sent[(tags, "count")] = total
        s = h.sums.get(tags, 0.0)
        ds = s - h._sent.get((tags, "sum"), 0.0)
        if ds > 0:
            _ray_counter(f"{h.name}_sum", h.description, keys).inc(ds, tags=base)
            h._sent[(tags, "sum")] = s


def flush() -> None:
    """Export everything recorded since the last flush (any thread; serialised)."""
    with _lock:
        families = list(_families)
        try:
            for f in families:
                if isinstance(f, Counter):
                    _export_counter(f)
                else:
                    _export_histogram(f)
        except Exception:
            # Outside a Ray worker, or Ray shutting down: metrics must never break the caller.
            logger.debug("exporting metrics to Ray failed", exc_info=True)


def _run() -> None:
    while not _stop.wait(_interval_s):
        flush()


def start(interval_s: float | None = None) -> None:
    """Start this process's flush thread (once; later calls may only change the interval)."""
    global _thread, _interval_s
    if interval_s is not None:
        _interval_s = max(0.05, float(interval_s))
    with _lock:
        if _thread is None or not _thread.is_alive():
            _stop.clear()
            _thread = threading.Thread(target=_run, name="sideband-metrics", daemon=True)
            _thread.start()


def stop() -> None:
    """Stop the flush thread after one last flush."""
    global _thread
    _stop.set()
    t = _thread
    if t is not None:
        t.join(timeout=5)
    _thread = None
    flush()
