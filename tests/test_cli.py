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
