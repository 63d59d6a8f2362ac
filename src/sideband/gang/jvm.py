"""JVMs of Spark gangs: members' children that die with their member, watched line by line,
and the end of pyspark's driver-side gateway JVM (:func:`stop_gateway`).

Each JVM gets ``PR_SET_PDEATHSIG=SIGKILL`` (Linux): when the member process dies, however it
dies, the kernel kills the JVM too (``spark-class`` ends in ``exec java``, which keeps it). Its
output is read by a thread that spots readiness lines and keeps the last lines for error reports.

``spark-class`` first runs a launcher JVM only to print the real ``java`` command line;
:func:`spark_command` asks that launcher once per driver process (per Spark home and class), so
members exec ``java`` directly and each daemon costs one JVM start, not two.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

from sideband.errors import GangSetupError
from sideband.gang.ports import pick_port, port_range, retries_left
from sideband.gang.ports import wait_listening as listening

_PR_SET_PDEATHSIG = 1
# spark-class without its last step: load Spark's env (SPARK_SCALA_VERSION, spark-env.sh), keep
# it (a worker's executors need it too), then print the command instead of exec'ing it.
_LAUNCHER = (
    '. "$SPARK_HOME/bin/load-spark-env.sh" && env -0 > "$SIDEBAND_SPARK_ENV" && '
    'exec "${JAVA_HOME:+$JAVA_HOME/bin/}java" -Xmx128m $SPARK_LAUNCHER_OPTS '
    '-cp "$SPARK_HOME/jars/*" org.apache.spark.launcher.Main "$@"'
)
#: Stands for a member's own SPARK_CONF_DIR in a command computed on the driver.
CONF_DIR_MARK = "/nonexistent/sideband-spark-conf"
_ENV_KEYS = (
    "JAVA_HOME",
    "SPARK_DAEMON_MEMORY",
    "SPARK_DAEMON_JAVA_OPTS",
    "SPARK_DAEMON_CLASSPATH",
    "SPARK_LAUNCHER_OPTS",
    "SPARK_MASTER_OPTS",
    "SPARK_WORKER_OPTS",
)
_SHELL_VARS = ("SPARK_CONF_DIR", "SPARK_HOME", "_", "SHLVL", "PWD", "OLDPWD")
_MASTER = "org.apache.spark.deploy.master.Master"
_WORKER = "org.apache.spark.deploy.worker.Worker"


Command = tuple[list[str], dict[str, str]]


def spark_command(spark_home: str, main_class: str, env: dict[str, str]) -> Command | None:
    """The ``java`` argv ``spark-class main_class`` would exec, with :data:`CONF_DIR_MARK` for
    the conf dir, and the variables Spark's env script adds; None if the launcher fails (callers
    fall back to ``spark-class``)."""
    key = tuple((k, env.get(k, os.environ.get(k, ""))) for k in _ENV_KEYS)
    if (
        main_class == _MASTER
        and not dict(key)["SPARK_MASTER_OPTS"] + dict(key)["SPARK_WORKER_OPTS"]
    ):
        # Master and Worker get the same daemon command but for their own *_OPTS: one launch.
        worker = _spark_command(spark_home, _WORKER, key)
        return (worker[0][:-1] + [_MASTER], worker[1]) if worker else None
    return _spark_command(spark_home, main_class, key)


@functools.lru_cache(maxsize=16)
def _spark_command(
    spark_home: str, main_class: str, env_key: tuple[tuple[str, str], ...]
) -> Command | None:
    env = {**os.environ, **dict(env_key), "SPARK_HOME": spark_home}
    env["SPARK_CONF_DIR"] = CONF_DIR_MARK
    env.pop("SPARK_ENV_LOADED", None)
    for k, v in env_key:
        if not v:
            env.pop(k, None)
    with tempfile.NamedTemporaryFile(prefix="sideband-spark-env-") as env_file:
        env["SIDEBAND_SPARK_ENV"] = env_file.name
        try:
            out = subprocess.run(
                ["bash", "-c", _LAUNCHER, "spark-launcher", main_class],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        loaded = env_file.read().split(b"\0")
    # The launcher prints "\0\n", then every argument NUL-terminated.
    if out.returncode != 0 or b"\0\n" not in out.stdout:
        return None
    argv = [a.decode() for a in out.stdout.split(b"\0\n", 1)[1].split(b"\0")]
    while argv and not argv[-1]:
        argv.pop()
    if not argv or argv[-1] != main_class:
        return None
    added = {}
    for item in loaded:
        k, sep, v = item.decode(errors="replace").partition("=")
        if sep and env.get(k) != v and k not in _SHELL_VARS:
            added[k] = v
    return argv, added


def member_command(
    command: Command | None,
    conf_dir: str,
    spark_class: str,
    main_class: str,
    jvm_options: Sequence[str] = (),
) -> tuple[list[str], dict[str, str]]:
    """A driver-computed command for this member (its conf dir; ``jvm_options`` right after
    ``java``) and the env it needs, or ``spark-class`` when there is none or its ``java`` does
    not exist on this node."""
    if command and os.access(command[0][0], os.X_OK):
        argv = [a.replace(CONF_DIR_MARK, conf_dir) for a in command[0]]
        return argv[:1] + list(jvm_options) + argv[1:], dict(command[1])
    return [spark_class, main_class], {}


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl: do not outlive it
            os._exit(1)


class JVM:
    """One JVM process, started now; ``wait_for(marker)`` blocks until a line contains it."""

    def __init__(self, label: str, argv: Sequence[str], env: dict[str, str]) -> None:
        self.label = label
        self.proc = subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self.pid = self.proc.pid
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self._cond = threading.Condition()
        self._seen: list[str] = []
        self.ended = threading.Event()
        threading.Thread(target=self._read, name=f"sideband-{label}-log", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            with self._cond:
                self._tail.append(line)
                if len(self._seen) < 2000:  # readiness lines come early; bound the rest
                    self._seen.append(line)
                self._cond.notify_all()
        self.proc.wait()
        with self._cond:
            self.ended.set()
            self._cond.notify_all()

    def wait_for(self, marker: str, timeout_s: float) -> str:
        """The first line holding ``marker``; RuntimeError if the JVM ends or time runs out."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for line in self._seen:
                    if marker in line:
                        return line
                if self.ended.is_set():
                    raise RuntimeError(f"{self.label} exited ({self.returncode}) {self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{self.label} not ready in {timeout_s:g}s {self.tail()}")
                self._cond.wait(left)

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def tail(self, lines: int = 12) -> str:
        with self._cond:
            return "; last output: " + " | ".join(list(self._tail)[-lines:])

    def terminate(self) -> None:
        """SIGTERM (Spark's daemons stop their executors on it); see :meth:`stop`."""
        if self.proc.poll() is None:
            self.proc.terminate()

    def kill(self) -> None:
        """SIGKILL this JVM and every process under it (a worker's executors) now, and reap it:
        nothing of theirs outlives the gang's folders, which are removed right after."""
        for pid in reversed(_descendants(self.pid)):  # the deepest first: none is re-parented
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; returns once the JVM is gone."""
        self.terminate()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _descendants(pid: int) -> list[int]:
    """Every process under ``pid``, parents before children (from /proc, every thread's)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop(0)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(c) for c in f.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


_WORKDIR_PREFIX = "sideband-spark-"
_WORKDIR_PID = re.compile(r"-p(\d+)-[A-Za-z0-9_]+$")  # mkdtemp's suffix has no "-"


def make_workdir(gang: str, rank: int) -> str:
    """A member's Spark work folder (logs, conf), named with the member's pid: a member killed
    before its teardown leaves it behind, and the next member on this node removes it."""
    remove_stale_workdirs()
    return tempfile.mkdtemp(prefix=f"{_WORKDIR_PREFIX}{gang}-r{rank}-p{os.getpid()}-")


def remove_stale_workdirs() -> None:
    """Remove the work folders of Spark members whose process is gone (``...-p<pid>-...``)."""
    tmp = tempfile.gettempdir()
    try:
        names = os.listdir(tmp)
    except OSError:
        return
    for name in names:
        m = _WORKDIR_PID.search(name) if name.startswith(_WORKDIR_PREFIX) else None
        if m is None:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def reap(proc: Any, grace_s: float = 5.0) -> None:
    """Wait for a process to exit; kill it if it is still there after ``grace_s``."""
    try:
        proc.wait(grace_s)
    except Exception:
        proc.kill()
        proc.wait()


def wait_listening(host: str, port: int, timeout_s: float, jvm: JVM | None = None) -> None:
    """Until the master accepts connections (a worker that registers too early backs off for
    5-15 s, Spark's retry interval); ``jvm``: the master itself, whose exit ends the wait."""

    def check() -> None:
        if jvm is not None and jvm.ended.is_set():
            raise RuntimeError(f"{jvm.label} exited ({jvm.returncode}) {jvm.tail()}")

    if not listening(host, port, timeout_s, check, 0.02):
        raise GangSetupError(f"the Spark master {host}:{port} did not listen in time")


def stop_gateway(connecting: threading.Thread | None) -> None:
    """End pyspark's driver-side gateway JVM (pyspark would keep it for the next session);
    ``connecting``: a thread that may still be creating a session with it."""
    try:
        from pyspark import SparkContext
    except ImportError:
        return
    if connecting is not None and connecting.is_alive():
        # A session still connecting holds SparkContext._lock: end its JVM under it first.
        proc = getattr(SparkContext._gateway, "proc", None)
        if proc is not None:
            proc.kill()
        connecting.join(5.0)
    with SparkContext._lock:
        gateway, SparkContext._gateway, SparkContext._jvm = SparkContext._gateway, None, None
    if gateway is None:
        return
    proc = getattr(gateway, "proc", None)
    try:
        gateway.shutdown()
    except Exception:
        pass
    if proc is not None:
        try:
            proc.stdin.close()  # the gateway JVM exits when its stdin closes
        except Exception:
            proc.kill()
        # Its exit (shutdown hooks, temp dirs) need not hold up the members' teardown: a
        # thread reaps it, and kills it if it is still there after 5 s.
        threading.Thread(target=reap, args=(proc,), daemon=True).start()


# C2 compiles only what is really hot (10x Tier4's thresholds): a gang's short-lived start and
# first job are mostly code run a few thousand times, which C1 handles, while a long job's hot
# loops still reach C2. Measured on 2 cores: the driver's JVM 10.5 -> 7.8 CPU-s to the first
# result of spark.range(10M), each executor 5.3-6.1 -> 4.1-4.4 (with SerialGC, below).
_LATE_C2 = (
    "-XX:Tier4InvocationThreshold=50000",
    "-XX:Tier4MinInvocationThreshold=6000",
    "-XX:Tier4CompileThreshold=150000",
    "-XX:Tier4BackEdgeThreshold=400000",
)


def start_options(cores: int | None = None) -> list[str]:
    """JVM options of a gang's driver (``cores`` None) and executors (``cores`` each): C2 kept for
    hot code only; a 1-core executor collects with SerialGC (G1's concurrent threads would only
    compete with its one task thread)."""
    return list(_LATE_C2) + (["-XX:+UseSerialGC"] if cores == 1 else [])


def port_conf(host: str) -> dict[str, str]:
    """The driver's spark.*.port settings inside SIDEBAND_PORT_RANGE (none when no range is
    set)."""
    if port_range() is None:
        return {}
    start = pick_port(host)
    return {
        "spark.driver.port": str(start),
        "spark.blockManager.port": str(start),
        "spark.port.maxRetries": str(retries_left(start)),
    }
