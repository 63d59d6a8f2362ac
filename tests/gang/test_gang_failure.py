"""Failures: a dead member, a raising fn, restarts with a checkpoint, infeasible placements."""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

import gang_helpers
import pytest
from gang_helpers import ZERO, ship_by_value, wait_pids_gone

from sideband.errors import GangError, GangSetupError
from sideband.gang import Gang, GangMemberError, Setup, context, save_checkpoint

ship_by_value(__name__)
ship_by_value(gang_helpers.__name__)


def _rank1_dies_rank0_hangs() -> None:
    import torch
    import torch.distributed as dist

    t = torch.ones(1)
    dist.all_reduce(t)  # everyone is up and connected
    if context().rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    # Rank 0 stands for a member stuck in a collective that never notices the loss.
    time.sleep(600)


def test_member_killed_mid_run(ray_session: None) -> None:
    pytest.importorskip("torch")
    gang = Gang(2, resources_per_worker=ZERO, setup="torch")
    try:
        pids = [m["pid"] for m in gang.members]
        t0 = time.monotonic()
        with pytest.raises(GangError) as info:
            gang.run(_rank1_dies_rank0_hangs)
        elapsed = time.monotonic() - t0
        print(f"GangError {elapsed:.2f}s after the run started (rank 1 killed itself at once)")
        err = info.value
        assert err.rank == 1 and err.died
        msg = str(err)
        assert "rank 1" in msg and "died" in msg and gang.members[1]["node"] in msg
        assert gang.state == "failed"
        # Rank 0 was blocked in sleep(600): it must have been stopped, not left hanging.
        assert wait_pids_gone(pids) == []
    finally:
        gang.shutdown()


def _raise_on_rank(bad: int) -> int:
    if context().rank == bad:
        raise ValueError(f"bad input on rank {bad}")
    time.sleep(600)  # the others would wait for the failed rank forever
    return 0


def test_fn_raises_on_one_rank(ray_session: None) -> None:
    gang = Gang(3, resources_per_worker=ZERO)
    try:
        pids = [m["pid"] for m in gang.members]
        with pytest.raises(GangMemberError) as info:
            gang.run(_raise_on_rank, 2)
        err = info.value
        assert isinstance(err, GangError)
        assert err.rank == 2 and not err.died
        msg = str(err)
        assert "rank 2" in msg and "ValueError: bad input on rank 2" in msg
        assert "_raise_on_rank" in msg and "remote traceback" in msg  # the remote traceback
        assert err.node == gang.members[2]["node"]
        assert wait_pids_gone(pids) == []
    finally:
        gang.shutdown()


def test_execute_single_raise_keeps_gang(ray_session: None) -> None:
    with Gang(2, resources_per_worker=ZERO) as gang:
        with pytest.raises(GangError, match="ZeroDivisionError"):
            gang.execute_single(0, lambda: 1 / 0)
        assert gang.state == "ready"
        assert gang.run(lambda: context().rank) == [0, 1]


def _resume() -> tuple[int, object]:
    ctx = context()
    if ctx.attempt == 0:
        if ctx.rank == 0:
            save_checkpoint({"step": 5})
            raise RuntimeError("crash after step 5")
        time.sleep(600)
    return ctx.attempt, ctx.checkpoint


def test_max_restarts_resumes_from_checkpoint(ray_session: None) -> None:
    with Gang(2, resources_per_worker=ZERO, max_restarts=2) as gang:
        first_pids = [m["pid"] for m in gang.members]
        assert gang.run(_resume) == [(1, {"step": 5}), (1, {"step": 5})]
        assert not {m["pid"] for m in gang.members} & set(first_pids)
        assert wait_pids_gone(first_pids) == []


def _always_fails() -> None:
    raise RuntimeError(f"attempt {context().attempt} failed")


def test_max_restarts_exhausted(ray_session: None) -> None:
    with Gang(2, resources_per_worker=ZERO, max_restarts=1) as gang:
        with pytest.raises(GangError, match="attempt 1 failed"):
            gang.run(_always_fails)
        assert gang.state == "failed"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"resources_per_worker": {"GPU": 1}}, "GPU"),
        ({"resources_per_worker": {"CPU": 64}}, "CPU"),
        ({"resources_per_worker": {"my_accel": 1}}, "my_accel"),
        ({"resources_per_worker": {"CPU": 1}, "strategy": "STRICT_SPREAD"}, "distinct nodes"),
        ({"resources_per_worker": {"CPU": 3}, "strategy": "PACK"}, "CPU"),
    ],
)
def test_infeasible_fails_fast(ray_session: None, kwargs: dict, needle: str) -> None:
    with pytest.raises(GangSetupError, match="infeasible") as info:
        Gang(2, timeout_s=600, **kwargs)
    assert needle in str(info.value)


def test_setup_failure_names_rank(ray_session: None) -> None:
    from sideband.gang import Setup

    class Broken(Setup):
        name = "broken"

        def setup(self, ctx, master_socket, options):  # type: ignore[no-untyped-def]
            super().setup(ctx, master_socket, options)
            if ctx.rank == 1:
                raise OSError("library could not initialise")

    with pytest.raises(GangSetupError, match="rank 1") as info:
        Gang(2, resources_per_worker=ZERO, setup=Broken)
    assert "library could not initialise" in str(info.value)


class _PortTakenOnce(Setup):
    """Fails like a library whose port was taken, the first time only."""

    name = "port-taken-once"

    def setup(self, ctx, master_socket, options):  # type: ignore[no-untyped-def]
        super().setup(ctx, master_socket, options)
        marker = options["marker"]
        if ctx.rank == 0 and not os.path.exists(marker):
            open(marker, "w").close()
            raise OSError(errno.EADDRINUSE, "Address already in use")


def test_rendezvous_retried_on_addr_in_use(ray_session: None, tmp_path: Path) -> None:
    marker = str(tmp_path / "taken")
    with Gang(
        2, resources_per_worker=ZERO, setup=_PortTakenOnce, setup_options={"marker": marker}
    ) as gang:
        assert os.path.exists(marker)  # the first rendezvous failed...
        assert gang.run(lambda: context().rank) == [0, 1]  # ...and the second one formed


def test_rank_order_follows_node_then_gpu() -> None:
    from sideband.gang.placement import order_members

    def info(ip: str, node: str, gpus: list[str]) -> dict:
        return {"node_ip": ip, "node_id": node, "gpu_ids": gpus}

    infos = [
        info("10.0.0.2", "b", ["1"]),
        info("10.0.0.10", "c", ["0"]),
        info("10.0.0.2", "b", ["0"]),
        info("10.0.0.1", "a", []),
        info("10.0.0.2", "b", ["10"]),
    ]
    # Node addresses compare as addresses (10.0.0.2 < 10.0.0.10), GPU ids as numbers (1 < 10).
    assert order_members(infos) == [3, 2, 0, 4, 1]


def _live_members(gang_name: str) -> list[str]:
    from ray._private import state

    return [
        a["Name"]
        for a in state.actors().values()
        if a["Name"].startswith(f"{gang_name}-rank") and a["State"] != "DEAD"
    ]


def test_shutdown_returns_with_members_and_group_gone(ray_session: None) -> None:
    import ray

    gang = Gang(2, resources_per_worker={"CPU": 1}, name="freed-at-return")
    pids = [m["pid"] for m in gang.members]
    pg_hex = gang._res.pg.id.hex()
    assert any(k.endswith(pg_hex) for k in ray.cluster_resources())
    gang.shutdown()
    # No waiting here: when shutdown returns, the next placement finds the resources free.
    assert [p for p in pids if gang_helpers.pid_alive(p)] == []
    assert not any(k.endswith(pg_hex) for k in ray.cluster_resources())
    assert _live_members("freed-at-return") == []


def test_placement_that_never_comes_is_named(ray_session: None) -> None:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    # Feasible (the node has the CPUs) but taken: Ray would queue the gang forever.
    hog = placement_group([{"CPU": ray.available_resources()["CPU"]}])
    ray.get(hog.ready(), timeout=60)
    try:
        with pytest.raises(GangSetupError, match="placement group of 2 .* not ready after 2s"):
            Gang(2, resources_per_worker={"CPU": 1}, timeout_s=2, name="never-placed")
        assert _live_members("never-placed") == []  # the members queued on it went with it
    finally:
        remove_placement_group(hog)
