"""Gangs with the "spark" setup: JVMs inside members, a SparkSession on the driver, no JVM left.

Every JVM (master, workers, their executors) is a descendant of a member actor; the test lists
them by pid while the gang runs, then checks each pid is gone after shutdown, after a member is
killed, and after the driver process itself exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gang_helpers
import pytest
from gang_helpers import ZERO, load_example, pid_alive, ship_by_value, wait_pids_gone

pytest.importorskip("pyspark")
if not any(
    os.access(os.path.join(p, "java"), os.X_OK) for p in os.environ.get("PATH", "").split(":")
):
    pytest.skip("Spark needs a Java runtime on PATH", allow_module_level=True)
ship_by_value(__name__)
ship_by_value(gang_helpers.__name__)


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc: every thread's children, recursively)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        kids: list[int] = []
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids += [int(c) for c in f.read().split()]
        except OSError:
            continue
        out += kids
        todo += kids
    return [p for p in out if pid_alive(p)]


def _java_pids(members: list[dict]) -> list[int]:
    pids = []
    for m in members:
        for p in _descendants(m["pid"]):
            try:
                with open(f"/proc/{p}/comm") as f:
                    if f.read().strip() == "java":
                        pids.append(p)
            except OSError:
                pass
    return pids


def test_spark_example_and_no_jvm_left(ray_session: None) -> None:
    seen: dict = {}

    def probe(gang, spark) -> None:  # type: ignore[no-untyped-def]
        seen["jvms"] = _java_pids(gang.members)
        seen["driver_jvm"] = spark.sparkContext._gateway.proc.pid

    out = load_example("gang_spark").main(
        num_workers=2, resources_per_worker=ZERO, rows=100_000, probe=probe
    )
    assert out["total"] == 4999950000 and out["executors"] == 2
    # Master + 2 workers + 2 executors, all under the member actors.
    assert len(seen["jvms"]) == 5, seen
    assert wait_pids_gone(seen["jvms"] + [seen["driver_jvm"]]) == []


def test_worker_jvm_death_fails_the_gang(ray_session: None) -> None:
    from sideband.errors import GangError
    from sideband.gang import Gang

    gang = Gang(2, resources_per_worker=ZERO, setup="spark")
    try:
        members = gang.members
        jvms = _java_pids(members)
        worker_jvm = next(p for p in _descendants(members[1]["pid"]) if p in jvms)
        os.kill(worker_jvm, signal.SIGKILL)  # rank 1's worker dies; its member lives on
        deadline = time.monotonic() + 30
        while gang.state != "failed" and time.monotonic() < deadline:
            time.sleep(0.05)  # the member's watch reports it moments after the exit
        assert gang.state == "failed"
        err = gang.failure
        assert err is not None and err.rank == 1 and "spark-worker JVM" in str(err)
        with pytest.raises(GangError, match="spark-worker"):
            gang.client  # noqa: B018
        assert wait_pids_gone(jvms + [m["pid"] for m in members]) == []
    finally:
        gang.shutdown()


_DRIVER = """
import os, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
from sideband.gang import Gang
gang = Gang(2, resources_per_worker={"CPU": 0}, setup="spark")
print("MEMBERS", *[m["pid"] for m in gang.members], flush=True)
sys.stdin.readline()  # the test lists the JVMs, then lets the driver die without shutdown
os._exit(0)
"""


def test_driver_exit_leaves_no_jvm(ray_session: None) -> None:
    import ray

    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, ray.get_runtime_context().gcs_address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = ""
        assert proc.stdout is not None and proc.stdin is not None
        while not line.startswith("MEMBERS"):
            line = proc.stdout.readline()
            assert line, "the driver exited before its gang formed"
        members = [{"pid": int(p)} for p in line.split()[1:]]
        jvms = _java_pids(members)
        assert len(jvms) >= 3  # master and two workers (and executors, if already up)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(60) == 0
        assert wait_pids_gone(jvms + [m["pid"] for m in members], bound_s=60) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _maps(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return f.read()
    except OSError:
        return ""


def test_the_second_gang_starts_every_jvm_from_the_cds_archives(
    ray_session: None, tmp_path: Path
) -> None:
    """The first gang records the classes its JVMs load; its release builds the archives (in
    the background, waited for here); every JVM of the next gang maps them."""
    from sideband.gang import Gang, cds

    cache = str(tmp_path / "cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = cache  # the driver's side; env= gives the members theirs
    try:
        kwargs: dict = {"resources_per_worker": ZERO, "setup": "spark"}
        kwargs["env"] = {"XDG_CACHE_HOME": cache}
        with Gang(2, **kwargs) as gang:
            assert gang.client.range(1000).count() == 1000
        cds.wait_builds(600)
        where = os.path.join(cache, "sideband", "spark-cds")
        archives = sorted(f for f in os.listdir(where) if f.endswith(".jsa"))
        assert len(archives) == 2, os.listdir(where)  # the daemons' and executors', the driver's
        assert not [f for f in os.listdir(where) if f.endswith((".lst", ".tmp"))]
        with Gang(2, **kwargs) as gang:
            assert gang.client.range(1000).count() == 1000
            jvms = _java_pids(gang.members)
            driver = gang.client.sparkContext._gateway.proc.pid
            assert len(jvms) == 5
            for pid in jvms + [driver]:
                assert ".jsa" in _maps(pid), f"JVM {pid} does not map a CDS archive"
        assert wait_pids_gone(jvms + [driver]) == []
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old
