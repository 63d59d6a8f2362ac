"""A minimal PMI-1 server, the wire protocol MPICH's processes use to find each other.

``mpiexec`` (hydra) normally starts the MPI processes and serves PMI to them. Gang members are Ray
actors that already exist, so the driver serves PMI itself: each member sets ``PMI_PORT`` and
``PMI_ID`` before ``MPI_Init``, connects here, and exchanges its business card through the
key-value space.

It is reachable by anything that reaches the port, so (docs/gangs.md, "threat model"):

* every connection proves, in its first line, one rank's secret token (MPICH sends ``PMI_ID`` as
  ``cmd=initack pmiid=N``; each rank's ``PMI_ID`` is a random 31-bit token, used once). Nothing
  else is answered before that: no put, get or barrier from a stranger.
* one thread serves every connection (a selector), lines are at most ``MAX_LINE`` bytes, at most
  ``_MAX_PENDING`` unauthenticated connections are held (the oldest is dropped for a newcomer)
  and each for at most ``_AUTH_DEADLINE_S``; once every rank is in, new connections are closed.
* after ``close()`` or an ``abort`` from any rank, every command is refused (connections closed).
"""

from __future__ import annotations

import logging
import secrets
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

from sideband.gang.pmi_wire import LineBuffer, LineError, format_line, parse_line

log = logging.getLogger(__name__)

_MAX_PENDING = 8
_AUTH_DEADLINE_S = 5.0
_SEND_TIMEOUT_S = 5.0
_TOKEN_MIN = 1 << 16  # never a small number a guess would try first


def process_mapping(node_sizes: tuple[int, ...]) -> str:
    """PMI_process_mapping for ranks laid out node by node (what hydra's block mapping sends)."""
    parts: list[str] = []
    start = 0
    while start < len(node_sizes):
        end = start
        while end < len(node_sizes) and node_sizes[end] == node_sizes[start]:
            end += 1
        parts.append(f"({start},{end - start},{node_sizes[start]})")
        start = end
    return "(vector," + ",".join(parts) + ")"


def new_tokens(size: int) -> list[int]:
    """One distinct random PMI_ID per rank (MPICH reads PMI_ID as a signed 32-bit int)."""
    tokens: set[int] = set()
    while len(tokens) < size:
        tokens.add(_TOKEN_MIN + secrets.randbelow((1 << 31) - 1 - _TOKEN_MIN))
    return list(tokens)


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    since: float
    buf: LineBuffer = field(default_factory=LineBuffer)
    rank: int | None = None


class PMIServer:
    """Serves one MPI world of ``size`` processes over TCP; ``tokens[r]`` is rank r's PMI_ID."""

    def __init__(self, size: int, node_sizes: tuple[int, ...], host: str) -> None:
        from sideband.gang.ports import bind_in_range

        self.size = size
        self.tokens = new_tokens(size)
        self._rank_of = {t: r for r, t in enumerate(self.tokens)}
        self._kvs: dict[str, str] = {"PMI_process_mapping": process_mapping(node_sizes)}
        self._authed: dict[int, _Conn] = {}
        self._pending: list[_Conn] = []
        self._barrier: set[int] = set()
        self._closed = False
        self.aborted: str | None = None
        #: how many connections were refused, and why (for logs and tests).
        self.refused: dict[str, int] = {}
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        bind_in_range(self._sock, host)
        self._sock.listen(max(size, 16))
        self._sock.setblocking(False)
        self.address = f"{host}:{self._sock.getsockname()[1]}"
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._sock, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._loop, name="sideband-pmi", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving: every connection is closed, later ones are refused."""
        self._closed = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(timeout=5.0)

    # --- the one serving thread ----------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while not self._closed:
                timeout = None
                if self._pending:
                    oldest = min(c.since for c in self._pending)
                    timeout = max(0.0, oldest + _AUTH_DEADLINE_S - time.monotonic())
                for key, _ in self._sel.select(timeout):
                    if key.fileobj is self._sock:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._wake_r.recv(64)
                    else:
                        self._read(key.data)
                now = time.monotonic()
                for c in [c for c in self._pending if now - c.since >= _AUTH_DEADLINE_S]:
                    self._drop(c, "no token in time")
        finally:
            for c in list(self._pending) + list(self._authed.values()):
                self._drop(c, None)
            self._sel.close()
            self._sock.close()
            self._wake_r.close()
            self._wake_w.close()

    def _refuse(self, why: str) -> None:
        self.refused[why] = self.refused.get(why, 0) + 1
        if self.refused[why] in (1, 10, 100, 1000):  # rate-limited: a flood is not a log flood
            log.warning(
                "PMI server %s refused a connection (%s; %d so far)",
                self.address,
                why,
                self.refused[why],
            )

    def _accept(self) -> None:
        try:
            sock, _ = self._sock.accept()
        except OSError:
            return
        if self._closed or self.aborted is not None or len(self._authed) == self.size:
            sock.close()
            self._refuse("gang closed" if self._closed or self.aborted else "every rank is in")
            return
        if len(self._pending) >= _MAX_PENDING:
            self._drop(min(self._pending, key=lambda c: c.since), "too many without a token")
        sock.settimeout(_SEND_TIMEOUT_S)
        conn = _Conn(sock, time.monotonic())
        self._pending.append(conn)
        self._sel.register(sock, selectors.EVENT_READ, conn)

    def _drop(self, conn: _Conn, why: str | None) -> None:
        if why is not None:
            self._refuse(why)
        if conn in self._pending:
            self._pending.remove(conn)
        if conn.rank is not None and self._authed.get(conn.rank) is conn:
            del self._authed[conn.rank]
            self._barrier.discard(conn.rank)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(conn, None)
            return
        try:
            for line in conn.buf.feed(data):
                if not self._line(conn, parse_line(line)):
                    return
        except LineError as e:
            self._drop(conn, f"bad line: {e}")

    def _send(self, conn: _Conn, *lines: dict[str, str]) -> bool:
        try:
            conn.sock.sendall(b"".join(format_line(f) for f in lines))
            return True
        except OSError:
            self._drop(conn, None)
            return False

    def _line(self, conn: _Conn, f: dict[str, str]) -> bool:
        """Handle one command; False once the connection is gone."""
        if conn.rank is None:
            return self._authenticate(conn, f)
        if self._closed or self.aborted is not None:
            self._drop(conn, "gang closed")
            return False
        return self._command(conn, f)

    def _authenticate(self, conn: _Conn, f: dict[str, str]) -> bool:
        token = f.get("pmiid", "")
        rank = self._rank_of.get(int(token)) if f["cmd"] == "initack" and token.isdigit() else None
        if rank is None or rank in self._authed:
            self._drop(conn, "no valid token" if rank is None else "token used twice")
            return False
        self._rank_of.pop(int(token))  # a token opens one connection, once
        conn.rank = rank
        self._pending.remove(conn)
        self._authed[rank] = conn
        return self._send(
            conn,
            {"cmd": "initack"},
            {"cmd": "set", "size": str(self.size)},
            {"cmd": "set", "rank": str(rank)},
            {"cmd": "set", "debug": "0"},
        )

    def _command(self, conn: _Conn, f: dict[str, str]) -> bool:
        cmd = f["cmd"]
        simple = {
            "init": {"cmd": "response_to_init", "pmi_version": "1", "pmi_subversion": "1"},
            "get_maxes": {
                "cmd": "maxes",
                "kvsname_max": "256",
                "keylen_max": "256",
                "vallen_max": "1024",
            },
            "get_appnum": {"cmd": "appnum", "appnum": "0"},
            "get_my_kvsname": {"cmd": "my_kvsname", "kvsname": "sideband_kvs"},
            "get_universe_size": {"cmd": "universe_size", "size": str(self.size)},
            "finalize": {"cmd": "finalize_ack"},
        }
        if cmd in simple:
            return self._send(conn, {**simple[cmd], "rc": "0"})
        if cmd == "put":
            self._kvs[f.get("key", "")] = f.get("value", "")
            return self._send(conn, {"cmd": "put_result", "rc": "0", "msg": "success"})
        if cmd == "get":
            value = self._kvs.get(f.get("key", ""))
            if value is None:
                return self._send(conn, {"cmd": "get_result", "rc": "-1", "msg": "key_not_found"})
            return self._send(
                conn, {"cmd": "get_result", "rc": "0", "msg": "success", "value": value}
            )
        if cmd == "barrier_in":
            self._barrier.add(conn.rank)  # type: ignore[arg-type]
            if len(self._barrier) == self.size:
                self._barrier.clear()
                for c in list(self._authed.values()):
                    self._send(c, {"cmd": "barrier_out", "rc": "0"})
            return conn.rank in self._authed
        if cmd == "abort":
            self.aborted = f"rank {conn.rank}: " + " ".join(
                f"{k}={v}" for k, v in f.items() if k != "cmd"
            )
            log.warning("an MPI process aborted: %s", self.aborted)
            for c in list(self._authed.values()):  # refuse the rest of the world from now on
                self._drop(c, None)
            return False
        log.warning("PMI command not supported by sideband: %s", f)
        return self._send(conn, {"cmd": cmd, "rc": "-1", "msg": "unsupported"})
