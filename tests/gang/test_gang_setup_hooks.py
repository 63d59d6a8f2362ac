"""The setup hooks that let a gang form in parallel: warm_up (driver, before placement), lead
(rank 0 first, its result to the driver at once), preload (imports from member start); and the
Spark daemons' java command computed once on the driver."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import gang_helpers
import pytest
from gang_helpers import ZERO, ship_by_value

from sideband.errors import GangError
from sideband.gang import Gang, Setup

ship_by_value(__name__)
ship_by_value(gang_helpers.__name__)

_EVENTS: list[str] = []  # driver side only: what ran, in order


class _Leading(Setup):
    name = "test-leading"
    preload = ("json", "sideband_no_such_module")  # a missing one is skipped, not fatal

    def warm_up(self, options: dict[str, Any]) -> None:
        _EVENTS.append("warm_up")

    def prepare(self, plan: Any) -> dict[str, Any]:
        _EVENTS.append("prepare")
        self._led = threading.Event()
        return {}

    def led(self, result: Any) -> None:
        _EVENTS.append(f"led:{result}")
        self._led.set()

    def ready(self, results: list[Any]) -> None:
        assert self._led.is_set()
        _EVENTS.append(f"ready:{results}")

    def lead(self, ctx: Any, master_socket: Any, options: dict[str, Any]) -> str:
        assert ctx.rank == 0 and master_socket is not None
        master_socket.close()
        self.token = f"lead-pid{os.getpid()}"
        return "up"

    def setup(self, ctx: Any, master_socket: Any, options: dict[str, Any]) -> Any:
        assert master_socket is None  # rank 0's went to lead
        # Rank 0's setup runs after its lead, on the same Setup instance.
        return getattr(self, "token", None) if ctx.rank == 0 else ctx.rank


class _LeadFails(Setup):
    name = "test-lead-fails"

    def lead(self, ctx: Any, master_socket: Any, options: dict[str, Any]) -> None:
        raise RuntimeError("the server did not start")


def test_lead_runs_first_and_reaches_the_driver_before_ready(ray_session: None) -> None:
    _EVENTS.clear()
    with Gang(3, resources_per_worker=ZERO, setup=_Leading) as gang:
        assert gang.run(lambda: "json" in sys.modules) == [True, True, True]
        pid0 = gang.members[0]["pid"]
    assert _EVENTS[:3] == ["warm_up", "prepare", "led:up"]
    assert _EVENTS[3] == f"ready:{['lead-pid' + str(pid0), 1, 2]}"


def test_a_lead_that_raises_fails_the_formation_naming_rank_0(ray_session: None) -> None:
    with pytest.raises(GangError, match="lead raised on rank 0.*the server did not start"):
        Gang(2, resources_per_worker=ZERO, setup=_LeadFails, timeout_s=60)


def test_spark_command_is_computed_once_and_falls_back() -> None:
    pyspark = pytest.importorskip("pyspark")
    from sideband.gang import jvm

    home = os.path.dirname(pyspark.__file__)
    env = {"SPARK_DAEMON_MEMORY": "512m"}
    worker = jvm.spark_command(home, "org.apache.spark.deploy.worker.Worker", env)
    if worker is None:
        pytest.skip("Spark's launcher does not run here (no Java)")
    argv, extra = worker
    assert argv[-1] == "org.apache.spark.deploy.worker.Worker" and "-Xmx512m" in argv
    assert any(jvm.CONF_DIR_MARK in a for a in argv)
    assert extra.get("SPARK_SCALA_VERSION")  # executors the worker starts need Spark's env
    master = jvm.spark_command(home, "org.apache.spark.deploy.master.Master", env)
    assert master is not None and master[0][:-1] == argv[:-1]  # one launch for both
    mine, _ = jvm.member_command(worker, "/tmp/conf-r1", "spark-class", "W")
    assert any("/tmp/conf-r1" in a for a in mine) and not any(jvm.CONF_DIR_MARK in a for a in mine)
    missing = (["/nonexistent/bin/java", *argv[1:]], extra)
    assert jvm.member_command(missing, "/c", "/h/bin/spark-class", "W") == (
        ["/h/bin/spark-class", "W"],
        {},
    )
