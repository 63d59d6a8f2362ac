"""Setup "spark": a Spark standalone cluster inside the gang, a SparkSession on the driver.

What RayDP does, through a gang: rank 0 runs the standalone master on MASTER_PORT, every member
runs a worker JVM sized from its bundle (cores from CPU, memory from ``memory`` or
``setup_options["worker_memory"]``), and the driver gets a ``SparkSession`` connected to it with
one executor per member (``gang.client`` or :func:`session`). The JVMs are children of the
member actors and die with them (``sideband.gang.jvm``); a worker JVM that exits on its own
fails the gang like any member. Spark binds the node address (loopback on one node) and, with
SIDEBAND_PORT_RANGE set, ports of that range (Spark counts up from a free one on a clash).

Forming overlaps what it can: the driver's JVM and the daemons' ``java`` command line (computed
once, so members skip ``spark-class``'s launcher JVM) start with the placement; rank 0 leads
(:meth:`Setup.lead`) by starting the master, and as soon as the master is elected the driver
registers its application, while the workers start and get their executors as they register.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import threading
import time
from typing import Any

from sideband.errors import GangSetupError
from sideband.gang.contract import GangContext
from sideband.gang.jvm import (
    JVM,
    Command,
    make_workdir,
    member_command,
    remove_stale_workdirs,
    spark_command,
)
from sideband.gang.ports import pick_port, port_range, retries_left
from sideband.gang.setup import GangPlan, Setup, require

_DEFAULT_MEMORY_MB = 1024
_MASTER_READY = "I have been elected leader"
_WORKER_READY = "Successfully registered with master"
_MASTER_CLASS = "org.apache.spark.deploy.master.Master"
_WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
# Master and worker only route messages: the quick JIT tier starts them sooner.
_DAEMON_ENV = {
    "SPARK_DAEMON_JAVA_OPTS": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
    "SPARK_DAEMON_MEMORY": "512m",
}


def _sizes(plan_bundle: dict[str, float], options: dict[str, Any]) -> tuple[int, int]:
    cores = int(options.get("worker_cores") or max(1, math.floor(plan_bundle.get("CPU", 1.0))))
    memory = options.get("worker_memory_mb")
    if memory is None:
        memory = plan_bundle["memory"] / 2**20 if "memory" in plan_bundle else _DEFAULT_MEMORY_MB
    return cores, max(256, int(memory))


def _port_conf(host: str) -> dict[str, str]:
    """spark.*.port settings inside SIDEBAND_PORT_RANGE (nothing when no range is set)."""
    if port_range() is None:
        return {}
    start = pick_port(host)
    return {
        "spark.driver.port": str(start),
        "spark.blockManager.port": str(start),
        "spark.port.maxRetries": str(retries_left(start)),
    }


class SparkSetup(Setup):
    """A standalone master (rank 0) and a worker JVM per member; SparkSession on the driver."""

    name = "spark"

    def __init__(self) -> None:
        self._jvms: list[JVM] = []
        self._workdir: str | None = None
        self._plan: GangPlan | None = None
        self._session: Any = None
        self._stopping = False
        self._lock = threading.Lock()
        self._gateway: threading.Thread | None = None
        self._gateway_error: BaseException | None = None
        self._commands: dict[str, Command | None] = {}
        self._launcher: threading.Thread | None = None
        self._connect: threading.Thread | None = None
        self._connect_error: BaseException | None = None

    # --- driver side ---------------------------------------------------------------------------
    def warm_up(self, options: dict[str, Any]) -> None:
        pyspark = require("pyspark", "spark")
        spark_home = os.path.dirname(pyspark.__file__)
        # While Ray places and starts the members: the driver's JVM, and the daemons' java
        # command lines (so members exec java at once instead of spark-class's launcher JVM).
        self._gateway = threading.Thread(target=self._launch_gateway, args=(options,), daemon=True)
        self._gateway.start()
        env = {
            **_DAEMON_ENV,
            **(
                {"SPARK_DAEMON_MEMORY": options["daemon_memory"]}
                if "daemon_memory" in options
                else {}
            ),
        }

        def commands() -> None:
            for cls in (_WORKER_CLASS, _MASTER_CLASS):  # the master's reuses the worker's
                self._commands[cls] = spark_command(spark_home, cls, env)

        self._launcher = threading.Thread(target=commands, daemon=True)
        self._launcher.start()

    def prepare(self, plan: GangPlan) -> dict[str, Any]:
        pyspark = require("pyspark", "spark")
        self._plan = plan
        cores, memory = _sizes(plan.bundle, plan.options)
        if self._launcher is not None:
            self._launcher.join(plan.timeout_s)
        return {
            "spark_home": os.path.dirname(pyspark.__file__),
            "commands": dict(self._commands),
            "cores": cores,
            "memory_mb": memory,
            "timeout_s": plan.timeout_s,
        }

    def _launch_gateway(self, options: dict[str, Any]) -> None:
        try:
            from pyspark import SparkConf, SparkContext

            conf = SparkConf().set("spark.driver.memory", options.get("driver_memory", "1g"))
            SparkContext._ensure_initialized(conf=conf)
        except BaseException as e:
            self._gateway_error = e

    def _plan_opt(self, key: str, default: Any) -> Any:
        return (self._plan.options if self._plan else {}).get(key, default)

    def led(self, result: Any) -> None:
        # The master is up: the driver registers its application now, while the workers start,
        # and the master gives each worker its executor as it registers.
        self._connect = threading.Thread(
            target=self._create_session, args=(result["master"],), daemon=True
        )
        self._connect.start()

    def _create_session(self, master: str) -> None:
        try:
            from pyspark.sql import SparkSession

            plan = self._plan
            assert plan is not None and self._gateway is not None
            self._gateway.join(plan.timeout_s)
            if self._gateway_error is not None:
                raise GangSetupError(f"the driver's Spark JVM did not start: {self._gateway_error}")
            cores, memory = _sizes(plan.bundle, plan.options)
            host = "127.0.0.1" if plan.single_node else _node_ip()
            builder = SparkSession.builder.master(master).appName(plan.name)
            conf = {
                "spark.driver.host": host,
                "spark.driver.bindAddress": host,
                "spark.ui.enabled": "false",
                "spark.executor.cores": str(cores),
                "spark.executor.memory": f"{memory}m",
                "spark.cores.max": str(cores * plan.world_size),
                **_port_conf(host),
                **self._plan_opt("spark_conf", {}),
            }
            for k, v in conf.items():
                builder = builder.config(k, v)
            session: Any = builder.getOrCreate()
            with self._lock:
                if not self._stopping:
                    self._session, session = session, None
            if session is not None:  # the gang stopped while it connected
                session.stop()
        except BaseException as e:
            self._connect_error = e

    def ready(self, results: list[Any]) -> None:
        plan = self._plan
        assert plan is not None and self._connect is not None
        self._connect.join(plan.timeout_s)
        if self._connect_error is not None:
            raise self._connect_error
        if self._session is None:
            raise GangSetupError(f"gang {plan.name}: no SparkSession within {plan.timeout_s:g}s")
        # Ready means every member's executor is registered, so the first job uses them all.
        tracker = self._session.sparkContext._jsc.sc()
        deadline = time.monotonic() + plan.timeout_s
        while tracker.getExecutorMemoryStatus().size() < plan.world_size + 1:
            if time.monotonic() > deadline:
                raise GangSetupError(
                    f"gang {plan.name}: {tracker.getExecutorMemoryStatus().size() - 1} of "
                    f"{plan.world_size} Spark executors registered within {plan.timeout_s:g}s"
                )
            time.sleep(0.05)

    def client(self) -> Any:
        return self._session

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            session, self._session = self._session, None
        if session is not None:
            session.stop()
        self._stop_gateway()

    def _stop_gateway(self) -> None:
        """End the driver's JVM too (pyspark would keep it for the next session)."""
        if self._gateway is not None:
            self._gateway.join(5.0)
        try:
            from pyspark import SparkContext
        except ImportError:
            return
        if self._connect is not None and self._connect.is_alive():
            # A session still connecting holds SparkContext._lock: end its JVM under it first.
            proc = getattr(SparkContext._gateway, "proc", None)
            if proc is not None:
                proc.kill()
            self._connect.join(5.0)
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
            threading.Thread(target=_reap, args=(proc,), daemon=True).start()

    def release(self) -> None:
        self.stop()
        remove_stale_workdirs()  # of members killed before their teardown, on this node

    # --- member side ---------------------------------------------------------------------------
    def _member_env(self, ctx: GangContext, options: dict[str, Any]) -> tuple[str, dict[str, str]]:
        host = ctx.master_addr if ctx.master_addr == "127.0.0.1" else _node_ip()
        self._workdir = make_workdir(ctx.gang_name, ctx.rank)
        env = {
            **os.environ,
            **_DAEMON_ENV,
            "SPARK_HOME": options["spark_home"],
            "SPARK_LOCAL_IP": host,
            "SPARK_LOG_DIR": self._workdir,
            "SPARK_CONF_DIR": self._workdir,  # no stray spark-defaults.conf from the machine
        }
        if "daemon_memory" in options:
            env["SPARK_DAEMON_MEMORY"] = options["daemon_memory"]
        return host, env

    def _argv(self, main_class: str, options: dict[str, Any], env: dict[str, str]) -> list[str]:
        """The daemon's command line; ``env`` gets what Spark's env script would have set."""
        spark_class = os.path.join(options["spark_home"], "bin", "spark-class")
        command = options.get("commands", {}).get(main_class)
        assert self._workdir is not None
        argv, extra = member_command(command, self._workdir, spark_class, main_class)
        env.update(extra)
        return argv

    def lead(
        self, ctx: GangContext, master_socket: socket.socket | None, options: dict[str, Any]
    ) -> dict[str, Any]:
        """Rank 0: the master on MASTER_PORT; its own worker starts once the master listens."""
        timeout = float(options.get("timeout_s", 120))
        host, env = self._member_env(ctx, options)
        if master_socket is not None:
            master_socket.close()  # the master binds MASTER_PORT itself, right now
        master = self._start(
            "spark-master",
            self._argv(_MASTER_CLASS, options, env)
            + [
                "--host",
                ctx.master_addr,
                "--port",
                str(ctx.master_port),
                "--webui-port",
                str(pick_port(host)),
            ],
            env,
        )
        _wait_listening(ctx.master_addr, ctx.master_port, timeout, master)
        self._start_worker(ctx, host, env, options)
        master.wait_for(_MASTER_READY, timeout)
        return {"master": _master_url(ctx)}

    def setup(
        self, ctx: GangContext, master_socket: socket.socket | None, options: dict[str, Any]
    ) -> dict[str, Any]:
        timeout = float(options.get("timeout_s", 120))
        if ctx.rank != 0 or not self._jvms:  # rank 0's worker started in lead()
            if master_socket is not None:
                master_socket.close()
            host, env = self._member_env(ctx, options)
            # A worker that registers before the master listens backs off 5-15 s.
            _wait_listening(ctx.master_addr, ctx.master_port, timeout)
            self._start_worker(ctx, host, env, options)
        self._jvms[-1].wait_for(_WORKER_READY, timeout)
        return {"master": _master_url(ctx), "jvm_pids": [j.pid for j in self._jvms]}

    def _start_worker(
        self, ctx: GangContext, host: str, env: dict[str, str], options: dict[str, Any]
    ) -> JVM:
        return self._start(
            "spark-worker",
            self._argv(_WORKER_CLASS, options, env)
            + [
                _master_url(ctx),
                "--host",
                host,
                "--port",
                str(pick_port(host)),
                "--webui-port",
                str(pick_port(host)),
                "--cores",
                str(options["cores"]),
                "--memory",
                f"{options['memory_mb']}m",
                "--work-dir",
                str(self._workdir),
            ],
            env,
        )

    def _start(self, label: str, argv: list[str], env: dict[str, str]) -> JVM:
        jvm = JVM(label, argv, env)
        self._jvms.append(jvm)
        return jvm

    def watch(self, ctx: GangContext, stopped: threading.Event) -> str | None:
        if not self._jvms:
            return super().watch(ctx, stopped)
        # Each JVM's reader thread sets its event at exit; wait for the first (or teardown).
        any_ended = threading.Event()

        def relay(ev: threading.Event) -> None:
            ev.wait()
            any_ended.set()

        for jvm in self._jvms:
            threading.Thread(target=relay, args=(jvm.ended,), daemon=True).start()
        threading.Thread(target=relay, args=(stopped,), daemon=True).start()
        any_ended.wait()
        for jvm in self._jvms:
            if jvm.ended.is_set() and not stopped.is_set():
                return f"the {jvm.label} JVM (pid {jvm.pid}) exited ({jvm.returncode}){jvm.tail(6)}"
        return None

    def teardown(self, ctx: GangContext) -> None:
        for jvm in self._jvms:  # all at once: each worker stops its own executor
            jvm.terminate()
        for jvm in self._jvms:
            jvm.stop()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)


def _reap(proc: Any, grace_s: float = 5.0) -> None:
    try:
        proc.wait(grace_s)
    except Exception:
        proc.kill()
        proc.wait()


def _master_url(ctx: GangContext) -> str:
    return f"spark://{ctx.master_addr}:{ctx.master_port}"


def _wait_listening(host: str, port: int, timeout_s: float, jvm: JVM | None = None) -> None:
    """Until the master accepts connections (a worker that registers too early backs off for
    5-15 s, Spark's retry interval); ``jvm``: the master itself, whose exit ends the wait."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if jvm is not None and jvm.ended.is_set():
                raise RuntimeError(f"{jvm.label} exited ({jvm.returncode}) {jvm.tail()}") from None
            if time.monotonic() > deadline:
                raise GangSetupError(
                    f"the Spark master {host}:{port} did not listen in time"
                ) from None
            time.sleep(0.02)


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def session(gang: Any) -> Any:
    """The gang's ``SparkSession`` (raises the gang's failure if it failed)."""
    return gang.client
