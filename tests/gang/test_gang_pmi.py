"""The gang's PMI server against strangers, floods and runaway lines (real sockets, in-process).

Each test reproduces an attack of issue 13 point 1 and checks it now fails: no command without a
rank's token, bounded memory for an unterminated line, one thread however many connections,
nothing answered once the world aborted or the server closed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from sideband.gang.pmi import _MAX_PENDING, PMIServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server() -> Iterator[PMIServer]:
    srv = PMIServer(2, (2,), "127.0.0.1")
    yield srv
    srv.close()


def _connect(srv: PMIServer) -> socket.socket:
    host, port = srv.address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def _ask(s: socket.socket, line: str, replies: int = 1) -> list[str]:
    """Send one command, read ``replies`` reply lines ([] once the server closed us)."""
    try:
        s.sendall(line.encode() + b"\n")
    except OSError:
        return []
    out = b""
    while out.count(b"\n") < replies:
        try:
            chunk = s.recv(4096)
        except (ConnectionResetError, TimeoutError):
            return []
        if not chunk:
            return []
        out += chunk
    return out.decode().splitlines()


def _member(srv: PMIServer, rank: int) -> socket.socket:
    s = _connect(srv)
    got = _ask(s, f"cmd=initack pmiid={srv.tokens[rank]}", replies=4)
    assert got[2] == f"cmd=set rank={rank}", got
    return s


def _closed_by_server(s: socket.socket) -> bool:
    s.settimeout(10)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_member_with_token_is_served(server: PMIServer) -> None:
    a = _member(server, 1)
    assert _ask(a, "cmd=put kvsname=sideband_kvs key=card1 value=host$1#x")[0].endswith(
        "msg=success"
    )
    assert _ask(a, "cmd=get kvsname=sideband_kvs key=card1")[0].endswith("value=host$1#x")
    a.close()


@pytest.mark.parametrize(
    "first",
    [
        "cmd=put kvsname=sideband_kvs key=P0-businesscard value=evil",
        "cmd=get kvsname=sideband_kvs key=PMI_process_mapping",
        "cmd=barrier_in",
        "cmd=init pmi_version=1 pmi_subversion=1",
        "cmd=initack pmiid=0",  # a rank number is not a token
        "cmd=initack pmiid=1",
    ],
)
def test_stranger_is_refused_before_any_command(server: PMIServer, first: str) -> None:
    s = _connect(server)
    assert _ask(s, first) == []  # closed, nothing answered
    s.close()
    member = _member(server, 0)
    # The stranger's put never landed: the business card is not there.
    assert _ask(member, "cmd=get kvsname=sideband_kvs key=P0-businesscard")[0].endswith(
        "key_not_found"
    )
    member.close()


def test_stranger_cannot_release_a_barrier(server: PMIServer) -> None:
    r0, r1 = _member(server, 0), _member(server, 1)
    r0.sendall(b"cmd=barrier_in\n")
    # A stranger enters the barrier (and one reusing rank 0's spent token): both refused.
    for line in ("cmd=barrier_in", f"cmd=initack pmiid={server.tokens[0]}"):
        s = _connect(server)
        assert _ask(s, line) == []
        s.close()
    assert server.refused  # they were counted...
    r0.settimeout(0.3)
    with pytest.raises(TimeoutError):  # ...and rank 0 is still waiting for rank 1
        r0.recv(64)
    r0.settimeout(10)
    assert _ask(r1, "cmd=barrier_in") == ["cmd=barrier_out rc=0"]
    assert r0.recv(64) == b"cmd=barrier_out rc=0\n"
    r0.close()
    r1.close()


@pytest.mark.parametrize("authenticated", [False, True])
def test_unterminated_64mib_line_does_not_grow_memory(
    server: PMIServer, authenticated: bool
) -> None:
    s = _member(server, 0) if authenticated else _connect(server)
    chunk = b"x" * (1 << 20)
    before = _rss_bytes()
    sent = 0
    try:
        for _ in range(64):
            s.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server hung up on the runaway line, as it should
    assert _closed_by_server(s)
    grown = _rss_bytes() - before
    print(f"sent {sent >> 20} MiB before the server closed; RSS grew {grown / 2**20:.1f} MiB")
    assert grown < 8 << 20
    s.close()
    assert any(k.startswith("bad line") for k in server.refused)


def test_fifty_idle_connections_start_no_threads(server: PMIServer) -> None:
    threads = threading.active_count()
    idle = [_connect(server) for _ in range(50)]
    try:
        # A real member is served at once, however many strangers sit idle.
        member = _member(server, 0)
        assert threading.active_count() == threads
        closed = sum(_closed_by_server(s) for s in idle[: 50 - _MAX_PENDING])
        assert closed == 50 - _MAX_PENDING  # only the newest few are held, briefly
        assert _ask(member, "cmd=get_universe_size")[0].startswith("cmd=universe_size size=2")
        member.close()
    finally:
        for s in idle:
            s.close()


def test_aborted_world_refuses_commands(server: PMIServer) -> None:
    r0, r1 = _member(server, 0), _member(server, 1)
    r1.sendall(b"cmd=abort exitcode=3 error_msg=it went wrong\n")
    assert _closed_by_server(r1)
    assert (
        server.aborted is not None and "rank 1" in server.aborted and "exitcode=3" in server.aborted
    )
    assert _ask(r0, "cmd=get kvsname=sideband_kvs key=PMI_process_mapping") == []
    s = _connect(server)
    assert _closed_by_server(s)  # no new connection either
    for c in (r0, r1, s):
        c.close()


def test_closed_server_refuses_everything() -> None:
    srv = PMIServer(1, (1,), "127.0.0.1")
    member = _member(srv, 0)
    srv.close()
    assert _closed_by_server(member)
    host, port = srv.address.rsplit(":", 1)
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()
    member.close()


def test_stale_pending_connection_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    import sideband.gang.pmi as pmi

    monkeypatch.setattr(pmi, "_AUTH_DEADLINE_S", 0.2)
    srv = PMIServer(1, (1,), "127.0.0.1")
    try:
        s = _connect(srv)
        t0 = time.monotonic()
        assert _closed_by_server(s)
        assert time.monotonic() - t0 < 5
        s.close()
    finally:
        srv.close()


def test_pmi_server_honours_port_range(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        lo = probe.getsockname()[1]
    monkeypatch.setenv("SIDEBAND_PORT_RANGE", f"{lo}-{lo + 20}")
    srv = PMIServer(1, (1,), "127.0.0.1")
    try:
        assert lo <= int(srv.address.rsplit(":", 1)[1]) <= lo + 20
    finally:
        srv.close()
