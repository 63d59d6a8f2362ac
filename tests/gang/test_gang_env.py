"""Gang basics with the "env" setup: placement, ranks, the env contract, run variants, registry."""

from __future__ import annotations

import os
import socket
import time

import gang_helpers
import pytest
from gang_helpers import ZERO, env_snapshot, ship_by_value, wait_pids_gone

import sideband
from sideband.errors import GangError, GangSetupError, InvalidArgumentError
from sideband.gang import Gang, GangContext, Setup, context, list_gangs, register_setup

ship_by_value(__name__)
ship_by_value(gang_helpers.__name__)


def _ctx_and_env() -> tuple[dict, dict[str, str], int]:
    return context().as_dict(), env_snapshot(), os.getpid()


@pytest.mark.parametrize("n", [2, 4])
def test_env_contract(ray_session: None, n: int) -> None:
    with Gang(n, resources_per_worker=ZERO, setup="env") as gang:
        out = gang.run(_ctx_and_env)
        assert len(out) == n
        ports = {env["MASTER_PORT"] for _, env, _ in out}
        assert len(ports) == 1
        for rank, (ctx, env, pid) in enumerate(out):
            assert env["RANK"] == str(rank) == str(ctx["rank"])
            assert env["WORLD_SIZE"] == str(n) == str(ctx["world_size"])
            # One node: local ranks equal ranks, node rank 0, loopback master.
            assert env["LOCAL_RANK"] == str(rank) == str(ctx["local_rank"])
            assert env["LOCAL_WORLD_SIZE"] == str(n)
            assert env["NODE_RANK"] == "0" == str(ctx["node_rank"])
            assert env["MASTER_ADDR"] == "127.0.0.1" == ctx["master_addr"]
            assert int(env["MASTER_PORT"]) == ctx["master_port"]
            assert ctx["gang_name"] == gang.name and ctx["attempt"] == 0
            assert pid == gang.members[rank]["pid"]
        assert len({pid for _, _, pid in out}) == n
        # The env setup released MASTER_PORT when fn started: the library can now bind it.
        port = int(ports.pop())
        with socket.create_server(("127.0.0.1", port)):
            pass
    assert wait_pids_gone([m["pid"] for m in gang.members]) == []


def test_master_port_held_until_library_takes_it(ray_session: None) -> None:
    with Gang(2, resources_per_worker=ZERO, setup="env") as gang:
        port = gang.contexts[0].master_port
        # Before any fn runs, rank 0 still holds the port: nobody else can take it...
        with socket.socket() as s, pytest.raises(OSError):
            s.bind(("127.0.0.1", port))
        # ...and early peers are refused (they retry) rather than accepted by the placeholder.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert gang.execute_single(1, lambda: context().master_port) == port


def test_run_async_execute_single_and_registry(ray_session: None) -> None:
    gang = Gang(2, resources_per_worker=ZERO, name="test-gang-registry")
    try:
        import ray

        assert ray.get(gang.run_async(lambda x: context().rank * x, 10)) == [0, 10]
        assert gang.execute_single(1, lambda: context().rank) == 1
        assert gang.run(lambda a, b=0: a + b + context().rank, 1, b=2) == [3, 4]
        [entry] = [g for g in list_gangs() if g["name"] == "test-gang-registry"]
        assert entry["state"] == "ready" and entry["setup"] == "env"
        assert [m["rank"] for m in entry["members"]] == [0, 1]
        assert all(m["alive"] and m["actor_id"] and m["node"] for m in entry["members"])
        assert sideband.gang.list_gangs is list_gangs
    finally:
        gang.shutdown()
    assert gang.state == "shutdown"
    assert "test-gang-registry" not in [g["name"] for g in list_gangs()]
    with pytest.raises(GangError, match="shut down"):
        gang.run(lambda: 0)
    gang.shutdown()  # idempotent


def test_lazy_top_level_name(ray_session: None) -> None:
    assert sideband.Gang is Gang


class _Marker(Setup):
    name = "test-marker"

    def prepare(self, plan):  # type: ignore[no-untyped-def]
        return {"token": f"{plan.world_size}@{plan.master_addr}"}

    def setup(self, ctx, master_socket, options):  # type: ignore[no-untyped-def]
        super().setup(ctx, master_socket, options)
        os.environ["TEST_MARKER"] = f"{options['token']}#{ctx.rank}"


def test_third_party_setup(ray_session: None) -> None:
    register_setup("test-marker", _Marker)
    with Gang(2, resources_per_worker=ZERO, setup="test-marker") as gang:
        assert gang.run(lambda: os.environ["TEST_MARKER"]) == ["2@127.0.0.1#0", "2@127.0.0.1#1"]
    with Gang(2, resources_per_worker=ZERO, setup=_Marker) as gang:
        assert gang.run(lambda: os.environ["TEST_MARKER"])[1] == "2@127.0.0.1#1"


def test_env_vars_reach_members(ray_session: None) -> None:
    with Gang(2, resources_per_worker=ZERO, env={"TEST_GANG_VAR": "x1"}) as gang:
        assert gang.run(lambda: os.environ.get("TEST_GANG_VAR")) == ["x1", "x1"]


def test_bad_arguments(ray_session: None) -> None:
    with pytest.raises(InvalidArgumentError):
        Gang(0)
    with pytest.raises(InvalidArgumentError):
        Gang(2, strategy="TIGHT")
    with pytest.raises(GangSetupError, match="unknown gang setup"):
        Gang(2, setup="nope")
    with pytest.raises(GangError, match="outside a gang member"):
        context()
    assert isinstance(GangContext(0, 1, 0, 1, 0, "a", 1).env()["RANK"], str)


def test_registry_prunes_dead_entries(ray_session: None) -> None:
    import ray

    from sideband import _kv

    @ray.remote(num_cpus=0)
    class Dummy:
        def ping(self) -> int:
            return 1

    dead, alive = Dummy.remote(), Dummy.remote()
    ray.get([dead.ping.remote(), alive.ping.remote()])
    dead_id, alive_id = dead._actor_id.hex(), alive._actor_id.hex()
    ray.kill(dead)
    try:
        from sideband.gang.registry import _actor_alive

        for _ in range(200):  # ray.kill is asynchronous: wait (bounded) until the GCS knows
            if not _actor_alive(dead_id):
                break
            time.sleep(0.05)
        assert not _actor_alive(dead_id) and _actor_alive(alive_id)

        def entry(name: str, ids: list[str]) -> dict:
            members = [{"rank": r, "actor_id": a, "node": "x"} for r, a in enumerate(ids)]
            return {"name": name, "state": "ready", "job_id": "ffffffff", "members": members}

        _kv.put("gang/test-orphan", entry("test-orphan", [dead_id, dead_id]))
        _kv.put("gang/test-degraded", entry("test-degraded", [alive_id, dead_id]))
        listed = {g["name"]: g for g in list_gangs()}
        assert "test-orphan" not in listed  # every member dead: the owner is gone
        assert _kv.get("gang/test-orphan") is None
        assert listed["test-degraded"]["state"] == "degraded"
        assert [m["alive"] for m in listed["test-degraded"]["members"]] == [True, False]
    finally:
        _kv.delete("gang/test-orphan")
        _kv.delete("gang/test-degraded")
        ray.kill(alive)


_ORPHAN_DRIVER = """
import os, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
from sideband.gang import Gang
gang = Gang(2, resources_per_worker={"CPU": 0}, name=sys.argv[2])
print("PIDS", *[m["pid"] for m in gang.members], flush=True)
os._exit(0)  # the driver dies without shutdown()
"""


def test_registry_prunes_gang_of_dead_driver(ray_session: None) -> None:
    import subprocess
    import sys

    import ray

    name = "test-orphan-driver"
    proc = subprocess.run(
        [sys.executable, "-c", _ORPHAN_DRIVER, ray.get_runtime_context().gcs_address, name],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    pids = [int(p) for p in proc.stdout.split("PIDS", 1)[1].split()]
    # The members die with their driver's job, and the entry is pruned (bounded wait: Ray
    # notices the job's end asynchronously).
    assert wait_pids_gone(pids, bound_s=30) == []
    for _ in range(300):
        if name not in [g["name"] for g in list_gangs()]:
            break
        time.sleep(0.1)
    assert name not in [g["name"] for g in list_gangs()]
