"""Helpers shared by the gang tests."""

from __future__ import annotations

import os
import sys
import time

ZERO = {"CPU": 0}  # tests run on 2-core machines: members reserve (almost) nothing


def ship_by_value(module_name: str) -> None:
    """Test modules are not importable in Ray workers: pickle their functions by value."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[module_name])


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def wait_pids_gone(pids: list[int], bound_s: float = 20.0) -> list[int]:
    """Wait (bounded) until the processes are gone; return the ones still alive."""
    deadline = time.monotonic() + bound_s
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if pid_alive(p)]
    return alive


def env_snapshot() -> dict[str, str]:
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK")
    return {k: os.environ[k] for k in keys + ("MASTER_ADDR", "MASTER_PORT")}


def load_example(name: str):  # type: ignore[no-untyped-def]
    """Import examples/<name>.py; its functions are shipped to members by value."""
    import importlib.util
    from pathlib import Path

    from ray import cloudpickle

    path = Path(__file__).resolve().parents[2] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)  # members cannot import examples/
    return module
