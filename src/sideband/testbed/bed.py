"""Testbed: several Ray nodes on one machine, each a separate 'host' when namespaces allow it.

netns mode (root on Linux): one network namespace per host with its own address on a private
bridge (which lives in a namespace of its own, so the machine's real interfaces and routes are
never touched), and a private /dev/shm per host (a mount namespace), so shared memory cannot
cross hosts. Host 0 runs the Ray head and the drivers, the others run Ray worker nodes.

local mode (the fallback): the same Ray nodes as plain processes on 127.0.0.x. They share
/dev/shm, so collectives must be forced to TCP (``Testbed.backend`` says which to use).

This class holds the state and the order of things; the steps live by job in
:mod:`~sideband.testbed.network` (namespaces, bridge), :mod:`~sideband.testbed.links` (delay,
throttle, unplug), :mod:`~sideband.testbed.nodes` (Ray node processes) and
:mod:`~sideband.testbed._sys` (commands and processes).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import uuid
from typing import Any

from sideband import config
from sideband.errors import TestbedError
from sideband.testbed import _sys, links, network, nodes
from sideband.testbed.driver import ENV_INFO, DriverRun
from sideband.testbed.host import LOCAL, NETNS, Host

log = logging.getLogger("sideband.testbed")

_MODES = ("auto", NETNS, LOCAL)


class Testbed:
    """``hosts`` Ray nodes joined into one cluster; drivers run on host 0.

    Use it as a context manager (or call :meth:`close`): teardown kills every process it
    started (by pid, session and namespace, never by name) and deletes every namespace, even
    when a test failed. ``mode`` is "auto" (netns when permitted, else local; the environment
    variable ``SIDEBAND_TESTBED_MODE`` overrides it), "netns" or "local".
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        hosts: int = 2,
        *,
        mode: str = "auto",
        cpus_per_host: int = 1,
        object_store_mb: int = 100,
        subnet: str = "10.77.0",
        env: dict[str, str] | None = None,
        start_timeout_s: float = 120.0,
        quiet: bool = False,
    ) -> None:
        if hosts < 1:
            raise TestbedError(f"a test bed needs at least one host, got {hosts}")
        if mode not in _MODES:
            raise TestbedError(f"mode must be one of {_MODES}, got {mode!r}")
        #: Why this test bed runs in local mode (None in netns mode).
        self.fallback_reason: str | None = None
        if mode == "auto" and config.is_set("SIDEBAND_TESTBED_MODE"):
            mode = config.get("SIDEBAND_TESTBED_MODE")  # validated: one of _MODES
            self.fallback_reason = f"{mode} mode requested by SIDEBAND_TESTBED_MODE={mode}"
        elif mode == LOCAL:
            self.fallback_reason = "local mode requested (mode='local')"
        if mode in ("auto", NETNS):
            why = _sys.netns_unavailable()
            if why is not None and mode == NETNS:
                raise TestbedError(f"netns mode is not available: {why}")
            mode, self.fallback_reason = (
                (LOCAL, f"netns unavailable: {why}") if why else (NETNS, None)
            )
        self.mode: str = mode
        if self.fallback_reason:
            log.debug("test bed in local mode: %s", self.fallback_reason)
        self.tag = f"{_sys.PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.cpus_per_host = cpus_per_host
        self.object_store_mb = object_store_mb
        self.start_timeout_s = start_timeout_s
        self.quiet = quiet
        self._extra_env = dict(env or {})
        self._tmp = ""
        self._switch = f"{self.tag}-sw"
        self.hosts = [
            Host(i, f"{subnet}.{i + 1}" if mode == NETNS else f"127.0.0.{i + 1}")
            for i in range(hosts)
        ]
        self._port = nodes.RAY_PORT
        self._drivers: list[DriverRun] = []
        self._closed = False
        self._atexit = False
        self._token = secrets.token_hex(32)
        self._netem: bool | None = None

    # -- facts -----------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """The sideband backend for groups across hosts: "auto" where hosts really cannot share
        memory (netns), "tcp" where they can (local mode, so TCP paths are still exercised)."""
        return "auto" if self.mode == NETNS else "tcp"

    @property
    def address(self) -> str:
        return f"{self.hosts[0].ip}:{self._port}"

    def describe(self) -> str:
        text = f"sideband test bed: {self.mode} mode, {len(self.hosts)} hosts " + ", ".join(
            h.ip for h in self.hosts
        )
        if self.fallback_reason:
            text += f" ({self.fallback_reason}; collectives forced to tcp)"
        return text

    def info(self) -> dict[str, Any]:
        """What a driver learns through ``SIDEBAND_TESTBED`` (see sideband.testbed.driver)."""
        return {
            "mode": self.mode,
            "backend": self.backend,
            "address": self.address,
            "hosts": [
                {"index": h.index, "ip": h.ip, "resource": h.resource, "state": h.state}
                for h in self.hosts
            ],
        }

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Testbed:
        """Build the hosts and start Ray on each; returns once every node reported ready."""
        if not self._atexit:
            atexit.register(self.close)  # a crashed or interrupted run still tears down
            self._atexit = True
        try:
            self._tmp = tempfile.mkdtemp(prefix=f"{self.tag}-", dir="/tmp")
            if self.mode == NETNS:
                _sys.remove_stale_namespaces()
                network.make_switch(self._switch)
                for h in self.hosts:
                    network.make_host(self._switch, self.tag, h)
            else:
                self._port = nodes.free_port("127.0.0.1")
            self._start_ray(self.hosts[0], head=True)
            for h in self.hosts[1:]:
                self._start_ray(h, head=False, wait=False)
            for h in self.hosts[1:]:
                nodes.wait_ready(h, self.start_timeout_s)
        except BaseException:
            self.close()
            raise
        self._say(self.describe())
        return self

    def close(self) -> None:
        """Kill everything this test bed started and remove its namespaces and files."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for d in self._drivers:
            d.kill()
        nodes.stop(list(reversed(self.hosts)))  # workers first, head last
        for h in self.hosts:
            survivors = self._kill_host(h)
            if survivors:
                errors.append(f"host {h.index}: processes {sorted(survivors)} survived SIGKILL")
        if self.mode == NETNS:
            network.delete_namespaces([h.netns for h in self.hosts if h.netns] + [self._switch])
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        if self._atexit:
            atexit.unregister(self.close)
        left = self.leftovers()
        if left or errors:
            raise TestbedError("test bed teardown left: " + "; ".join(errors + left))

    def leftovers(self) -> list[str]:
        """Anything of this test bed still present (empty after a clean close)."""
        out = []
        if self.mode == NETNS:
            out += [f"namespace {ns}" for ns in network.namespaces_of(self.tag)]
        # Recomputed from our sessions, not from remembered pids, which strangers may reuse.
        roots = {
            proc.pid for h in self.hosts for proc in (h.ray, h.anchor, h.wire) if proc is not None
        } | {d.pid for d in self._drivers}
        pids = _sys.session_tree(roots)
        out += [f"pid {p}" for p in sorted(pids)]
        if self._tmp and os.path.exists(self._tmp):
            out.append(f"directory {self._tmp}")
        return out

    # -- faults ----------------------------------------------------------------------------------
    def delay(self, host: int, ms: float) -> None:
        """Add ``ms`` of one-way delay in each direction on ``host``'s link.

        With ``tc netem`` where the kernel has it; otherwise the host's bridge port is re-wired
        through a userspace forwarder (:mod:`sideband.testbed.wire`) that holds every frame back
        ``ms``: slower for bulk data, the same latency for the protocol.
        """
        h = self._netns_host(host, "delay")
        self.clear_delay(host)
        if self.netem_available:
            # A queue deep enough for a fast link's bandwidth-delay product: netem's default of
            # 1000 packets would drop, and a 'slow link' test would become a 'lossy link' test.
            links.set_qdisc(self._switch, h, ["netem", "delay", f"{ms}ms", "limit", "100000"])
            return
        links.wire(self._switch, h, ms)

    @property
    def delay_method(self) -> str:
        """How :meth:`delay` delays here: "netem" or "wire" (userspace)."""
        return "netem" if self.netem_available else "wire"

    def throttle(self, host: int, mbit: float) -> None:
        """Limit ``host``'s link to ``mbit`` Mbit/s in each direction (tc tbf): a slow link
        whose latency grows with the queue, for kernels without netem."""
        self.clear_delay(host)
        h = self._netns_host(host, "throttle")
        burst = max(1600, int(mbit * 1e6 / 8 / 100))  # 10 ms worth of bytes, at least a frame
        links.set_qdisc(self._switch, h, ["tbf", "rate", f"{mbit}mbit", "burst", str(burst)]
                        + ["latency", "1s"])  # fmt: skip

    @property
    def netem_available(self) -> bool:
        """Whether the kernel has tc netem (else :meth:`delay` uses the userspace wire)."""
        if self._netem is None:
            self._netem = self.mode == NETNS and links.netem_available(self._switch)
        return self._netem

    def clear_delay(self, host: int) -> None:
        """Remove any delay or throttle from ``host``'s link."""
        h = self._netns_host(host, "clear_delay")
        links.unwire(self._switch, h)
        links.clear_qdisc(self._switch, h)

    def cut(self, host: int, how: str = "kill") -> None:
        """Take ``host`` down: "kill" SIGKILLs all its processes (a crash: the kernel closes
        its sockets), "link" deletes its veth (a partition: no FIN, no RST; netns mode only)."""
        h = self.hosts[host]
        if how == "kill":
            self._kill_host(h)
        elif how == "link":
            self._netns_host(host, "cut(how='link')")
            links.unplug(self._switch, h)
        else:
            raise TestbedError(f"cut: how must be 'kill' or 'link', got {how!r}")
        h.state = "cut"

    def restore(self, host: int) -> None:
        """Bring a cut host back as a fresh Ray node (with a new pinning resource)."""
        h = self.hosts[host]
        if host == 0:
            raise TestbedError("host 0 holds the Ray head: start a new Testbed instead")
        self._kill_host(h)
        if self.mode == NETNS:
            network.unmake_host(self._switch, h)
        h.generation += 1
        if self.mode == NETNS:
            network.make_host(self._switch, self.tag, h)
        self._start_ray(h, head=False)

    def ensure_healthy(self) -> None:
        """Restore every cut host and clear delays: a clean state for the next test."""
        for h in self.hosts:
            if h.state == "cut":
                self.restore(h.index)
            elif self.mode == NETNS:
                self.clear_delay(h.index)

    # -- drivers ---------------------------------------------------------------------------------
    def command(self, argv: list[str], host: int = 0) -> list[str]:
        """``argv`` wrapped to run inside ``host`` (its network and mount namespaces)."""
        h = self.hosts[host]
        if self.mode == NETNS:
            if h.anchor is None or h.anchor.poll() is not None:
                raise TestbedError(f"host {host} is down")
            return ["nsenter", "-t", str(h.anchor.pid), "-m", "-n", "--"] + argv
        return list(argv)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of processes inside the test bed."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        # Each node advertises its own address: an inherited SIDEBAND_HOST (e.g. the test
        # suite's 127.0.0.1) would make every rank listen on loopback, unreachable from others.
        env.pop("SIDEBAND_HOST", None)
        env.update(self._extra_env)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        # Token auth, with a token of this test bed's own: no node or driver depends on (or
        # writes) ~/.ray/auth_token, and the pytest session's own Ray is a separate cluster.
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = self._token
        env[ENV_INFO] = json.dumps(self.info())
        env["RAY_ADDRESS"] = self.address
        env.update(extra or {})
        return env

    def start_driver(
        self, argv: list[str], host: int = 0, env: dict[str, str] | None = None
    ) -> DriverRun:
        """Start ``argv`` (e.g. ``[sys.executable, script]``) as a driver on ``host``."""
        d = DriverRun(_sys.spawn(self.command(argv, host), self.env(env)))
        self._drivers.append(d)
        return d

    def run_driver(
        self,
        argv: list[str],
        host: int = 0,
        env: dict[str, str] | None = None,
        timeout_s: float = 300.0,
    ) -> dict[str, Any]:
        """Run a driver to completion; returns the result it emitted (raises if none)."""
        return self.start_driver(argv, host, env).result(timeout_s)

    def python(
        self, code: str, host: int = 0, env: dict[str, str] | None = None, timeout_s: float = 300.0
    ) -> dict[str, Any]:
        """Run Python ``code`` as a driver (its functions are shipped to actors by value)."""
        path = os.path.join(self._tmp, f"driver-{uuid.uuid4().hex[:8]}.py")
        with open(path, "w") as f:
            f.write(code)
        return self.run_driver([sys.executable, path], host, env, timeout_s)

    # -- building blocks -------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def _netns_host(self, host: int, what: str) -> Host:
        if self.mode != NETNS:
            raise TestbedError(f"{what} needs netns mode; this test bed runs in {self.mode} mode")
        return self.hosts[host]

    def _start_ray(self, h: Host, head: bool, wait: bool = True) -> None:
        temp = os.path.join(self._tmp, f"h{h.index}g{h.generation}")
        os.makedirs(temp, exist_ok=True)
        h.log_path = os.path.join(self._tmp, f"ray-h{h.index}g{h.generation}.log")
        argv = nodes.ray_argv(
            h,
            temp,
            self.cpus_per_host,
            self.object_store_mb,
            head_port=self._port if head else None,
            address=self.address,
            own_ports=self.mode == LOCAL,
        )
        nodes.launch(h, self.command(argv, h.index), self.env())
        if wait:
            nodes.wait_ready(h, self.start_timeout_s)

    def _kill_host(self, h: Host) -> set[int]:
        """SIGKILL every process of ``h``; returns any that survived."""
        if self.mode == NETNS:
            links.unwire(self._switch, h)
        return nodes.kill(h, self.mode == NETNS)
