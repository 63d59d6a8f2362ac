"""Setup "spark": a Spark standalone cluster inside the gang, a SparkSession on the driver.

What RayDP does, through a gang: rank 0 runs the standalone master on MASTER_PORT, every member
runs a worker JVM sized from its bundle (cores from CPU, memory from ``memory`` or
``setup_options["worker_memory"]``), and the driver gets a ``SparkSession`` connected to it with
one executor per member (``gang.client`` or :func:`session`). The JVMs are children of the
member actors and die with them (``sideband.gang.jvm``); a worker JVM that exits on its own
fails the gang like any member. Spark binds the node address (loopback on one node) and, with
SIDEBAND_PORT_RANGE set, ports of that range (Spark counts up from a free one on a clash).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
import threading
import time
from typing import Any

from sideband.errors import GangSetupError
from sideband.gang.contract import GangContext
from sideband.gang.jvm import JVM
from sideband.gang.ports import pick_port, port_range, retries_left
from sideband.gang.setup import GangPlan, Setup, require

_DEFAULT_MEMORY_MB = 1024
_MASTER_READY = "I have been elected leader"
_WORKER_READY = "Successfully registered with master"


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
        self._gateway: threading.Thread | None = None
        self._gateway_error: BaseException | None = None

    # --- driver side ---------------------------------------------------------------------------
    def prepare(self, plan: GangPlan) -> dict[str, Any]:
        pyspark = require("pyspark", "spark")
        self._plan = plan
        cores, memory = _sizes(plan.bundle, plan.options)
        # The driver's JVM starts while the members start theirs.
        self._gateway = threading.Thread(target=self._launch_gateway, daemon=True)
        self._gateway.start()
        return {
            "spark_home": os.path.dirname(pyspark.__file__),
            "cores": cores,
            "memory_mb": memory,
            "timeout_s": plan.timeout_s,
        }

    def _launch_gateway(self) -> None:
        try:
            from pyspark import SparkConf, SparkContext

            conf = SparkConf().set("spark.driver.memory", self._plan_opt("driver_memory", "1g"))
            SparkContext._ensure_initialized(conf=conf)
        except BaseException as e:
            self._gateway_error = e

    def _plan_opt(self, key: str, default: Any) -> Any:
        return (self._plan.options if self._plan else {}).get(key, default)

    def ready(self, results: list[Any]) -> None:
        from pyspark.sql import SparkSession

        plan = self._plan
        assert plan is not None and self._gateway is not None
        self._gateway.join(plan.timeout_s)
        if self._gateway_error is not None:
            raise GangSetupError(f"the driver's Spark JVM did not start: {self._gateway_error}")
        cores, memory = _sizes(plan.bundle, plan.options)
        host = "127.0.0.1" if plan.single_node else _node_ip()
        builder = SparkSession.builder.master(results[0]["master"]).appName(plan.name)
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
        self._session = builder.getOrCreate()
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
                proc.wait(5)
            except Exception:
                proc.kill()

    def release(self) -> None:
        self.stop()

    # --- member side ---------------------------------------------------------------------------
    def setup(
        self, ctx: GangContext, master_socket: socket.socket | None, options: dict[str, Any]
    ) -> dict[str, Any]:
        spark_class = os.path.join(options["spark_home"], "bin", "spark-class")
        timeout = float(options.get("timeout_s", 120))
        host = ctx.master_addr if ctx.master_addr == "127.0.0.1" else _node_ip()
        self._workdir = tempfile.mkdtemp(prefix=f"sideband-spark-{ctx.gang_name}-r{ctx.rank}-")
        env = {
            **os.environ,
            "SPARK_HOME": options["spark_home"],
            "SPARK_LOCAL_IP": host,
            "SPARK_LOG_DIR": self._workdir,
            "SPARK_DAEMON_MEMORY": options.get("daemon_memory", "512m"),
            # Master and worker only route messages: the quick JIT tier starts them sooner.
            "SPARK_DAEMON_JAVA_OPTS": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
            "SPARK_CONF_DIR": self._workdir,  # no stray spark-defaults.conf from the machine
        }
        master = f"spark://{ctx.master_addr}:{ctx.master_port}"
        ui = str(pick_port(host))
        if ctx.rank == 0:
            if master_socket is not None:
                master_socket.close()  # the master binds MASTER_PORT itself, right now
            jvm = self._start(
                "spark-master",
                [
                    spark_class,
                    "org.apache.spark.deploy.master.Master",
                    "--host",
                    ctx.master_addr,
                    "--port",
                    str(ctx.master_port),
                    "--webui-port",
                    ui,
                ],
                env,
            )
            jvm.wait_for(_MASTER_READY, timeout)
        else:
            _wait_listening(ctx.master_addr, ctx.master_port, timeout)
        worker = self._start(
            "spark-worker",
            [
                spark_class,
                "org.apache.spark.deploy.worker.Worker",
                master,
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
                self._workdir,
            ],
            env,
        )
        worker.wait_for(_WORKER_READY, timeout)
        return {"master": master, "jvm_pids": [j.pid for j in self._jvms]}

    def _start(self, label: str, argv: list[str], env: dict[str, str]) -> JVM:
        jvm = JVM(label, argv, env)
        self._jvms.append(jvm)
        return jvm

    def watch(self, ctx: GangContext, stopped: threading.Event) -> str | None:
        if not self._jvms:
            return super().watch(ctx, stopped)
        # Each JVM's reader thread sets its event at exit; wait for the first (or teardown).
        any_ended = threading.Event()
        for jvm in self._jvms:
            threading.Thread(
                target=lambda j=jvm: (j.ended.wait(), any_ended.set()), daemon=True
            ).start()
        threading.Thread(target=lambda: (stopped.wait(), any_ended.set()), daemon=True).start()
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


def _wait_listening(host: str, port: int, timeout_s: float) -> None:
    """Until the master accepts connections (a worker that registers too early backs off for
    5-15 s, Spark's retry interval)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise GangSetupError(
                    f"the Spark master {host}:{port} did not listen in time"
                ) from None
            time.sleep(0.05)


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def session(gang: Any) -> Any:
    """The gang's ``SparkSession`` (raises the gang's failure if it failed)."""
    return gang.client
