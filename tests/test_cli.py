"""The demo (the README's main job), `sideband status`, and the collective example."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import ray

import sideband
from sideband import cli, demo


def test_demo_runs_and_checks_every_op(ray_session, capsys):
    assert demo.run(num_actors=4, sizes=(8, 1 << 20), iters=2) == 0
    out = capsys.readouterr().out
    assert "WRONG" not in out
    for op in (
        "allreduce",
        "broadcast",
        "allgather",
        "scatter",
        "reduce_scatter",
        "alltoall",
        "send/recv",
        "allgather_object",
    ):
        assert op in out
    assert "Ray object store" in out


@ray.remote(num_cpus=0)
class _Member:
    def ready(self) -> bool:
        return True


def test_status_lists_live_groups(ray_session):
    actors = [_Member.remote() for _ in range(2)]
    h = sideband.create_group(actors, name="status-shown")
    try:
        text = cli.status_text()
        assert "status-shown" in text and "ready" in text
    finally:
        h.destroy()
        for a in actors:
            ray.kill(a)
    assert "status-shown" not in cli.status_text()


def test_collective_example_runs(ray_session):
    path = os.path.join(os.path.dirname(__file__), "..", "examples", "collective_allreduce.py")
    spec = importlib.util.spec_from_file_location("collective_allreduce", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main()
    assert len(results) == 4 and np.allclose(results, results[0])


def test_version_and_doctor(capsys):
    import pytest

    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sideband {sideband.__version__}"
    assert cli.main(["doctor", "--json", "--ranks", "64"]) in (0, 1)
    import json

    found = {f["check"]: f for f in json.loads(capsys.readouterr().out)}
    assert {
        "/dev/shm",
        "cross-memory attach",
        "memfd",
        "SIDEBAND_PORT_RANGE",
        "ray",
        "cores",
    } <= set(found)
    assert found["cores"]["state"] == "warn" and "64 ranks" in found["cores"]["detail"]


def test_doctor_names_a_bad_port_range(monkeypatch, capsys):
    monkeypatch.setenv("SIDEBAND_PORT_RANGE", "9-1")
    assert cli.main(["doctor"]) == 1
    assert "SIDEBAND_PORT_RANGE" in capsys.readouterr().out


def test_status_json(ray_session):
    actors = [_Member.remote() for _ in range(2)]
    h = sideband.create_group(actors, name="status-json")
    try:
        data = cli.status_data()
        assert [g["state"] for g in data["groups"] if g["name"] == "status-json"] == ["ready"]
    finally:
        h.destroy()
        for a in actors:
            ray.kill(a)


def test_bench_without_rich_names_the_extra(monkeypatch):
    import sys

    import pytest

    monkeypatch.setitem(sys.modules, "rich", None)  # as if not installed
    with pytest.raises(sideband.MissingExtraError, match=r"sideband\[bench\]"):
        cli.main(["bench", "--smoke"])
