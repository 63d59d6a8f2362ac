"""Gangs with the "dask" setup: scheduler in rank 0, workers in members, Client on the driver."""

from __future__ import annotations

import os
import signal
import time

import gang_helpers
import pytest
from gang_helpers import ZERO, load_example, ship_by_value, wait_pids_gone

from sideband.errors import GangError

pytest.importorskip("distributed")
ship_by_value(__name__)
ship_by_value(gang_helpers.__name__)


def test_dask_example(ray_session: None) -> None:
    out = load_example("gang_dask").main(num_workers=2, resources_per_worker=ZERO)
    assert out == {"total": sum(i * i for i in range(100)), "workers": ["rank0", "rank1"]}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_killed_member_fails_the_gang_not_a_silent_retry(ray_session: None) -> None:
    from distributed import KilledWorker

    from sideband.gang import Gang
    from sideband.gang import dask as gang_dask

    gang = Gang(2, resources_per_worker=ZERO, setup="dask")
    try:
        pids = [m["pid"] for m in gang.members]
        client = gang_dask.client(gang)
        assert client.submit(lambda: 1 + 1).result() == 2
        # Plain Dask would rerun the task elsewhere; the gang's world is gone with rank 1.
        by_name = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
        fut = client.submit(_die, workers=[by_name["rank1"]], pure=False)
        with pytest.raises((KilledWorker, Exception)) as info:
            fut.result(timeout=60)
        assert not isinstance(info.value, TimeoutError)
        deadline = time.monotonic() + 30
        while gang.state != "failed" and time.monotonic() < deadline:
            time.sleep(0.05)  # the watch thread fails the gang moments after the death
        assert gang.state == "failed"
        assert gang.failure is not None and gang.failure.rank == 1 and gang.failure.died
        with pytest.raises(GangError, match="rank 1"):
            gang_dask.client(gang)
        assert wait_pids_gone(pids) == []
    finally:
        gang.shutdown()


def test_dask_tls_refuses_a_plain_client(ray_session: None) -> None:
    from distributed import Client

    from sideband.gang import Gang

    with Gang(2, resources_per_worker=ZERO, setup="dask") as gang:
        address = gang.contexts[0]
        plain = f"tcp://{address.master_addr}:{address.master_port}"
        with pytest.raises((OSError, TimeoutError)):
            Client(plain, timeout=3, set_as_default=False)
