"""20 gangs created and shut down back to back: no port collision, no leftover process.

Each gang's fn does what a library does with the env contract: rank 0 binds MASTER_PORT (a
plain bind, no SO_REUSEADDR) and the others connect to MASTER_ADDR:MASTER_PORT. The "env" setup
keeps this test fast (no torch import per process); the torch hand-over itself is covered by
test_gang_torch.py and test_gang_failure.py.
"""

from __future__ import annotations

import os
import socket

import gang_helpers
from gang_helpers import ZERO, ship_by_value, wait_pids_gone

from sideband.gang import Gang, context, list_gangs

ship_by_value(__name__)
ship_by_value(gang_helpers.__name__)


def _rendezvous_on_master_port() -> tuple[int, int, list[int]]:
    ctx = context()
    addr = (ctx.master_addr, ctx.master_port)
    if ctx.rank == 0:
        srv = socket.socket()
        srv.bind(addr)  # raises EADDRINUSE if the port were taken
        srv.listen(ctx.world_size)
        srv.settimeout(60)
        peers = []
        for _ in range(ctx.world_size - 1):
            conn, _ = srv.accept()
            with conn:
                peers.append(int(conn.recv(16).decode()))
        srv.close()
        return ctx.master_port, os.getpid(), sorted(peers)
    for _ in range(600):  # rank 0 may not have bound yet: a library's client retries too
        try:
            with socket.create_connection(addr, timeout=60) as c:
                c.sendall(str(ctx.rank).encode())
            return ctx.master_port, os.getpid(), []
        except ConnectionRefusedError:
            import time

            time.sleep(0.05)
    raise TimeoutError(f"rank {ctx.rank} could not reach {addr}")


def test_twenty_gangs_back_to_back(ray_session: None) -> None:
    pids: list[int] = []
    names: list[str] = []
    for _ in range(20):
        with Gang(2, resources_per_worker=ZERO, setup="env") as gang:
            names.append(gang.name)
            out = gang.run(_rendezvous_on_master_port)
        assert out[0][2] == [1]
        assert len({port for port, _, _ in out}) == 1
        pids += [pid for _, pid, _ in out]
    assert len(set(pids)) == 40  # every gang had fresh processes...
    assert wait_pids_gone(pids) == []  # ...and none was left behind
    assert not {g["name"] for g in list_gangs()} & set(names)
