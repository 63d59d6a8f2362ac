"""Every ``SIDEBAND_*`` environment variable, in one registry: name, type, default, accepted
values and a line of doc. Values are read and validated when asked, never frozen at import, so a
changed environment (a test's monkeypatch, a bench that sets a variable before the next group
forms) holds from the next read on::

    from sideband import config
    config.get("SIDEBAND_LINK_TIMEOUT_S")  # 3.0, or the variable's value, validated

A bad value raises :class:`~sideband.errors.ConfigError` naming the variable, the value and what
is accepted. An empty value counts as unset. This module imports only the standard library and
``sideband.errors``, so every layer may use it, transports included. ``docs/configuration.md``
is :func:`markdown_table`'s output (tests/test_config.py fails when the two differ).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sideband.errors import ConfigError

#: The order of the areas in docs/configuration.md.
AREAS = ("collectives", "network", "guard", "rdt", "observability", "gangs", "bench and test bed")


@dataclass(frozen=True)
class Var:
    """One environment variable."""

    name: str
    area: str
    parse: Callable[[str], Any]
    default: Any
    accepted: str  # what a value may be, in words (errors and the table say it)
    doc: str
    default_doc: str = ""  # the default in words, where ``default`` alone does not say it
    internal: bool = False  # set by sideband for processes it starts; not meant for users

    def default_text(self) -> str:
        if self.default_doc:
            return self.default_doc
        if isinstance(self.default, bool):
            return "1" if self.default else "0"
        return "unset" if self.default is None else str(self.default)


_REGISTRY: dict[str, Var] = {}
# Parsed values by name, with the text they came from: a read costs a dict lookup and a compare.
_cache: dict[str, tuple[str, Any]] = {}


def _var(name: str, area: str, parse: Callable[[str], Any], default: Any, accepted: str, doc: str,
         default_doc: str = "", internal: bool = False) -> None:  # fmt: skip
    assert area in AREAS and name not in _REGISTRY, name
    _REGISTRY[name] = Var(name, area, parse, default, accepted, doc, default_doc, internal)


# -- parsers: each raises ValueError for a value it does not accept ------------------------------
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_BOOL = "1 or 0 (also true/false, yes/no, on/off)"


def _bool(s: str) -> bool:
    v = s.lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(s)


def _int(lo: int) -> Callable[[str], int]:
    def parse(s: str) -> int:
        v = int(s)
        if v < lo:
            raise ValueError(s)
        return v

    return parse


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _bytes(lo: int) -> Callable[[str], int]:
    def parse(s: str) -> int:
        m = re.fullmatch(r"(\d+)\s*([KMG]?)(?:I?B)?", s.upper())
        if m is None or int(m[1]) * _UNITS[m[2]] < lo:
            raise ValueError(s)
        return int(m[1]) * _UNITS[m[2]]

    return parse


def _float(lo: float, strict: bool) -> Callable[[str], float]:
    def parse(s: str) -> float:
        v = float(s)
        if not (v > lo if strict else v >= lo) or v != v or v == float("inf"):
            raise ValueError(s)
        return v

    return parse


def _choice(**aliases: tuple[str, ...]) -> Callable[[str], str]:
    """A value of ``aliases`` (each name also accepts its aliases), case-insensitive."""

    def parse(s: str) -> str:
        v = s.lower()
        for name, alts in aliases.items():
            if v == name or v in alts:
                return name
        raise ValueError(s)

    return parse


def _port_range(s: str) -> tuple[int, int]:
    lo_s, hi_s = s.split("-")
    lo, hi = int(lo_s), int(hi_s)
    if not 1 <= lo <= hi <= 65535:
        raise ValueError(s)
    return lo, hi


def _word(s: str) -> str:
    if any(c.isspace() for c in s):
        raise ValueError(s)
    return s


def _text(s: str) -> str:
    return s


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _level(s: str) -> int:
    v = s.upper()
    if v == "WARN":
        v = "WARNING"
    if v in _LEVELS:
        return int(getattr(logging, v))
    return _int(0)(s)


def _json(s: str) -> Any:
    return json.loads(s)


# -- the registry --------------------------------------------------------------------------------
_AUTO_SPIN = "auto: sched_yield for an adaptive budget (5 us to 1 ms), then sleep"
_var("SIDEBAND_HIERARCHICAL", "collectives", _choice(auto=(), on=_TRUE, off=(*_FALSE, "flat")),
     "auto", "auto, on (1/true) or off (0/false/flat)",
     "Host-aware algorithms across hosts: auto uses them when some host has 2 or more ranks; "
     "rank 0's value holds for the group.")  # fmt: skip
_var("SIDEBAND_HIER_PIPELINE_BYTES", "collectives", _bytes(0), None,
     "a byte count >= 0 (e.g. 8388608, 8M)",
     "Piece size of pipelined host-aware allreduces; 0 turns pipelining off; rank 0's value "
     "holds for the group.", "auto: 8M where every rank has a spare core, else 0")  # fmt: skip
_var("SIDEBAND_HOST_KEY", "collectives", _text, "", "any text",
     "Ranks with different values never share memory: splits one machine into several hosts "
     "(tests of multi-host algorithms), or keeps shared memory off.", "empty")  # fmt: skip
_var("SIDEBAND_CMA", "collectives", _bool, True, _BOOL,
     "Cross-memory attach (process_vm_readv) for large ops of a group on one host; 0 turns it "
     "off (then large ops take the rings: two copies instead of one).")  # fmt: skip
_var("SIDEBAND_ARENA", "collectives", _bool, True, _BOOL,
     "The arena of shared slots for small ops of a group on one host; 0 turns it off.")  # fmt: skip
_var("SIDEBAND_HOME_CPU", "collectives", _bool, True, _BOOL,
     "Each op moves its rank's thread back to the rank's own CPU (its place among the host's "
     "ranks, round robin over the CPUs it may use) if the scheduler put it elsewhere, then gives "
     "the affinity mask back; 0 turns it off (read when a group forms).")  # fmt: skip
_var("SIDEBAND_SPIN", "collectives", _int(0), None, "an integer >= 0",
     "Plain polls of its doorbell a waiting rank makes before it sleeps (0: sleep at once), "
     "instead of the adaptive yield-then-sleep policy.", _AUTO_SPIN)  # fmt: skip
_var("SIDEBAND_SHM_RING_BYTES", "collectives", _bytes(4096), 4 << 20,
     "a byte count >= 4096 (e.g. 4M)",
     "Size of each shared-memory ring (one per local peer), rounded up to a power of two.",
     "4M")  # fmt: skip
_var("SIDEBAND_SHM_PUBLISH_BYTES", "collectives", _bytes(1), 256 << 10,
     "a byte count >= 1 (e.g. 256K)",
     "Most bytes a sender publishes into a ring at once, so that the receiver copies out while "
     "the sender copies in.", "256K")  # fmt: skip
_var("SIDEBAND_CUDA_IPC", "collectives", _bool, True, _BOOL,
     "CUDA IPC between ranks on one GPU; 0 stages through host memory instead (every rank of "
     "a group must see the same value).")  # fmt: skip
_var("SIDEBAND_COLLECTIVE_METRICS", "collectives", _bool, True, _BOOL,
     "Ops, bytes, latency and errors of collectives, by group and op, exported through "
     "ray.util.metrics; 0 turns them off (read when a group forms).")  # fmt: skip
_var("SIDEBAND_TCP_MAC", "network", _choice(control=(), all=()), "control", "control or all",
     "Which TCP payloads carry a keyed tag: control frames and pickled payloads (control), or "
     "every payload (all; slower). Headers are always tagged.")  # fmt: skip
_var("SIDEBAND_PEER_BUFFER_BYTES", "network", _bytes(1 << 20), 16 << 20,
     "a byte count >= 1M (e.g. 16M)",
     "Bytes kept per peer for no posted receive (a TCP link's reader, and the stash of "
     "messages not asked for yet); past it TCP's flow control or the ring holds the sender.",
     "16M")  # fmt: skip
_var("SIDEBAND_HOST", "network", _word, None, "an address or host name, no spaces",
     "The address sideband's listeners bind and advertise (groups, gangs, RDT).",
     "auto: 127.0.0.1 on a one-node cluster, else Ray's node address")  # fmt: skip
_var("SIDEBAND_PORT_RANGE", "network", _port_range, None,
     "'lo-hi' with 1 <= lo <= hi <= 65535 (e.g. 40000-40999)",
     "The ports listeners may bind (group rendezvous, gang libraries, RDT servers).",
     "unset: any free port")  # fmt: skip
_var("SIDEBAND_LINK_TIMEOUT_S", "network", _float(0, True), 3.0, "seconds > 0",
     "How long a silent TCP link to a peer may stay unanswered before the peer counts as "
     "lost.")  # fmt: skip
_var("SIDEBAND_ALLOW_OBJECT_REFS", "guard", _bool, False, _BOOL,
     "1 lets ObjectRefs be sent out of band from this process (Ray then does not count "
     "those references: keep them alive yourself).")  # fmt: skip
_var("SIDEBAND_RDT_ZERO_COPY", "rdt", _bool, False, _BOOL,
     "Received tensors are copy-on-write views of the producer's shared memory "
     "(sideband.rdt.configure(zero_copy=...)).")  # fmt: skip
_var("SIDEBAND_RDT_SAME_HOST", "rdt", _bool, True, _BOOL,
     "Map same-host producers' memory; 0 fetches over TCP even on one host.")  # fmt: skip
_var("SIDEBAND_RDT_SERVE", "rdt", _bool, False, _BOOL,
     "Serve blocks over TCP even on a one-node cluster (for consumers with same_host off).")  # fmt: skip
_var("SIDEBAND_RDT_TIMEOUT_S", "rdt", _float(0, True), 30.0, "seconds > 0",
     "Deadline of one fetch over TCP (connect, authenticate, stream).")  # fmt: skip
_var("SIDEBAND_RDT_KEEP_S", "rdt", _float(0, False), 2.0, "seconds >= 0",
     "How long freed blocks and mappings stay warm for reuse; 0 frees them at once.")  # fmt: skip
_var("SIDEBAND_LOG_LEVEL", "observability", _level, None,
     f"{', '.join(_LEVELS)} (any case) or a number",
     "Level of the 'sideband' logger, with one handler to stderr (DEBUG: group formation, "
     "transports, fallbacks, teardown); the root logger is never touched.",
     "unset: logging left as the application set it")  # fmt: skip
_var("SIDEBAND_METRICS_INTERVAL_S", "observability", _float(0.05, False), 5.0,
     "seconds >= 0.05",
     "How often a process exports its batched metrics (collectives, endpoints) to Ray.")  # fmt: skip
_var("SIDEBAND_GANG", "gangs", _text, None, "a gang name",
     "Set in gang members (with RANK, WORLD_SIZE...): sideband.gang.context() rebuilds the "
     "context from it in subprocesses.", internal=True)  # fmt: skip
_var("SIDEBAND_GANG_ATTEMPT", "gangs", _int(0), 0, "an integer >= 0",
     "Set in gang members: how many times the gang was restarted.", internal=True)  # fmt: skip
_var("SIDEBAND_SPARK_ENV", "gangs", _text, None, "a file path",
     "Set for the shell that loads Spark's environment: where it writes it.", internal=True)  # fmt: skip
_var("SIDEBAND_RAYDP_PYTHON", "bench and test bed", _text, None, "a path to a python",
     "The python of a virtualenv with raydp, for the spark row of `sideband bench gang` "
     "(or --raydp-python).")  # fmt: skip
_var("SIDEBAND_TESTBED_MODE", "bench and test bed", _choice(auto=(), netns=(), local=()), "auto",
     "auto, netns or local",
     "Overrides a test bed built with mode='auto' (local: no network namespaces).")  # fmt: skip
_var("SIDEBAND_TESTBED", "bench and test bed", _json, None, "JSON",
     "Set in a test bed's driver process: the bed's layout (sideband.testbed.info()).",
     internal=True)  # fmt: skip
_var("SIDEBAND_BENCH_MULTINODE", "bench and test bed", _json, None, "JSON",
     "Set by `sideband bench multinode` for its driver: the bench's arguments.",
     internal=True)  # fmt: skip
_var("SIDEBAND_BENCH_RDT", "bench and test bed", _json, None, "JSON",
     "Set by `sideband bench rdt --hosts 2` for its driver: the bench's arguments.",
     internal=True)  # fmt: skip


# -- reading -------------------------------------------------------------------------------------
def var(name: str) -> Var:
    """The registry's entry for ``name`` (KeyError for a name that is not registered)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"{name} is not a sideband setting; register it in sideband/config.py"
        ) from None


def registry() -> tuple[Var, ...]:
    """Every registered variable, in registry order."""
    return tuple(_REGISTRY.values())


def get(name: str) -> Any:
    """The value of ``name`` now: parsed from the environment, or its default when unset."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return var(name).default
    hit = _cache.get(name)
    if hit is not None and hit[0] == raw:
        return hit[1]
    v = var(name)
    try:
        value = v.parse(raw.strip())
    except (ValueError, TypeError, KeyError):
        raise ConfigError(
            f"{name}={raw!r} is not valid: expected {v.accepted}. Fix or unset it "
            f"(default: {v.default_text()}); see docs/configuration.md"
        ) from None
    _cache[name] = (raw, value)
    return value


def is_set(name: str) -> bool:
    """Whether ``name`` has a (non-empty) value in the environment."""
    var(name)
    return bool(os.environ.get(name, "").strip())


def settings() -> list[tuple[Var, str, str | None]]:
    """What is set in this environment: (variable, its text, the error it gives or None)."""
    found = []
    for v in _REGISTRY.values():
        if not is_set(v.name):
            continue
        try:
            get(v.name)
            err = None
        except ConfigError as e:
            err = str(e)
        found.append((v, os.environ[v.name], err))
    return found


# -- logging -------------------------------------------------------------------------------------
_handler: logging.Handler | None = None


def configure_logging() -> None:
    """Apply ``SIDEBAND_LOG_LEVEL`` to the ``sideband`` logger; unset, nothing is touched.

    The logger gets the level and one handler to stderr (added once per process), and stops
    handing records on to the root logger, so that a line is printed once even where Ray or the
    application gave the root logger a stderr handler of its own.
    """
    global _handler
    level = get("SIDEBAND_LOG_LEVEL")
    if level is None:
        return
    log = logging.getLogger("sideband")
    log.setLevel(level)
    if _handler is None:
        _handler = logging.StreamHandler()  # stderr
        _handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [pid %(process)d] %(message)s")
        )
        log.addHandler(_handler)
        log.propagate = False


# -- the documentation ---------------------------------------------------------------------------
_OBSERVABILITY = """
## What the observability settings give

`SIDEBAND_LOG_LEVEL=DEBUG` (like `NCCL_DEBUG=INFO`): every rank logs, to its stderr (in a Ray
actor, the worker's log, which Ray also shows on the driver), when it joins a group, the roster
(pid and node of every rank), then once formed its address, the transport to each peer (`shm`
with the peer's pid, or `tcp` with both ends), cross-memory attach on or off and why, the arena,
the plan (flat or host-aware, and why), fallbacks (no shared memory, CUDA IPC off), and teardown.

Collective metrics (`SIDEBAND_COLLECTIVE_METRICS`, on by default) reach Ray's metrics pipeline
through `ray.util.metrics`, every `SIDEBAND_METRICS_INTERVAL_S`, tagged `group`, `rank` and `op`
(Ray adds `WorkerId`, `NodeAddress`...). In Ray's Prometheus export:
`ray_sideband_collective_ops_total`, `ray_sideband_collective_bytes_total` (the op's input on
that rank), `ray_sideband_collective_errors_total` (tag `error`: the exception's class) and the
latency histogram `ray_sideband_collective_op_seconds_{bucket,sum,count}_total` (tag `le` on the
buckets), e.g. the p99 of allreduce:
`histogram_quantile(0.99, sum by (le) (rate(ray_sideband_collective_op_seconds_bucket_total{op="allreduce"}[5m])))`.
An op pays a few list updates (~0.3 us), never a call into Ray.
"""


def markdown_table() -> str:
    """docs/configuration.md, generated from the registry."""
    out = [
        "# Configuration",
        "",
        "Every environment variable sideband reads, generated from `src/sideband/config.py`",
        "by `python -c 'import sideband.config as c; print(c.markdown_table(), end=\"\")'`",
        "(tests/test_config.py fails when this page and the registry differ).",
        "Values are read when used (a group reads its settings when it forms), an empty value",
        "counts as unset, and a bad value raises `sideband.errors.ConfigError` naming the",
        "variable and what it accepts. `sideband doctor` lists the variables set on a machine.",
        "Variables marked *set by sideband* are written by sideband for processes it starts.",
    ]
    for area in AREAS:
        rows = [v for v in _REGISTRY.values() if v.area == area]
        out += ["", f"## {area[0].upper()}{area[1:]}", ""]
        out += ["| variable | default | accepted | what it does |", "| --- | --- | --- | --- |"]
        for v in rows:
            doc = ("*Set by sideband.* " if v.internal else "") + v.doc
            cells = (f"`{v.name}`", v.default_text(), v.accepted, doc)
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out) + "\n" + _OBSERVABILITY
