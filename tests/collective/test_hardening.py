"""Attacks and faults on a group's links, reproduced for real (issue: no stranger, fault or runaway
peer can hang a group, exhaust its memory or run code in it).

Unit-level tests drive real TCP channels over loopback sockets; group-level tests run real groups
of actors. Memory is measured in the process (RSS), times with the monotonic clock.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time

import numpy as np
import pytest
import ray
from collective_helpers import Boom, Member, on_all

import sideband
from sideband.collective.comm.framing import CODEC, HEADER, KIND_COLL, KIND_P2P, OBJECT_DESC
from sideband.collective.transports import handshake, tcp
from sideband.collective.transports.handshake import Link


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def trio(ray_session):
    pool = [Member.remote() for _ in range(3)]
    yield pool
    for a in pool:
        ray.kill(a)


# --- a channel whose far end is a raw socket the test controls ----------------------------------


class _Raw:
    """The far end of a TcpChannel, speaking the wire format by hand (it knows the keys)."""

    def __init__(self, mac_all: bool = False) -> None:
        with socket.create_server(("127.0.0.1", 0)) as srv:
            b = socket.create_connection(srv.getsockname())
            a, _ = srv.accept()
        k1, k2 = os.urandom(32), os.urandom(32)
        self.lost_at: float | None = None
        self.sock = b
        self.send_key, self.counter = k2, 0
        self.ch = tcp.TcpChannel(
            1, Link(a, k1, k2, mac_all), CODEC, self._on_data, lambda r: None, 1 << 20
        )

    def _on_data(self) -> None:
        if self.ch.lost() and self.lost_at is None:
            self.lost_at = time.monotonic()

    def tag(self, data: bytes) -> bytes:
        t = tcp.TcpChannel._tag(self.send_key, self.counter, data)
        self.counter += 1
        return t

    def frame(self, kind: int, tag: int, payload: bytes, desc: int, tagged: bool) -> bytes:
        hdr = HEADER.pack(kind, tag, len(payload), desc)
        out = hdr + self.tag(hdr)
        return out + (payload + self.tag(payload) if tagged and payload else payload)

    def wait_lost(self, within: float = 5.0) -> str:
        t0 = time.monotonic()
        while self.ch.lost() is None and time.monotonic() - t0 < within:
            time.sleep(0.01)
        return self.ch.lost() or ""

    def close(self) -> None:
        self.ch.close()
        self.sock.close()


def test_a_frame_claiming_2_62_bytes_loses_the_link_at_once_without_allocating():
    raw = _Raw()
    try:
        before = _rss()
        t0 = time.monotonic()
        hdr = HEADER.pack(KIND_COLL, 0, 1 << 62, 2)
        raw.sock.sendall(hdr + raw.tag(hdr))
        why = raw.wait_lost()
        took, grown = time.monotonic() - t0, _rss() - before
        print(f"2**62-byte frame: link lost after {took * 1e3:.1f} ms, RSS +{grown >> 10} KiB")
        assert "limit" in why and "rank 1" in why, why
        assert took < 1.0
        assert grown < 32 << 20
    finally:
        raw.close()


def test_a_frame_of_unknown_kind_and_any_reader_failure_lose_the_link():
    raw = _Raw()
    try:
        hdr = HEADER.pack(99, 0, 0, 0)
        raw.sock.sendall(hdr + raw.tag(hdr))
        assert "unknown kind" in raw.wait_lost()
    finally:
        raw.close()
    raw = _Raw()
    try:  # a bug in the reader (here: one that divides by zero) is not silent either

        def bug(data: memoryview) -> None:
            raise ZeroDivisionError("a bug")

        raw.ch._push = bug  # type: ignore[method-assign]
        hdr = HEADER.pack(KIND_COLL, 0, 0, 2)
        raw.sock.sendall(hdr + raw.tag(hdr))
        assert "ZeroDivisionError" in raw.wait_lost()
    finally:
        raw.close()


def test_injected_replayed_or_altered_frames_are_never_believed(tmp_path):
    marker = tmp_path / "unpickled"
    evil = pickle.dumps(Boom(str(marker)))
    # An attacker without the keys injects an object frame: its tag cannot be right.
    raw = _Raw()
    try:
        hdr = HEADER.pack(KIND_P2P, 7, len(evil), OBJECT_DESC)
        raw.sock.sendall(hdr + os.urandom(16) + evil + os.urandom(16))
        assert "integrity" in raw.wait_lost()
        assert raw.ch.read_into(memoryview(bytearray(64))) == 0  # nothing reached the comm
    finally:
        raw.close()
    # A replayed (recorded, then resent) genuine frame fails: the counter moved on.
    raw = _Raw()
    try:
        frame = raw.frame(KIND_P2P, 7, b"hello", OBJECT_DESC, True)
        raw.sock.sendall(frame)
        time.sleep(0.05)
        assert raw.ch.lost() is None
        raw.sock.sendall(frame)
        assert "integrity" in raw.wait_lost()
    finally:
        raw.close()
    # An altered byte of an object payload fails (object payloads are always tagged).
    raw = _Raw()
    try:
        frame = bytearray(raw.frame(KIND_P2P, 7, evil, OBJECT_DESC, True))
        frame[HEADER.size + 16 + 3] ^= 1
        raw.sock.sendall(bytes(frame))
        assert "integrity" in raw.wait_lost()
    finally:
        raw.close()
    assert not marker.exists()


@pytest.mark.parametrize("mac_all", [False, True])
def test_array_payloads_are_tagged_only_in_the_opt_in_mode(mac_all):
    raw = _Raw(mac_all)
    try:
        payload = bytes(4096)
        frame = bytearray(raw.frame(KIND_COLL, 0, payload, 2, mac_all))
        frame[HEADER.size + 16 + 10] ^= 1  # flip a bit of the array data on the path
        raw.sock.sendall(bytes(frame))
        if mac_all:
            assert "integrity" in raw.wait_lost()
        else:
            got = bytearray(HEADER.size + len(payload))
            t0 = time.monotonic()
            n = 0
            while n < len(got) and time.monotonic() - t0 < 5:
                n += raw.ch.read_into(memoryview(got)[n:])
            assert n == len(got) and raw.ch.lost() is None
    finally:
        raw.close()


def test_the_reader_stops_at_its_bound_and_tcp_holds_the_sender():
    """A peer that sends 64 MiB nobody receives: this side holds about its bound, not 64 MiB."""
    raw = _Raw()  # bound: 1 MiB
    try:
        raw.sock.settimeout(0.5)
        before = _rss()
        payload = bytes(1 << 20)
        sent = 0
        try:
            for _ in range(64):
                raw.sock.sendall(raw.frame(KIND_COLL, 0, payload, 2, False))
                sent += 1
        except TimeoutError:
            pass
        grown = _rss() - before
        print(f"64 MiB offered to a 1 MiB-bound reader: took {sent} MiB, RSS +{grown >> 20} MiB")
        assert sent < 32, f"the receiver took {sent} MiB without anyone receiving"
        assert grown < 24 << 20
        assert raw.ch.lost() is None
    finally:
        raw.close()


# --- strangers while a group forms ---------------------------------------------------------------


def _member_joins_despite(n_strangers: int) -> float:
    session, secret = "s" * 32, os.urandom(32)
    listener = handshake.Listener("127.0.0.1")
    result: dict = {}
    t = threading.Thread(
        target=lambda: result.update(
            links=listener.accept_peers(session, secret, {1}, time.monotonic() + 30, lambda: None)
        )
    )
    t.start()
    strangers = []
    try:
        for _ in range(n_strangers):  # silent connections: they never say hello
            strangers.append(socket.create_connection(("127.0.0.1", listener.port)))
        t0 = time.monotonic()
        deadline = t0 + 20
        link = None
        while link is None:
            try:
                link = handshake.connect_peer(
                    "127.0.0.1", listener.port, session, secret, 1, deadline
                )
            except OSError:
                time.sleep(0.05)  # the listener closed us (over its cap): try again
        took = time.monotonic() - t0
        t.join(10)
        assert set(result["links"]) == {1}
        link.sock.close()
        result["links"][1].sock.close()
        return took
    finally:
        for s in strangers:
            s.close()
        listener.close()


def test_silent_strangers_cannot_stall_formation():
    # Twelve silent connections used up a 60 s formation when handshakes ran one at a time.
    few = _member_joins_despite(12)
    # More strangers than the cap: the member waits at most for theirs to expire.
    many = _member_joins_despite(handshake.MAX_PENDING + 8)
    print(f"member joined in {few:.3f} s past 12 strangers, {many:.3f} s past 40")
    assert few < handshake.HANDSHAKE_S
    assert many < 2 * handshake.HANDSHAKE_S + 2


# --- a rank that runs ahead ----------------------------------------------------------------------


def _run_ahead(self, name, role):
    g = sideband.get_group(name)
    if role == "sender":
        t0 = time.monotonic()
        try:
            for _ in range(8):
                g.send(np.ones(32 << 20, np.uint8), dst=1, timeout_s=4)
            return ("no error", 0.0)
        except sideband.CollectiveTimeoutError as e:
            return ("timeout", time.monotonic() - t0, str(e))
    # The receiver never receives: it only measures itself for a while.
    before = _rss()
    time.sleep(6)
    return ("rss", _rss() - before)


def test_a_rank_that_never_receives_is_not_flooded(trio):
    name = "flood-tcp"
    h = sideband.create_group(trio[:2], name=name, backend="tcp", timeout_s=30)
    refs = [a.__ray_call__.remote(_run_ahead, name, r) for a, r in zip(trio, ["sender", "rx"])]
    sent, grown = ray.get(refs, timeout=60)
    h.destroy()
    print(f"run-ahead sender: {sent[0]} after {sent[1]:.1f} s; receiver RSS +{grown[1] >> 20} MiB")
    assert sent[0] == "timeout"
    assert "rank 1" in sent[2] and "not receiving" in sent[2], sent[2]
    # Before: 255 of 256 MiB sent arrived in the receiver's memory.
    assert grown[1] < 64 << 20, f"receiver grew by {grown[1] >> 20} MiB"


def _stash_flood(self, name):
    g = sideband.get_group(name)
    if g.rank == 0:
        try:
            for tag in range(1, 9):
                g.send(np.ones(8 << 20, np.uint8), dst=1, tag=tag, timeout_s=5)
        except sideband.CollectiveTimeoutError:
            pass
        return None
    before = _rss()
    try:  # asks for a tag nobody sends: every other message must be stashed to reach it
        g.recv(np.empty(8, np.uint8), src=0, tag=99, timeout_s=4)
    except sideband.CollectiveTimeoutError as e:
        return (_rss() - before, str(e))
    return (_rss() - before, "no error")


@pytest.mark.parametrize("backend", ["shm", "tcp"])
def test_the_stash_of_unasked_messages_is_bounded(trio, backend):
    name = f"stash-{backend}"
    h = sideband.create_group(trio[:2], name=name, backend=backend, timeout_s=30)
    _, (grown, msg) = on_all(trio[:2], _stash_flood, name)
    h.destroy()
    print(f"{backend}: 64 MiB of unasked messages, receiver RSS +{grown >> 20} MiB")
    assert "not asked for yet" in msg, msg
    assert grown < 48 << 20, f"{grown >> 20} MiB stashed"


def _both_send_first(self, name):
    g = sideband.get_group(name)
    peer = 1 - g.rank
    for i in range(50):
        g.send(np.full(256, i, np.int64), dst=peer, tag=i)
    return [int(g.recv(np.empty(256, np.int64), src=peer, tag=i)[0]) for i in range(50)]


def test_both_ranks_sending_first_with_small_messages_still_works(trio):
    h = sideband.create_group(trio[:2], name="both-first", backend="tcp")
    out = on_all(trio[:2], _both_send_first, "both-first")
    h.destroy()
    assert out == [list(range(50))] * 2


# --- one error, every rank -----------------------------------------------------------------------


def _object_with_ref(self, name, op):
    g = sideband.get_group(name)
    bad = {"ref": ray.put(1)}
    t0 = time.monotonic()
    try:
        if op == "broadcast":
            g.broadcast_object(bad if g.rank == 0 else None, src=0)
        elif op == "allgather":
            g.allgather_object(bad if g.rank == 0 else g.rank)
        else:
            if g.rank == 0:
                g.send_object(bad, dst=1)
            else:
                g.recv_object(src=0)
        got = ("no error", 0.0, "")
    except sideband.SidebandError as e:
        got = (type(e).__name__, time.monotonic() - t0, str(e))
    # The group is still usable afterwards.
    x = np.ones(4)
    g.allreduce(x)
    return (*got, float(x[0]))


@pytest.mark.parametrize("op", ["broadcast", "allgather", "p2p"])
@pytest.mark.parametrize("backend", ["shm", "tcp"])
def test_a_local_failure_reaches_every_rank_at_once(trio, op, backend):
    name = f"local-fail-{op}-{backend}"
    h = sideband.create_group(trio[:2], name=name, backend=backend, timeout_s=30)
    r0, r1 = on_all(trio[:2], _object_with_ref, name, op, timeout=60)
    h.destroy()
    print(f"{op}/{backend}: rank 1 raised {r1[0]} after {r1[1] * 1e3:.1f} ms")
    assert r0[0] == "OutOfBandRefError", r0
    assert r1[0] == "PeerOpError", r1
    assert "rank 0" in r1[2] and "OutOfBandRefError" in r1[2], r1[2]
    assert r1[1] < 1.0  # before: rank 1 sat for the whole timeout_s
    assert r0[3] == r1[3] == 2.0


# --- where everyone is ---------------------------------------------------------------------------


def _stuck(self, name, join):
    g = sideband.get_group(name)
    if not join:
        g.barrier()  # op #0, then never the allreduce the others wait in
        time.sleep(5)
        return None
    g.barrier()
    try:
        g.allreduce(np.ones(8), timeout_s=3)
    except sideband.CollectiveTimeoutError as e:
        return str(e)
    return "no error"


@pytest.mark.parametrize("backend", ["shm", "tcp"])
def test_a_timeout_says_where_every_rank_is(trio, backend):
    from sideband import cli

    name = f"where-{backend}"
    h = sideband.create_group(trio, name=name, backend=backend, timeout_s=30)
    refs = [a.__ray_call__.remote(_stuck, name, r < 2) for r, a in enumerate(trio)]
    time.sleep(2.0)  # the two joiners are now blocked for over a second: they have reported
    blocked = [b for b in cli.status_data()["blocked"] if b["group"] == name]
    msgs = ray.get(refs, timeout=60)
    h.destroy()
    for m in msgs[:2]:
        assert "Where every rank is" in m, m
        for r in (0, 1):  # in the op, or (the first to time out) just out of it
            assert (
                f"rank {r}: in allreduce(float64[8], SUM) (op #1) for" in m
                or f"rank {r}: not in an op; its last, allreduce(float64[8], SUM) (op #1)" in m
            ), m
    if backend == "shm":  # local peers read each other's boards: exact even for idle ranks
        assert "rank 2: not in an op; its last, barrier() (op #0)" in msgs[0], msgs[0]
    else:
        assert "rank 2: no report" in msgs[0], msgs[0]
    assert {b["rank"] for b in blocked} == {0, 1}
    assert all(b["in_op"] and b["op"].startswith("allreduce") for b in blocked), blocked
