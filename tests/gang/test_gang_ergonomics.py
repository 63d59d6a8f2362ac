"""What Ray Train users expect of a gang: its words, actor options, names, progress, clear MPI
errors, and SIDEBAND_PORT_RANGE for the torch store."""

from __future__ import annotations

import io
import os
import socket
from types import SimpleNamespace

import gang_helpers
import pytest
from gang_helpers import ZERO, ship_by_value

from sideband.errors import GangSetupError, InvalidArgumentError
from sideband.gang import Gang, context
from sideband.gang.options import normalise

ship_by_value(__name__)
ship_by_value(gang_helpers.__name__)


def test_ray_train_words() -> None:
    sc = SimpleNamespace(
        num_workers=3, use_gpu=True, resources_per_worker=None, placement_strategy="SPREAD"
    )
    o = normalise(sc, None, None, None)
    assert (o.num_workers, o.strategy, o.bundle) == (3, "SPREAD", {"CPU": 1.0, "GPU": 1.0})
    o = normalise(None, {"CPU": 2}, None, None, scaling_config=sc)
    assert o.bundle == {"CPU": 2.0, "GPU": 1.0}
    assert (
        normalise(2, None, None, None, placement_strategy="STRICT_PACK").strategy == "STRICT_PACK"
    )
    with pytest.raises(InvalidArgumentError, match="given twice"):
        normalise(2, None, "PACK", None, placement_strategy="SPREAD")
    with pytest.raises(InvalidArgumentError, match="GPU: 0"):
        normalise(2, {"GPU": 0}, None, None, use_gpu=True)
    with pytest.raises(InvalidArgumentError, match="decided by the gang"):
        normalise(2, None, None, None, actor_options={"num_cpus": 3})
    o = normalise(2, None, None, {"A": 1}, actor_options={"runtime_env": {"env_vars": {"B": "2"}}})
    assert o.actor_options["runtime_env"]["env_vars"] == {"B": "2", "A": "1"}


def test_actor_options_names_and_progress(ray_session: None) -> None:
    import ray

    out = io.StringIO()
    out.isatty = lambda: True  # type: ignore[method-assign]
    with Gang(
        2,
        resources_per_worker=ZERO,
        name="test-ergo",
        actor_options={"max_concurrency": 2, "runtime_env": {"env_vars": {"ERGO": "yes"}}},
        progress=True,
    ) as gang:
        assert gang.run(lambda: (os.environ["ERGO"], context().rank)) == [("yes", 0), ("yes", 1)]
        assert [m["name"] for m in gang.members] == ["test-ergo-rank0", "test-ergo-rank1"]
        # Named in Ray (the dashboard's Name column) and in its log prefixes (the repr).
        handle = ray.get_actor("test-ergo-rank1")
        assert ray.get(handle.info.remote())["pid"] == gang.members[1]["pid"]
        assert set(gang.formation_times) >= {"start 2 members", "env setup"}


def test_progress_lines_on_a_terminal(ray_session: None, capsys: pytest.CaptureFixture) -> None:
    import sys

    from sideband.gang.progress import Progress

    tty = io.StringIO()
    tty.isatty = lambda: True  # type: ignore[method-assign]
    p = Progress("g", None, tty)
    with p.step("placement"):
        pass
    assert tty.getvalue().startswith("gang g: placement ...") and tty.getvalue().endswith(" s\n")
    quiet = Progress("g", None, io.StringIO())
    assert not quiet.show
    assert Progress("g", None, sys.stderr).show == sys.stderr.isatty()


def test_open_mpi_is_refused_clearly() -> None:
    from sideband.gang.mpi import check_library

    check_library("MPICH Version:      4.2.0\nMPICH Release date: ...", 0)
    with pytest.raises(GangSetupError, match="PMIx") as info:
        check_library("Open MPI v5.0.3, package: Open MPI ...", 1)
    assert "rank 1" in str(info.value) and "sideband[mpi]" in str(info.value)


def _store_port() -> int:
    import torch.distributed as dist

    t = __import__("torch").ones(1)
    dist.all_reduce(t)
    return context().master_port


def test_torch_store_honours_port_range(ray_session: None) -> None:
    pytest.importorskip("torch")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        lo = probe.getsockname()[1]
    rng = f"{lo}-{lo + 40}"
    with Gang(
        2, resources_per_worker=ZERO, setup="torch", env={"SIDEBAND_PORT_RANGE": rng}
    ) as gang:
        ports = gang.run(_store_port)
    assert ports[0] == ports[1] and lo <= ports[0] <= lo + 40
