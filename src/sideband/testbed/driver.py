"""Drivers on the test bed: helpers used inside them, and the handle the outside holds.

A driver is a Python process on host 0 (a Ray node, as Ray requires). It reads the test bed's
layout from ``SIDEBAND_TESTBED``, connects with :func:`connect`, pins actors to hosts with
:func:`on_host`, reports progress with :func:`event` and its outcome with :func:`emit`; the
outside reads both from its stdout through :class:`DriverRun`.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from typing import Any

from sideband import config
from sideband.errors import TestbedError
from sideband.testbed._sys import kill_all, session_tree, spawn

ENV_INFO = "SIDEBAND_TESTBED"
RESULT_MARK = "TESTBED-RESULT "
EVENT_MARK = "TESTBED-EVENT "


# -- inside a driver -------------------------------------------------------------------------------
def info() -> dict[str, Any]:
    """The test bed's layout: mode, backend, Ray address and hosts (ip, resource)."""
    bed: dict[str, Any] | None = config.get(ENV_INFO)
    if bed is None:
        raise TestbedError(f"{ENV_INFO} is not set: this process was not started by a Testbed")
    return bed


def connect(timeout_s: float = 90.0, **init_kwargs: Any) -> dict[str, Any]:
    """``ray.init`` to the test bed's cluster and wait until every host's node is alive."""
    import ray

    bed = info()
    init_kwargs.setdefault("log_to_driver", False)
    ray.init(address=bed["address"], **init_kwargs)
    want = {h["resource"] for h in bed["hosts"] if h["state"] == "up"}
    deadline = time.monotonic() + timeout_s
    while True:
        have = {r for n in ray.nodes() if n.get("Alive") for r in n.get("Resources", {})}
        if want <= have:
            return bed
        if time.monotonic() > deadline:
            raise TestbedError(f"hosts never joined the cluster: {sorted(want - have)}")
        time.sleep(0.2)


def on_host(index: int) -> dict[str, Any]:
    """Actor options that place an actor on host ``index``."""
    return {"resources": {info()["hosts"][index]["resource"]: 1}}


def event(name: str, **data: Any) -> None:
    """Tell the outside that ``name`` happened (read by :meth:`DriverRun.wait_event`)."""
    print(EVENT_MARK + json.dumps({"event": name, "t": time.time(), **data}), flush=True)


def emit(result: dict[str, Any]) -> None:
    """The driver's outcome, as JSON (returned by :meth:`DriverRun.result`)."""
    print(RESULT_MARK + json.dumps(result), flush=True)


# -- outside -----------------------------------------------------------------------------------------
class DriverRun:
    """A running driver process: its events as they come, then its result."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._result: dict[str, Any] | None = None
        self._threads = [
            threading.Thread(target=self._pump, args=(proc.stdout, True), daemon=True),
            threading.Thread(target=self._pump, args=(proc.stderr, False), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream: Any, is_stdout: bool) -> None:
        for line in stream:
            (self.stdout if is_stdout else self.stderr).append(line)
            if is_stdout and line.startswith(EVENT_MARK):
                self._events.put(json.loads(line[len(EVENT_MARK) :]))
            elif is_stdout and line.startswith(RESULT_MARK):
                self._result = json.loads(line[len(RESULT_MARK) :])
        stream.close()

    def output(self, n: int = 4000) -> str:
        return (
            f"--- stdout ---\n{''.join(self.stdout)[-n:]}\n--- stderr ---\n"
            f"{''.join(self.stderr)[-n:]}"
        )

    def wait_event(self, name: str, timeout_s: float) -> dict[str, Any]:
        """Block until the driver reports ``name``; raises if it exits or times out first."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ev = self._events.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self._events.empty():
                    for t in self._threads:
                        t.join(timeout=2)
                    if self._events.empty():
                        raise TestbedError(
                            f"driver exited ({self.proc.returncode}) before event {name!r}\n"
                            + self.output()
                        ) from None
                if time.monotonic() > deadline:
                    raise TestbedError(
                        f"no event {name!r} in {timeout_s:g}s\n" + self.output()
                    ) from None
                continue
            if ev["event"] == name:
                return ev

    def result(self, timeout_s: float) -> dict[str, Any]:
        """Wait for the driver to exit; its emitted result (raises on failure or timeout)."""
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TestbedError(f"driver timed out after {timeout_s:g}s\n" + self.output()) from None
        for t in self._threads:
            t.join(timeout=5)
        if self.proc.returncode != 0 or self._result is None:
            raise TestbedError(
                f"driver failed (exit {self.proc.returncode}, result "
                f"{'missing' if self._result is None else 'present'})\n" + self.output()
            )
        return self._result

    def kill(self) -> set[int]:
        """SIGKILL the driver and anything left in its session (e.g. Ray nodes it started);
        returns the pids that were still alive."""
        pids = session_tree([self.pid])
        kill_all(pids)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        return pids - {self.pid}


def run_process(
    argv: list[str], env: dict[str, str] | None = None, timeout_s: float = 300.0
) -> tuple[dict[str, Any], set[int]]:
    """Run a driver outside any test bed (e.g. one that starts ``ray.cluster_utils.Cluster``)
    in a session of its own: (its emitted result, pids of its session still alive at its exit,
    now killed). The second item should be empty: a clean driver leaves nothing behind."""
    d = DriverRun(spawn(argv, env))
    try:
        result = d.result(timeout_s)
    finally:
        left = d.kill()
    return result, left
