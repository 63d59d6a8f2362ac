"""Process-wide metrics: recorded in-process for nanoseconds, flushed to ``ray.util.metrics``.

A ``ray.util.metrics`` call costs about 4-5 us (measured on these machines), too much for a
request or a collective op that itself takes tens of microseconds. So hot paths record into plain
dicts here, and one daemon thread per process exports what changed every few seconds::

    ops = _metrics.counter("sideband_ops", "Ops run.", ("group", "op"), {"actor_id": aid})
    lat = _metrics.histogram("sideband_op_seconds", "Op latency.", ("group", "op"))
    ops.inc(("g", "allreduce"))            # a dict update
    lat.observe(("g", "allreduce"), 1e-4)  # a bisect and two list/dict updates
    _metrics.start()                       # the flush thread; idempotent

Ops whose own cost is a few microseconds (collectives) use :class:`OpStats` instead: a record is
a bisect and three list updates on lists the op's thread owns (~0.3 us), folded into counter and
histogram families by the flush thread.

A histogram reaches Ray as counters, so that a flush costs one call per series and bucket, not
one per observation: ``<name>_bucket`` (tag ``le``, cumulative, as Prometheus histograms),
``<name>_sum`` and ``<name>_count``; Ray's Prometheus export appends ``_total``, so
``histogram_quantile(0.99, sum by (le) (rate(ray_<name>_bucket_total[5m])))`` is the p99.

Writers are meant to be one thread per series family (an event loop, a rank's op thread): the
exporter only reads, and sends the difference to what it sent before, so nothing is counted
twice or lost. It imports nothing of sideband but the configuration (``SIDEBAND_METRICS_INTERVAL_S``
sets the flush interval), so that every layer may use it.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from sideband import config

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
        c[bisect_left(self.boundaries, value)] += 1
        s = self.sums
        s[tags] = s.get(tags, 0.0) + value


class OpStats:
    """Ops, bytes, latency and errors by op name, recorded by one thread at a time (a group's ops).

    Families ``<prefix>_ops``, ``<prefix>_bytes``, ``<prefix>_op_seconds`` (a histogram) and
    ``<prefix>_errors`` (tag ``error``: the exception's class name), all with tag ``op`` and the
    ``const`` tags. Ops are recorded by a key (a label) that ``op_of`` names the op of, once per
    key: :meth:`record` is a dict lookup, a bisect and three updates of a list of that op's own.
    The flush thread folds those lists into the families, which it alone writes (errors are
    rare: counted directly).
    """

    _KEYS = 4096  # keys remembered; past that (labels that never repeat) op_of runs each time

    def __init__(
        self,
        prefix: str,
        what: str,
        const: dict[str, str],
        op_of: Callable[[str], str] = str,
        boundaries: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> None:
        self.ops = Counter(f"{prefix}_ops", f"{what} run (failed ones too).", ("op",), const)
        self.bytes = Counter(f"{prefix}_bytes", f"Bytes of the {what}' inputs.", ("op",), const)
        self.seconds = Histogram(
            f"{prefix}_op_seconds", f"Time {what} took on this rank.", ("op",), const, boundaries
        )
        self.errors = Counter(
            f"{prefix}_errors", f"{what} that raised, by error.", ("op", "error"), const
        )
        self._bounds = self.seconds.boundaries
        self._n = len(self._bounds) + 1
        self._op_of = op_of
        # Per op: bucket counts, then bytes, then the sum of seconds; and the same lists by key.
        self._raw: dict[str, list[Any]] = {}
        self._by_key: dict[str, list[Any]] = {}

    def record(self, key: str, nbytes: int, seconds: float) -> None:
        r = self._by_key.get(key)
        if r is None:
            r = self._series(key)
        r[bisect_left(self._bounds, seconds)] += 1
        r[-2] += nbytes
        r[-1] += seconds

    def _series(self, key: str) -> list[Any]:
        op = self._op_of(key)
        r = self._raw.get(op)
        if r is None:
            r = self._raw[op] = [0] * self._n + [0, 0.0]
        if len(self._by_key) < self._KEYS:
            self._by_key[key] = r
        return r

    def error(self, key: str, err: BaseException) -> None:
        self.errors.inc((self._op_of(key), type(err).__name__))

    def fold(self) -> None:
        """Copy what :meth:`record` counted into the families (the flush thread, under _lock)."""
        n = self._n
        for op, raw in list(self._raw.items()):
            r = list(raw)
            k = (op,)
            self.seconds.counts[k] = r[:n]
            self.seconds.sums[k] = r[-1]
            self.ops.values[k] = sum(r[:n])
            self.bytes.values[k] = r[-2]

    def families(self) -> tuple[Counter, Counter, Histogram, Counter]:
        return self.ops, self.bytes, self.seconds, self.errors


_lock = threading.Lock()
_families: list[Counter | Histogram] = []
_folds: list[OpStats] = []
_ray_metrics: dict[str, Any] = {}
_thread: threading.Thread | None = None
_stop = threading.Event()
_interval_s: float | None = None  # None: SIDEBAND_METRICS_INTERVAL_S when the thread waits


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


def op_stats(
    prefix: str,
    what: str,
    const: dict[str, str] | None = None,
    op_of: Callable[[str], str] = str,
) -> OpStats:
    """A new, exported :class:`OpStats` (``what``: the ops, in words, for the descriptions)."""
    st = OpStats(prefix, what, dict(const or {}), op_of)
    with _lock:
        _families.extend(st.families())
        _folds.append(st)
    return st


def drop(*families: Counter | Histogram | OpStats) -> None:
    """Stop exporting ``families`` (after a last flush of what they hold)."""
    flush()
    with _lock:
        for f in families:
            if isinstance(f, OpStats):
                if f in _folds:
                    _folds.remove(f)
                gone: tuple[Counter | Histogram, ...] = f.families()
            else:
                gone = (f,)
            for g in gone:
                if g in _families:
                    _families.remove(g)


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
            for st in _folds:
                st.fold()
            for f in families:
                if isinstance(f, Counter):
                    _export_counter(f)
                else:
                    _export_histogram(f)
        except Exception:
            # Outside a Ray worker, or Ray shutting down: metrics must never break the caller.
            logger.debug("exporting metrics to Ray failed", exc_info=True)


def flush_interval_s() -> float:
    """Seconds between flushes: ``start``'s, else ``SIDEBAND_METRICS_INTERVAL_S`` (5 s)."""
    t: float = config.get("SIDEBAND_METRICS_INTERVAL_S") if _interval_s is None else _interval_s
    return t


def _run() -> None:
    while not _stop.wait(flush_interval_s()):
        flush()


def start(interval_s: float | None = None) -> None:
    """Start this process's flush thread (once; later calls may only change the interval)."""
    global _thread, _interval_s
    if interval_s is not None:
        _interval_s = max(0.05, float(interval_s))
    flush_interval_s()  # a bad SIDEBAND_METRICS_INTERVAL_S fails here, not in the thread
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
