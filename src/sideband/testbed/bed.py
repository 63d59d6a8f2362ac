"""Testbed: several Ray nodes on one machine, each a separate 'host' when namespaces allow it.

netns mode (root on Linux): one network namespace per host with its own address on a private
bridge (which lives in a namespace of its own, so the machine's real interfaces and routes are
never touched), and a private /dev/shm per host (a mount namespace), so shared memory cannot
cross hosts. Host 0 runs the Ray head and the drivers, the others run Ray worker nodes.

local mode (the fallback): the same Ray nodes as plain processes on 127.0.0.x. They share
/dev/shm, so collectives must be forced to TCP (``Testbed.backend`` says which to use).
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sideband.testbed import _sys
from sideband.testbed._sys import TestbedError
from sideband.testbed.driver import ENV_INFO, DriverRun

NETNS = "netns"
LOCAL = "local"
_MODES = ("auto", NETNS, LOCAL)
_IFACE = "sb0"  # the host's interface inside its namespace
_RAY_PORT = 6379
_READY = "Ray runtime started"


@dataclass
class Host:
    """One 'host': a Ray node, plus its namespaces in netns mode."""

    index: int
    ip: str
    netns: str | None = None
    generation: int = 0
    anchor: subprocess.Popen | None = None  # holds the host's mount namespace (netns mode)
    ray: subprocess.Popen | None = None  # `ray start --block`, in a session of its own
    wire: subprocess.Popen | None = None  # the userspace delay link, where netem is missing
    log_path: str = ""
    state: str = "down"  # down, up, cut
    started: set[int] = field(default_factory=set)  # every pid we launched for this host

    @property
    def resource(self) -> str:
        """The custom resource that pins actors here; a restored host gets a new one, so that
        nothing is scheduled on the dead node Ray has not forgotten yet."""
        return f"testbed_host{self.index}_g{self.generation}"

    @property
    def port_iface(self) -> str:
        return f"h{self.index}"  # the switch side of the host's veth


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
        if mode == "auto" and os.environ.get("SIDEBAND_TESTBED_MODE"):
            mode = os.environ["SIDEBAND_TESTBED_MODE"]
            self.fallback_reason = "local mode requested by SIDEBAND_TESTBED_MODE=local"
        elif mode == LOCAL:
            self.fallback_reason = "local mode requested (mode='local')"
        if mode not in _MODES:
            raise TestbedError(f"SIDEBAND_TESTBED_MODE must be one of {_MODES}, got {mode!r}")
        if mode in ("auto", NETNS):
            why = _sys.netns_unavailable()
            if why is not None and mode == NETNS:
                raise TestbedError(f"netns mode is not available: {why}")
            mode, self.fallback_reason = (
                (LOCAL, f"netns unavailable: {why}") if why else (NETNS, None)
            )
        self.mode: str = mode
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
        self._port = _RAY_PORT
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
                self._make_switch()
                for h in self.hosts:
                    self._make_host(h)
            else:
                self._port = _free_port("127.0.0.1")
            self._start_ray(self.hosts[0], head=True)
            for h in self.hosts[1:]:
                self._start_ray(h, head=False, wait=False)
            for h in self.hosts[1:]:
                self._wait_ready(h)
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
        # Graceful first: `ray start --block` stops its node on SIGTERM. Workers first, head last.
        # A cut host is killed outright: cut off from the head, its graceful stop would hang.
        graceful = [h for h in reversed(self.hosts) if h.state != "cut" and h.ray is not None]
        for h in graceful:
            if h.ray is not None and h.ray.poll() is None:
                _sys.kill_all([h.ray.pid], signal.SIGTERM)
        for h in graceful:
            try:
                h.ray.wait(timeout=5)  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                pass
        for h in self.hosts:
            left = self._kill_host(h)
            if left:
                errors.append(f"host {h.index}: processes {sorted(left)} survived SIGKILL")
        if self.mode == NETNS:
            for ns in [h.netns for h in self.hosts if h.netns] + [self._switch]:
                _sys.run(["ip", "netns", "del", ns], 10, check=False)
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
            listed = _sys.run(["ip", "netns", "list"], 10, check=False).stdout
            out += [f"namespace {ln.split()[0]}" for ln in listed.splitlines() if self.tag in ln]
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
            self._qdisc(host, "delay", ["netem", "delay", f"{ms}ms", "limit", "100000"])
            return
        sw, a, b, port = self._switch, f"w{host}a", f"w{host}b", h.port_iface
        _sys.run(["ip", "-n", sw, "link", "add", a, "type", "veth", "peer", "name", b])
        _sys.run(["ip", "-n", sw, "link", "set", a, "master", "br0", "up"])
        _sys.run(["ip", "-n", sw, "link", "set", b, "up", "promisc", "on"])
        _sys.run(["ip", "-n", sw, "link", "set", port, "nomaster", "promisc", "on"])
        h.wire = subprocess.Popen(
            ["ip", "netns", "exec", sw, sys.executable, "-m", "sideband.testbed.wire"]
            + [port, b, str(ms)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        h.started.add(h.wire.pid)
        line = h.wire.stdout.readline() if h.wire.stdout else ""
        if line.strip() != "up":
            err = h.wire.stderr.read() if h.wire.stderr else ""
            self._unwire(h)
            raise TestbedError(f"host {host}: the delay link did not start: {err.strip()}")

    @property
    def delay_method(self) -> str:
        """How :meth:`delay` delays here: "netem" or "wire" (userspace)."""
        return "netem" if self.netem_available else "wire"

    def _unwire(self, h: Host) -> None:
        """Stop the delay forwarder and put the host's port back on the bridge."""
        if h.wire is not None:
            _sys.kill_all([h.wire.pid])
            try:
                h.wire.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (h.wire.stdout, h.wire.stderr):
                if stream is not None:
                    stream.close()
            h.wire = None
            sw = self._switch
            _sys.run(["ip", "-n", sw, "link", "del", f"w{h.index}a"], check=False)
            _sys.run(["ip", "-n", sw, "link", "set", h.port_iface, "master", "br0"], check=False)

    def throttle(self, host: int, mbit: float) -> None:
        """Limit ``host``'s link to ``mbit`` Mbit/s in each direction (tc tbf): a slow link
        whose latency grows with the queue, for kernels without netem."""
        self.clear_delay(host)
        burst = max(1600, int(mbit * 1e6 / 8 / 100))  # 10 ms worth of bytes, at least a frame
        self._qdisc(host, "throttle", ["tbf", "rate", f"{mbit}mbit", "burst", str(burst)]
                    + ["latency", "1s"])  # fmt: skip

    @property
    def netem_available(self) -> bool:
        """Whether the kernel has tc netem (else :meth:`delay` uses the userspace wire)."""
        if self._netem is None:
            self._netem = False
            if self.mode == NETNS:
                ns = self._switch
                # A throwaway veth: the one link type the test bed needs anyway.
                _sys.run(["ip", "-n", ns, "link", "add", "nq0", "type", "veth"]
                         + ["peer", "name", "nq1"], check=False)  # fmt: skip
                p = _sys.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "nq0"]
                             + ["root", "netem", "delay", "1ms"], check=False)  # fmt: skip
                _sys.run(["ip", "-n", ns, "link", "del", "nq0"], check=False)
                self._netem = p.returncode == 0
        return self._netem

    def clear_delay(self, host: int) -> None:
        """Remove any delay or throttle from ``host``'s link."""
        h = self._netns_host(host, "clear_delay")
        self._unwire(h)
        for ns, dev in ((h.netns, _IFACE), (self._switch, h.port_iface)):
            _sys.run(
                ["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"], check=False
            )

    def _qdisc(self, host: int, what: str, qdisc: list[str]) -> None:
        h = self._netns_host(host, what)
        for ns, dev in ((h.netns, _IFACE), (self._switch, h.port_iface)):
            _sys.run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root"]
                     + qdisc)  # fmt: skip

    def cut(self, host: int, how: str = "kill") -> None:
        """Take ``host`` down: "kill" SIGKILLs all its processes (a crash: the kernel closes
        its sockets), "link" deletes its veth (a partition: no FIN, no RST; netns mode only)."""
        h = self.hosts[host]
        if how == "kill":
            self._kill_host(h)
        elif how == "link":
            self._netns_host(host, "cut(how='link')")
            self._unwire(h)
            _sys.run(["ip", "-n", self._switch, "link", "del", h.port_iface])
        else:
            raise TestbedError(f"cut: how must be 'kill' or 'link', got {how!r}")
        h.state = "cut"

    def restore(self, host: int) -> None:
        """Bring a cut host back as a fresh Ray node (with a new pinning resource)."""
        h = self.hosts[host]
        if host == 0:
            raise TestbedError("host 0 holds the Ray head: start a new Testbed instead")
        self._kill_host(h)
        if self.mode == NETNS and h.netns:
            _sys.run(["ip", "netns", "del", h.netns], 10, check=False)
            _sys.run(["ip", "-n", self._switch, "link", "del", h.port_iface], 10, check=False)
        h.generation += 1
        if self.mode == NETNS:
            self._make_host(h)
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
        p = subprocess.Popen(
            self.command(argv, host),
            env=self.env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # one signal ends it and whatever it spawned
        )
        d = DriverRun(p)
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

    def _make_switch(self) -> None:
        sw = self._switch
        _sys.run(["ip", "netns", "add", sw])
        _sys.run(["ip", "-n", sw, "link", "set", "lo", "up"])
        _sys.run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
        _sys.run(["ip", "-n", sw, "link", "set", "br0", "up"])

    def _make_host(self, h: Host) -> None:
        """A namespace with one veth into the bridge, and an anchor process holding a mount
        namespace with a private /dev/shm, which every process of the host then enters."""
        h.netns = f"{self.tag}-h{h.index}"
        sw, ns = self._switch, h.netns
        _sys.run(["ip", "netns", "add", ns])
        _sys.run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # Created inside the switch namespace with its peer sent straight into the host's:
        # no interface ever appears in the machine's own namespace.
        _sys.run(["ip", "-n", sw, "link", "add", h.port_iface, "type", "veth"]
                 + ["peer", "name", _IFACE, "netns", ns])  # fmt: skip
        _sys.run(["ip", "-n", sw, "link", "set", h.port_iface, "master", "br0", "up"])
        _sys.run(["ip", "-n", ns, "addr", "add", f"{h.ip}/24", "dev", _IFACE])
        _sys.run(["ip", "-n", ns, "link", "set", _IFACE, "up"])
        script = "mount -t tmpfs -o mode=1777 tmpfs /dev/shm && echo up && exec sleep 2147483647"
        h.anchor = subprocess.Popen(
            ["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private"]
            + ["sh", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        h.started.add(h.anchor.pid)
        line = h.anchor.stdout.readline() if h.anchor.stdout else ""
        if line.strip() != "up":
            err = h.anchor.stderr.read() if h.anchor.stderr else ""
            raise TestbedError(f"host {h.index}: private /dev/shm failed: {err.strip()}")

    def _start_ray(self, h: Host, head: bool, wait: bool = True) -> None:
        temp = os.path.join(self._tmp, f"h{h.index}g{h.generation}")
        os.makedirs(temp, exist_ok=True)
        h.log_path = os.path.join(self._tmp, f"ray-h{h.index}g{h.generation}.log")
        argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block"]
        argv += [
            f"--node-ip-address={h.ip}",
            f"--num-cpus={self.cpus_per_host}",
            "--num-gpus=0",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            f"--resources={json.dumps({h.resource: 1000})}",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ]
        if head:
            argv += ["--head", f"--port={self._port}", "--include-dashboard=false"]
        else:
            argv += [f"--address={self.address}"]
        if self.mode == LOCAL:
            # Several nodes on one machine: every fixed default port would collide.
            argv += [f"--dashboard-agent-listen-port={_free_port(h.ip)}"]
        with open(h.log_path, "w") as log:
            h.ray = subprocess.Popen(
                self.command(argv, h.index),
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its session id marks everything it spawns
            )
        h.started.add(h.ray.pid)
        h.state = "starting"
        if wait:
            self._wait_ready(h)

    def _wait_ready(self, h: Host) -> None:
        assert h.ray is not None
        deadline = time.monotonic() + self.start_timeout_s
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

    def _kill_host(self, h: Host) -> set[int]:
        """SIGKILL every process of ``h``; returns any that survived."""
        if self.mode == NETNS:
            self._unwire(h)
        roots = {p for p in (h.ray.pid if h.ray else None, h.anchor.pid if h.anchor else None) if p}
        pids = _sys.session_tree(roots)
        if self.mode == NETNS and h.netns:
            pids |= _sys.netns_pids(h.netns)
        h.started |= pids
        _sys.kill_all(pids)
        for p in (h.ray, h.anchor):
            if p is not None:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                for stream in (p.stdout, p.stderr):
                    if stream is not None:
                        stream.close()
        h.state = "down"
        return _sys.wait_gone(pids, 10)


def _tail(path: str, n: int) -> str:
    try:
        with open(path, errors="replace") as f:
            f.seek(max(0, os.path.getsize(path) - n))
            return f.read()
    except OSError:
        return ""


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
