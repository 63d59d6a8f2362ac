"""prestart: idle Ray workers started ahead of time become the next gang's members."""

from __future__ import annotations

import socket

import psutil
import pytest

from sideband.errors import GangSetupError, InvalidArgumentError
from sideband.gang import Gang, prestart

ZERO = {"CPU": 0}


def _idle_worker_pids() -> set[int]:
    """Ray's idle workers as the OS sees them: processes titled ray::IDLE."""
    pids = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].startswith("ray::IDLE"):
            pids.add(p.info["pid"])
    return pids


def test_prestarted_workers_become_the_next_gangs_members(ray_session: None) -> None:
    have = prestart(2)
    assert have >= 2
    idle = _idle_worker_pids()
    assert len(idle) >= 2
    with Gang(2, resources_per_worker=ZERO) as gang:
        pids = {m["pid"] for m in gang.members}
    # The members run in processes that were idle before the gang existed: no worker start.
    assert pids <= idle
    assert prestart(0) >= 0  # nothing asked: returns what is there at once


def test_prestart_that_cannot_finish_in_time_names_the_count(ray_session: None) -> None:
    with pytest.raises(GangSetupError, match=r"of 64 new idle Ray workers after 0.05s"):
        prestart(64, keep_alive_s=0, timeout_s=0.05)


def test_a_raylet_that_refuses_is_a_gang_setup_error(
    ray_session: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import grpc
    import ray._private.grpc_utils as grpc_utils

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: every connect is refused
        port = s.getsockname()[1]
        monkeypatch.setattr(
            grpc_utils,
            "init_grpc_channel",
            lambda _addr: grpc.insecure_channel(f"127.0.0.1:{port}"),
        )
        with pytest.raises(GangSetupError, match="raylet refused.*Form the gang without prestart"):
            prestart(1, timeout_s=5)


def test_bad_arguments_are_refused() -> None:
    for kw in ({"num_workers": -1}, {"num_workers": 1, "timeout_s": 0}):
        with pytest.raises(InvalidArgumentError, match="prestart needs"):
            prestart(**kw)  # type: ignore[arg-type]
