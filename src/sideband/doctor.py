"""``sideband doctor``: what makes sideband slow or broken on this machine, and what to do."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass
from typing import Any

from sideband import config
from sideband._net import port_range
from sideband.collective.transports import futex, shm
from sideband.errors import InvalidArgumentError

_SHM_WANT = 1 << 30  # large groups keep a few rings of 4 MiB per local peer, plus Group.empty
TESTED_RAY = ((2, 40), (2, 60))  # the Ray versions the suite ran on (lowest, highest)
_EXTRAS = {
    "torch": "torch",
    "grpc": "grpc",
    "mpi": "mpi4py",
    "jax": "jax",
    "spark": "pyspark",
    "xgboost": "xgboost",
    "dask": "distributed",
    "http": "pydantic",
    "bench": "rich",
}


@dataclass
class Finding:
    check: str
    state: str  # "ok", "warn" or "fail"
    detail: str
    advice: str = ""


def _shm() -> Finding:
    try:
        st = os.statvfs(shm.SHM_DIR)
    except OSError as e:
        return Finding("/dev/shm", "fail", f"not usable: {e}", "mount a tmpfs on /dev/shm")
    size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    detail = f"{size >> 20} MiB, {free >> 20} MiB free"
    if free < _SHM_WANT:
        return Finding(
            "/dev/shm",
            "warn",
            detail,
            "groups on one host put their rings here (a container's default is 64 MiB): "
            "run with --shm-size=2g (docker) or a larger tmpfs, or Ray's --shm-size",
        )
    return Finding("/dev/shm", "ok", detail)


def _ptrace() -> Finding:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = int(f.read().strip())
    except (OSError, ValueError):
        return Finding("cross-memory attach", "ok", "no Yama restriction")
    if scope == 0:
        return Finding("cross-memory attach", "ok", "ptrace_scope=0: large ops read peers directly")
    return Finding(
        "cross-memory attach",
        "warn",
        f"ptrace_scope={scope}: Ray workers cannot read each other's memory, so large ops on one "
        "host take the rings (two copies instead of one)",
        "sysctl kernel.yama.ptrace_scope=0 where your security policy allows it",
    )


def _memfd() -> Finding:
    try:
        fd = os.memfd_create("sideband-doctor", os.MFD_CLOEXEC)
        os.close(fd)
    except (AttributeError, OSError) as e:
        return Finding(
            "memfd", "warn", f"unavailable ({e})", "Group.empty falls back to plain arrays"
        )
    return Finding("memfd", "ok", "Group.empty arrays can be shared")


def _futex() -> Finding:
    if futex.AVAILABLE:
        return Finding("futex", "ok", "waiting ranks sleep without spinning")
    return Finding("futex", "warn", "not available: waits fall back to short sleeps (slower)")


def _ports() -> Finding:
    try:
        rng = port_range()
    except InvalidArgumentError as e:
        return Finding("SIDEBAND_PORT_RANGE", "fail", str(e), "fix the variable")
    if rng is None:
        return Finding("SIDEBAND_PORT_RANGE", "ok", "unset: listeners take any free port")
    return Finding("SIDEBAND_PORT_RANGE", "ok", f"listeners bind {rng[0]}-{rng[1]}")


def _ray() -> Finding:
    try:
        import ray
    except ImportError as e:  # pragma: no cover - a required dependency
        return Finding("ray", "fail", str(e), "pip install ray")
    v = tuple(int(p) for p in ray.__version__.split(".")[:2] if p.isdigit())
    lo, hi = TESTED_RAY
    if not lo <= v <= hi:
        return Finding(
            "ray",
            "warn",
            f"{ray.__version__} is outside the tested {lo[0]}.{lo[1]}-{hi[0]}.{hi[1]}",
            "use a tested Ray, or run the test suite against yours",
        )
    auth = os.environ.get("RAY_AUTH_MODE", "")
    return Finding("ray", "ok", f"{ray.__version__}" + (f", RAY_AUTH_MODE={auth}" if auth else ""))


def _cores(ranks: int | None) -> Finding:
    cores = os.cpu_count() or 1
    if ranks is not None and ranks > cores:
        return Finding(
            "cores",
            "warn",
            f"{cores} cores for {ranks} ranks on this host: waits sleep instead of spinning",
            "small ops get slower when ranks share cores; use fewer ranks per host",
        )
    return Finding("cores", "ok", f"{cores}")


def _extras() -> Finding:
    have = [e for e, mod in _EXTRAS.items() if importlib.util.find_spec(mod) is not None]
    missing = [e for e in _EXTRAS if e not in have]
    detail = f"installed: {', '.join(have) or 'none'}"
    if missing:
        detail += f"; not installed: {', '.join(missing)}"
    return Finding("extras", "ok", detail, "pip install 'sideband[NAME]' for what you need")


def _settings() -> Finding:
    """The ``SIDEBAND_*`` variables set here (those sideband sets for its own processes aside)."""
    found = [(v, raw, err) for v, raw, err in config.settings() if not v.internal]
    bad = [err for _v, _raw, err in found if err]
    if bad:
        return Finding("settings", "fail", "; ".join(bad), "fix or unset the variables named")
    if not found:
        return Finding("settings", "ok", "every SIDEBAND_* variable at its default")
    listed = ", ".join(f"{v.name}={raw}" for v, raw, _err in found)
    return Finding("settings", "ok", listed, "docs/configuration.md says what each one does")


def run(ranks: int | None = None) -> list[Finding]:
    return [
        _shm(),
        _ptrace(),
        _memfd(),
        _futex(),
        _ports(),
        _ray(),
        _cores(ranks),
        _extras(),
        _settings(),
    ]


def as_dicts(findings: list[Finding]) -> list[dict[str, Any]]:
    return [asdict(f) for f in findings]
