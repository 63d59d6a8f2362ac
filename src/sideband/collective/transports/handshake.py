"""Who may open a TCP link into a group, and the keys its frames are authenticated with.

One connection per pair, opened by the higher rank. Before any payload is read, the connector
proves group membership with an HMAC over fresh challenges (the per-group secret travels through
Ray, never over a socket), and the acceptor proves it back. Both then derive a key per direction
from the secret and both challenges, so every connection's frames are authenticated with keys no
other connection shares (transports/tcp.py).

Strangers cannot stall a forming group: handshakes run concurrently, each under a short
deadline of its own, with a cap on how many may be pending; a connection over the cap is closed
at once, and rejections are logged at most once per few seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from sideband import config
from sideband._net import bind_in_range

log = logging.getLogger("sideband.tcp")

# session id digest, rank, connector nonce, connector's frame-authentication mode
_HELLO = struct.Struct("<16sI16sI")
_REPLY = struct.Struct("<16sI")  # acceptor nonce, acceptor's mode
_SLICE_S = 0.2
#: A connection must finish its handshake within this long (a stranger costs no more).
HANDSHAKE_S = 2.0
#: Handshakes that may be pending at once; connections beyond are closed unread.
MAX_PENDING = 32
_LOG_EVERY_S = 5.0

#: Frame-authentication modes (the stricter of the two ends wins).
MAC_CONTROL = 0  # control frames, and frames whose payload gets unpickled
MAC_ALL = 1  # every frame's payload too (opt-in: costs a keyed hash over all data)


class Link(NamedTuple):
    """An authenticated connection and its frame keys."""

    sock: socket.socket
    send_key: bytes
    recv_key: bytes
    mac_all: bool


def mac_mode() -> int:
    """This process's frame-authentication mode (``SIDEBAND_TCP_MAC``: ``control`` or ``all``)."""
    return MAC_ALL if config.get("SIDEBAND_TCP_MAC") == "all" else MAC_CONTROL


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the handshake took too long")
        sock.settimeout(left)
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("peer closed the connection during the handshake")
        got += k
    return bytes(buf)


def _session_digest(session: str) -> bytes:
    return hashlib.sha256(session.encode()).digest()[:16]


def _mac(secret: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, b"|".join(parts), hashlib.sha256).digest()


def _link(
    sock: socket.socket, secret: bytes, digest: bytes, nc: bytes, na: bytes, mode: int, conn: bool
) -> Link:
    c2a = _mac(secret, b"frames c>a", digest, nc, na)
    a2c = _mac(secret, b"frames a>c", digest, nc, na)
    send, recv = (c2a, a2c) if conn else (a2c, c2a)
    return Link(sock, send, recv, mode == MAC_ALL)


class _RateLimitedLog:
    """At most one warning per few seconds, counting the ones it held back."""

    def __init__(self) -> None:
        self._next = 0.0
        self._held = 0

    def __call__(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        held, self._held, self._next = self._held, 0, now + _LOG_EVERY_S
        suffix = f" ({held} more rejected since the last report)" if held else ""
        log.warning("sideband: " + msg + suffix, *args)


class Listener:
    """A listening socket on the node's address; accepts authenticated peers of one group."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            bind_in_range(self.sock, host)
        except BaseException:
            self.sock.close()
            raise
        self.sock.listen(128)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self._reject = _RateLimitedLog()

    def accept_peers(
        self,
        session: str,
        secret: bytes,
        expected: set[int],
        deadline: float,
        check: Callable[[], None],
        mode: int | None = None,
    ) -> dict[int, Link]:
        """One authenticated link from each rank in ``expected``."""
        mode = mac_mode() if mode is None else mode
        out: dict[int, Link] = {}
        done: queue.SimpleQueue[tuple[socket.socket, int, Link | BaseException, object]]
        done = queue.SimpleQueue()
        digest = _session_digest(session)
        pending = 0

        def shake(conn: socket.socket, addr: object) -> None:
            try:
                until = min(deadline, time.monotonic() + HANDSHAKE_S)
                sess, rank, nc, their_mode = _HELLO.unpack(_recv_exact(conn, _HELLO.size, until))
                if sess != digest or rank not in expected:
                    raise PermissionError(f"unexpected hello (rank {rank})")
                na = os.urandom(16)
                agreed = max(mode, their_mode & 1)
                conn.sendall(_REPLY.pack(na, mode))
                proof = _recv_exact(conn, 32, until)
                flags = bytes([mode, their_mode & 1])
                want = _mac(secret, b"connect", digest, str(rank).encode(), na, nc, flags)
                if not hmac.compare_digest(proof, want):
                    raise PermissionError("bad membership proof")
                conn.sendall(_mac(secret, b"accept", digest, nc, na, flags))
                done.put((conn, rank, _link(conn, secret, digest, nc, na, agreed, False), addr))
            except BaseException as e:  # reported (and the socket closed) by the accept loop
                done.put((conn, -1, e, addr))

        try:
            while len(out) < len(expected):
                while not done.empty():
                    conn, rank, res, addr = done.get()
                    pending -= 1
                    if isinstance(res, BaseException) or rank in out:
                        why = res if isinstance(res, BaseException) else f"rank {rank} again"
                        self._reject(
                            "rejected a connection from %s to a group listener: %s", addr, why
                        )
                        conn.close()
                    else:
                        out[rank] = res
                if len(out) == len(expected):
                    break
                check()
                if time.monotonic() > deadline:
                    missing = sorted(expected - set(out))
                    raise TimeoutError(f"ranks {missing} did not connect")
                self.sock.settimeout(_SLICE_S if done.empty() else 0.0)
                try:
                    conn, addr = self.sock.accept()
                except (TimeoutError, BlockingIOError):
                    continue
                if pending >= MAX_PENDING:
                    self._reject(
                        "closed a connection from %s: %d handshakes already pending", addr, pending
                    )
                    conn.close()
                    continue
                pending += 1
                threading.Thread(
                    target=shake, args=(conn, addr), name="sideband-handshake", daemon=True
                ).start()
        except BaseException:
            for link in out.values():
                link.sock.close()
            raise
        return out

    def close(self) -> None:
        self.sock.close()


def connect_peer(
    host: str,
    port: int,
    session: str,
    secret: bytes,
    my_rank: int,
    deadline: float,
    mode: int | None = None,
) -> Link:
    """Connect to a lower rank's listener and run the mutual membership proof (one attempt:
    OSError if nothing listens yet, or the listener closed the connection)."""
    mode = mac_mode() if mode is None else mode
    digest = _session_digest(session)
    until = min(deadline, time.monotonic() + HANDSHAKE_S)
    sock = socket.create_connection((host, port), timeout=max(0.05, until - time.monotonic()))
    try:
        nc = os.urandom(16)
        sock.sendall(_HELLO.pack(digest, my_rank, nc, mode))
        na, their_mode = _REPLY.unpack(_recv_exact(sock, _REPLY.size, until))
        flags = bytes([their_mode & 1, mode])
        sock.sendall(_mac(secret, b"connect", digest, str(my_rank).encode(), na, nc, flags))
        proof = _recv_exact(sock, 32, until)
        if not hmac.compare_digest(proof, _mac(secret, b"accept", digest, nc, na, flags)):
            raise PermissionError("the listener failed to prove group membership")
    except BaseException:
        sock.close()
        raise
    return _link(sock, secret, digest, nc, na, max(mode, their_mode & 1), True)
