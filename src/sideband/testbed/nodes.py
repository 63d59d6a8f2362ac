"""The Ray node of each host: ``ray start --block`` in a session of its own, waiting until it is
up, and killing every process of a host (found by session and namespace, never by name)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from sideband.errors import TestbedError
from sideband.testbed import _sys
from sideband.testbed.host import Host

RAY_PORT = 6379
_READY = "Ray runtime started"


def ray_argv(
    h: Host,
    temp: str,
    cpus: int,
    object_store_mb: int,
    *,
    head_port: int | None,
    address: str,
    own_ports: bool,
) -> list[str]:
    """``ray start`` for host ``h``: the head where ``head_port`` is given, else a worker node
    joining ``address``; ``own_ports`` where several nodes share one machine's ports."""
    argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block"]
    argv += [
        f"--node-ip-address={h.ip}",
        f"--num-cpus={cpus}",
        "--num-gpus=0",
        f"--object-store-memory={object_store_mb * 1024 * 1024}",
        f"--resources={json.dumps({h.resource: 1000})}",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]
    if head_port is not None:
        argv += ["--head", f"--port={head_port}", "--include-dashboard=false"]
    else:
        argv += [f"--address={address}"]
    if own_ports:
        # Several nodes on one machine: every fixed default port would collide.
        argv += [f"--dashboard-agent-listen-port={free_port(h.ip)}"]
    return argv


def launch(h: Host, cmd: list[str], env: dict[str, str]) -> None:
    """Start the node's ``cmd`` with its output in ``h.log_path``."""
    with open(h.log_path, "w") as log:
        h.ray = subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its session id marks everything it spawns
        )
    h.started.add(h.ray.pid)
    h.state = "starting"


def wait_ready(h: Host, timeout_s: float) -> None:
    assert h.ray is not None
    deadline = time.monotonic() + timeout_s
    while True:
        text = _tail(h.log_path, 1 << 20)
        if _READY in text:
            h.state = "up"
            h.started |= _sys.session_tree([h.ray.pid])
            return
        if h.ray.poll() is not None or time.monotonic() > deadline:
            why = "exited" if h.ray.poll() is not None else "timed out"
            raise TestbedError(
                f"host {h.index}: ray start {why}; log {h.log_path}:\n{_tail(h.log_path, 3000)}"
            )
        time.sleep(0.1)


def stop(hosts: list[Host]) -> None:
    """Graceful first: `ray start --block` stops its node on SIGTERM; up to 5 s each, in the
    order given. A cut host is skipped (killed outright later): cut off from the head, its
    graceful stop would hang."""
    graceful = [h for h in hosts if h.state != "cut" and h.ray is not None]
    for h in graceful:
        if h.ray is not None and h.ray.poll() is None:
            _sys.kill_all([h.ray.pid], signal.SIGTERM)
    for h in graceful:
        try:
            h.ray.wait(timeout=5)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            pass


def kill(h: Host, netns: bool) -> set[int]:
    """SIGKILL every process of ``h`` (with ``netns``: everything in its namespace too);
    returns any that survived."""
    roots = {p for p in (h.ray.pid if h.ray else None, h.anchor.pid if h.anchor else None) if p}
    pids = _sys.session_tree(roots)
    if netns and h.netns:
        pids |= _sys.netns_pids(h.netns)
    h.started |= pids
    _sys.kill_all(pids)
    for p in (h.ray, h.anchor):
        if p is not None:
            _sys.reap(p, 10)
    h.state = "down"
    return _sys.wait_gone(pids, 10)


def _tail(path: str, n: int) -> str:
    try:
        with open(path, errors="replace") as f:
            f.seek(max(0, os.path.getsize(path) - n))
            return f.read()
    except OSError:
        return ""


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
