"""Failures: dead peers, timeouts, re-forming, strangers on the listener, leaks over many cycles."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import threading
import time

import numpy as np
import pytest
import ray
from collective_helpers import Boom, Member, on_all

import sideband
from sideband.collective.transports import handshake


@pytest.fixture(scope="module")
def quad(ray_session):
    pool = [Member.remote() for _ in range(4)]
    yield pool
    for a in pool:
        ray.kill(a)


def _blocked_op(self, name, op):
    g = sideband.get_group(name)
    r = g.rank
    try:
        if op == "allreduce":
            g.allreduce(np.ones(1000))
        elif op == "broadcast":
            g.broadcast(np.ones(1000), src=g.world_size - 1)
        elif op == "send/recv":
            g.recv(np.empty(1000), src=g.world_size - 1)
        elif op == "barrier":
            g.barrier()
        return ("no error", r)
    except sideband.PeerLostError as e:
        return ("PeerLostError", time.time(), str(e))
    except sideband.SidebandError as e:
        return (type(e).__name__, time.time(), str(e))


CASES = [
    (op, backend, n)
    for op in ["allreduce", "broadcast", "send/recv", "barrier"]
    for backend in ["shm", "tcp"]
    for n in [2, 4]
]


@pytest.mark.parametrize("op,backend,n", CASES)
def test_killed_rank_gives_peer_lost_within_5s(quad, op, backend, n):
    name = f"kill-{op.replace('/', '')}-{backend}-{n}"
    members = quad[:n]
    h = sideband.create_group(members, name=name, backend=backend, timeout_s=60)
    victim = members[-1]
    survivors = members[:-1]
    refs = [a.__ray_call__.remote(_blocked_op, name, op) for a in survivors]
    time.sleep(0.3)  # survivors are now waiting for the victim inside the op
    # Alternate the two ways a process dies: Ray's kill and a SIGKILL of its pid.
    sigkill = (CASES.index((op, backend, n)) % 2) == 1
    if sigkill:
        os.kill(ray.get(victim.pid.remote()), signal.SIGKILL)
    else:
        ray.kill(victim)
    killed_at = time.time()
    results = ray.get(refs, timeout=30)
    for kind, at, msg in results:
        assert kind == "PeerLostError", msg
        assert at - killed_at < 5.0
        assert f"rank {n - 1}" in msg and victim._actor_id.hex() in msg
    # Re-form at once under the same name, with a replacement for the dead actor.
    replacement = Member.remote()
    quad[n - 1] = replacement
    h.destroy()
    h = sideband.create_group(survivors + [replacement], name=name, backend=backend)
    got = on_all(
        survivors + [replacement],
        lambda s, nm: sideband.get_group(nm).allreduce(np.ones(2)).tolist(),
        name,
    )
    assert got == [[float(n)] * 2] * n
    h.destroy()


def _maybe_join_op(self, name, join, timeout_s):
    g = sideband.get_group(name)
    if not join:
        return None
    try:
        g.allreduce(np.ones(4), timeout_s=timeout_s)
    except sideband.CollectiveTimeoutError as e:
        return str(e)
    return "no error"


@pytest.mark.parametrize("backend", ["shm", "tcp"])
def test_timeout_names_the_missing_rank(quad, backend):
    name = f"late-{backend}"
    h = sideband.create_group(quad[:3], name=name, backend=backend)
    refs = [a.__ray_call__.remote(_maybe_join_op, name, r < 2, 1.0) for r, a in enumerate(quad[:3])]
    msgs = ray.get(refs, timeout=30)
    missing = quad[2]._actor_id.hex()
    for m in msgs[:2]:
        assert "timed out" in m and "rank 2" in m and missing in m, m
    assert msgs[2] is None
    h.destroy()


# --- strangers on a listener --------------------------------------------------------------------


def test_listener_rejects_strangers_and_accepts_members(tmp_path):
    session, secret = "s" * 32, os.urandom(32)
    listener = handshake.Listener("127.0.0.1")
    result: dict = {}

    def accept() -> None:
        result["socks"] = listener.accept_peers(
            session, secret, {1}, time.monotonic() + 20, lambda: None
        )

    t = threading.Thread(target=accept)
    t.start()
    marker = tmp_path / "unpickled"
    attacks = [
        b"GET / HTTP/1.1\r\n\r\n" + os.urandom(64),  # garbage
        pickle.dumps(Boom(str(marker))),  # a payload whose unpickling would create a file
    ]
    for payload in attacks:
        with socket.create_connection(("127.0.0.1", listener.port)) as s:
            s.sendall(payload)
            s.settimeout(5)
            try:
                answer = s.recv(100)
            except ConnectionResetError:
                answer = b""
            assert answer == b"", "the listener answered a stranger instead of closing"
    # A well-formed hello with the wrong secret is refused too.
    with pytest.raises((PermissionError, ConnectionError, OSError)):
        handshake.connect_peer(
            "127.0.0.1", listener.port, session, os.urandom(32), 1, time.monotonic() + 5
        )
    # The real member gets in, and the channel works.
    sock = handshake.connect_peer(
        "127.0.0.1", listener.port, session, secret, 1, time.monotonic() + 5
    ).sock
    t.join(10)
    listener.close()
    assert set(result["socks"]) == {1}
    peer = result["socks"][1].sock
    sock.sendall(b"hello")
    assert peer.recv(5) == b"hello"
    sock.close()
    peer.close()
    assert not marker.exists()


def test_listeners_bind_to_the_node_address_not_any():
    from sideband import _net

    listener = handshake.Listener(_net.node_address())
    try:
        assert listener.sock.getsockname()[0] not in ("0.0.0.0", "::")
    finally:
        listener.close()


# --- leftovers ------------------------------------------------------------------------------------


def _cycles(self, world, rank, backend, count):
    import gc

    def snapshot():
        gc.collect()
        with open("/proc/self/statm") as f:
            rss_pages = int(f.read().split()[1])
        return (
            len(os.listdir("/proc/self/fd")),
            threading.active_count(),
            rss_pages * os.sysconf("SC_PAGE_SIZE"),
        )

    def cycle(i):
        g = sideband.init_group(world, rank, name=f"cycle-{backend}", backend=backend)
        g.allreduce(np.ones(1 << 16, np.float32))
        g.allgather_object(i)
        sideband.destroy_group(f"cycle-{backend}")

    for i in range(20):  # warm up: imports, caches, allocator pools
        cycle(i)
    before = snapshot()
    for i in range(count):
        cycle(i)
    return before, snapshot()


@pytest.mark.parametrize("backend", ["shm", "tcp"])
def test_200_cycles_leave_fds_threads_memory_flat(quad, backend):
    refs = [a.__ray_call__.remote(_cycles, 2, r, backend, 200) for r, a in enumerate(quad[:2])]
    for (fd0, th0, rss0), (fd1, th1, rss1) in ray.get(refs, timeout=240):
        assert fd1 <= fd0 + 2, (fd0, fd1)
        assert th1 <= th0 + 1, (th0, th1)
        assert rss1 - rss0 < 32 << 20, (rss0, rss1)
    assert not [f for f in os.listdir("/dev/shm") if f.startswith("sideband-")]
    assert not [g for g in sideband.list_groups() if g["name"] == f"cycle-{backend}"]


_DRIVER = """
import os, sys, numpy as np, ray, sideband
ray.init(address=sys.argv[1])
@ray.remote(num_cpus=0)
class M:
    def go(self):
        return sideband.get_group("orphaned").allreduce(np.ones(2)).tolist()
ms = [M.remote() for _ in range(2)]
sideband.create_group(ms, name="orphaned")
print(ray.get([m.go.remote() for m in ms]))
os._exit(0)  # the driver vanishes without destroying anything
"""


def test_groups_of_an_exited_driver_are_cleaned_up(ray_session, tmp_path):
    import subprocess
    import sys

    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    address = ray.get_runtime_context().gcs_address
    out = subprocess.run(
        [sys.executable, str(script), address], capture_output=True, text=True, timeout=120
    )
    assert "[[2.0, 2.0], [2.0, 2.0]]" in out.stdout, out.stderr[-2000:]
    # The driver's actors die with its job; the registry forgets the group, /dev/shm is clean.
    deadline = time.monotonic() + 30
    while any(g["name"] == "orphaned" for g in sideband.list_groups()):
        assert time.monotonic() < deadline, sideband.list_groups()
        time.sleep(0.5)
    assert not [f for f in os.listdir("/dev/shm") if f.startswith("sideband-")]
