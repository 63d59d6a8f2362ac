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
Master, workers and executors start from a class-data-sharing archive that the first gang on the
machine records and builds (``sideband.gang.cds``; ``setup_options={"cds": False}`` turns it off).
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
from sideband.gang import cds
from sideband.gang.contract import GangContext
from sideband.gang.jvm import (
    CONF_DIR_MARK,
    JVM,
    Command,
    make_workdir,
    member_command,
    port_conf,
    remove_stale_workdirs,
    spark_command,
    start_options,
    stop_gateway,
    wait_listening,
)
from sideband.gang.ports import node_ip, pick_port
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
        self._archive: cds.Archive | None = None
        self._driver_cds: cds.Archive | None = None

    # --- driver side ---------------------------------------------------------------------------
    def warm_up(self, options: dict[str, Any]) -> None:
        pyspark = require("pyspark", "spark")
        spark_home = os.path.dirname(pyspark.__file__)
        # While Ray places and starts the members: the daemons' java command lines (so members
        # exec java at once instead of spark-class's launcher JVM), and the driver's JVM.
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
        self._gateway = threading.Thread(target=self._launch_gateway, args=(options,), daemon=True)
        self._gateway.start()

    def prepare(self, plan: GangPlan) -> dict[str, Any]:
        pyspark = require("pyspark", "spark")
        self._plan = plan
        cores, memory = _sizes(plan.bundle, plan.options)
        if self._launcher is not None:
            self._launcher.join(plan.timeout_s)
        worker = self._commands.get(_WORKER_CLASS)
        if worker and plan.options.get("cds", True) and set(plan.node_ips) == {node_ip()}:
            # The archive is built here, on the driver's node: only for members on this node.
            self._archive = cds.for_command(worker[0], CONF_DIR_MARK)
        return {
            "spark_home": os.path.dirname(pyspark.__file__),
            "commands": dict(self._commands),
            "cds": self._archive,
            "cores": cores,
            "memory_mb": memory,
            "timeout_s": plan.timeout_s,
        }

    def _launch_gateway(self, options: dict[str, Any]) -> None:
        try:
            from pyspark import SparkConf, SparkContext

            conf = SparkConf().set("spark.driver.memory", options.get("driver_memory", "1g"))
            opts = start_options() if options.get("jvm_tuning", True) else []
            archive = self._driver_archive(options)
            if archive is not None:
                opts += archive.options(f"driver-p{os.getpid()}-{threading.get_ident()}")
                self._driver_cds = archive
            if opts:
                conf.set("spark.driver.extraJavaOptions", " ".join(opts))
            SparkContext._ensure_initialized(conf=conf)
        except BaseException as e:
            self._gateway_error = e

    def _driver_archive(self, options: dict[str, Any]) -> cds.Archive | None:
        """The driver JVM's own archive: its classpath is the daemons' but for its conf dir."""
        if not options.get("cds", True) or self._launcher is None:
            return None
        self._launcher.join(60)  # the daemons' command, computed once per driver process
        worker = self._commands.get(_WORKER_CLASS)
        if not worker:
            return None
        home = os.environ.get("SPARK_HOME") or os.path.dirname(require("pyspark", "spark").__file__)
        conf = os.environ.get("SPARK_CONF_DIR") or os.path.join(home, "conf")
        return cds.for_command(worker[0], CONF_DIR_MARK, conf_dir=conf)

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
            host = "127.0.0.1" if plan.single_node else node_ip()
            builder = SparkSession.builder.master(master).appName(plan.name)
            conf = {
                "spark.driver.host": host,
                "spark.driver.bindAddress": host,
                "spark.ui.enabled": "false",
                "spark.executor.cores": str(cores),
                "spark.executor.memory": f"{memory}m",
                "spark.cores.max": str(cores * plan.world_size),
                **self._executor_options(plan.name, cores),
                **port_conf(host),
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

    def _executor_options(self, gang: str, cores: int) -> dict[str, str]:
        opts = start_options(cores) if self._plan_opt("jvm_tuning", True) else []
        if self._archive is not None:
            opts += self._archive.options(f"{gang}-exec{{{{EXECUTOR_ID}}}}")  # Spark fills the id
        return {"spark.executor.extraJavaOptions": " ".join(opts)} if opts else {}

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
        stop_gateway(self._connect)

    def release(self) -> None:
        self.stop()
        remove_stale_workdirs()  # of members killed before their teardown, on this node
        for archive in (self._archive, self._driver_cds):  # the first gang here recorded its
            if archive is not None:  # classes: archive them
                archive.build_in_background()

    # --- member side ---------------------------------------------------------------------------
    def _member_env(self, ctx: GangContext, options: dict[str, Any]) -> tuple[str, dict[str, str]]:
        host = ctx.master_addr if ctx.master_addr == "127.0.0.1" else node_ip()
        self._workdir = make_workdir(ctx.gang_name, ctx.rank)
        conf_dir = self._workdir
        archive: cds.Archive | None = options.get("cds")
        if archive is not None and cds.root() == archive.root:
            # One conf dir (empty) for every JVM, so they share the archived classpath.
            self._archive, conf_dir = archive, archive.conf_dir(archive.root).rstrip(os.sep)
        env = {
            **os.environ,
            **_DAEMON_ENV,
            "SPARK_HOME": options["spark_home"],
            "SPARK_LOCAL_IP": host,
            "SPARK_LOG_DIR": self._workdir,
            "SPARK_LOCAL_DIRS": self._workdir,  # the executors' scratch too: removed with it
            "SPARK_CONF_DIR": conf_dir,  # no stray spark-defaults.conf from the machine
        }
        if "daemon_memory" in options:
            env["SPARK_DAEMON_MEMORY"] = options["daemon_memory"]
        return host, env

    def _argv(
        self, main_class: str, options: dict[str, Any], env: dict[str, str], label: str
    ) -> list[str]:
        """The daemon's command line; ``env`` gets what Spark's env script would have set."""
        spark_class = os.path.join(options["spark_home"], "bin", "spark-class")
        command = options.get("commands", {}).get(main_class)
        conf_dir, jvm_options = self._workdir, []
        if self._archive is not None:
            conf_dir = self._archive.conf_dir(self._archive.root)
            jvm_options = self._archive.options(label)
        assert conf_dir is not None
        argv, extra = member_command(command, conf_dir, spark_class, main_class, jvm_options)
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
            self._argv(_MASTER_CLASS, options, env, f"{ctx.gang_name}-master")
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
        wait_listening(ctx.master_addr, ctx.master_port, timeout, master)
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
            wait_listening(ctx.master_addr, ctx.master_port, timeout)
            self._start_worker(ctx, host, env, options)
        self._jvms[-1].wait_for(_WORKER_READY, timeout)
        return {"master": _master_url(ctx), "jvm_pids": [j.pid for j in self._jvms]}

    def _start_worker(
        self, ctx: GangContext, host: str, env: dict[str, str], options: dict[str, Any]
    ) -> JVM:
        return self._start(
            "spark-worker",
            self._argv(_WORKER_CLASS, options, env, f"{ctx.gang_name}-r{ctx.rank}")
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
        # The driver already ended the application; what is left only routes messages, and all
        # the JVMs' files are in the work folder: SIGKILL (with the executors), not a graceful
        # stop that runs every JVM's shutdown hooks first.
        for jvm in self._jvms:
            jvm.kill()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)


def _master_url(ctx: GangContext) -> str:
    return f"spark://{ctx.master_addr}:{ctx.master_port}"


def session(gang: Any) -> Any:
    """The gang's ``SparkSession`` (raises the gang's failure if it failed)."""
    return gang.client
