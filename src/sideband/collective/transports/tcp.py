"""TCP transport between ranks that cannot share memory.

One connection per pair, opened by the higher rank. Before any payload is read, the connector
proves group membership with an HMAC over a fresh challenge (the per-group secret travels through
Ray, never over this socket), and the acceptor proves it back. A reader thread per connection
drains the socket into memory, so a peer's send never blocks on this rank's progress, and it
handles abort frames out of band. The frame format is comm's: the channel is handed a
:class:`~sideband.collective.transports.base.FrameCodec`.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable

import numpy as np

from sideband._net import bind_in_range, watch_link
from sideband.collective.transports.base import Channel, FrameCodec

log = logging.getLogger("sideband.tcp")

_HELLO = struct.Struct("<16sI16s")  # session id digest, rank, connector nonce
_SLICE_S = 0.2
_READ_CHUNK = 1 << 20
_GIL_FREE_COPY = 64 << 10


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("peer closed the connection during the handshake")
        got += k
    return bytes(buf)


def _session_digest(session: str) -> bytes:
    return hashlib.sha256(session.encode()).digest()[:16]


def _mac(secret: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, b"|".join(parts), hashlib.sha256).digest()


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

    def accept_peers(
        self,
        session: str,
        secret: bytes,
        expected: set[int],
        deadline: float,
        check: Callable[[], None],
    ) -> dict[int, socket.socket]:
        """Accept one authenticated connection from each rank in ``expected``."""
        out: dict[int, socket.socket] = {}
        digest = _session_digest(session)
        while len(out) < len(expected):
            check()
            if time.monotonic() > deadline:
                missing = sorted(expected - set(out))
                raise TimeoutError(f"ranks {missing} did not connect")
            self.sock.settimeout(_SLICE_S)
            try:
                conn, addr = self.sock.accept()
            except TimeoutError:
                continue
            try:
                hello = _recv_exact(conn, _HELLO.size, min(deadline, time.monotonic() + 5))
                sess, rank, nonce_c = _HELLO.unpack(hello)
                if sess != digest or rank not in expected or rank in out:
                    raise PermissionError(f"unexpected hello (rank {rank})")
                nonce_a = os.urandom(16)
                conn.sendall(nonce_a)
                proof = _recv_exact(conn, 32, min(deadline, time.monotonic() + 5))
                want = _mac(secret, b"connect", digest, str(rank).encode(), nonce_a, nonce_c)
                if not hmac.compare_digest(proof, want):
                    raise PermissionError("bad membership proof")
                conn.sendall(_mac(secret, b"accept", digest, nonce_c, nonce_a))
            except (OSError, PermissionError, struct.error) as e:
                log.warning(
                    "sideband: rejected a connection from %s to group listener: %s", addr, e
                )
                conn.close()
                continue
            out[rank] = conn
        return out

    def close(self) -> None:
        self.sock.close()


def connect_peer(
    host: str, port: int, session: str, secret: bytes, my_rank: int, deadline: float
) -> socket.socket:
    """Connect to a lower rank's listener and run the mutual membership proof (one attempt:
    OSError if nothing listens yet)."""
    digest = _session_digest(session)
    sock = socket.create_connection((host, port), timeout=max(0.05, deadline - time.monotonic()))
    try:
        nonce_c = os.urandom(16)
        sock.sendall(_HELLO.pack(digest, my_rank, nonce_c))
        nonce_a = _recv_exact(sock, 16, deadline)
        sock.sendall(_mac(secret, b"connect", digest, str(my_rank).encode(), nonce_a, nonce_c))
        proof = _recv_exact(sock, 32, deadline)
        if not hmac.compare_digest(proof, _mac(secret, b"accept", digest, nonce_c, nonce_a)):
            raise PermissionError("the listener failed to prove group membership")
    except BaseException:
        sock.close()
        raise
    return sock


class TcpChannel(Channel):
    """Byte streams to a peer over one authenticated socket."""

    kind = "tcp"

    def __init__(
        self,
        peer: int,
        sock: socket.socket,
        codec: FrameCodec,
        on_data: Callable[[], None],
        on_abort: Callable[[str], None],
    ) -> None:
        super().__init__(peer)
        self.sock = sock
        self._codec = codec
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        watch_link(sock)
        sock.settimeout(_SLICE_S)
        self._on_data = on_data
        self._on_abort = on_abort
        self._chunks: collections.deque[memoryview] = collections.deque()
        self._lost: str | None = None
        self._closing = False
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(
            target=self._read_loop, name=f"sideband-tcp-{peer}", daemon=True
        )
        self._reader.start()

    # -- reader thread -------------------------------------------------------------------------
    def _recv_some(self, view: memoryview) -> int:
        while not self._closing:
            try:
                n = self.sock.recv_into(view)
            except TimeoutError:
                continue
            if n == 0:
                raise ConnectionError("connection closed by peer")
            return n
        raise ConnectionError("channel closed")

    def _read_exact(self, n: int) -> memoryview:
        # np.empty, not bytearray: no zero-filling of memory the socket overwrites anyway, and
        # malloc hands freed chunks back instead of fresh pages.
        buf = np.empty(n, np.uint8).data
        got = 0
        while got < n:
            got += self._recv_some(buf[got:])
        return buf

    def _read_loop(self) -> None:
        try:
            codec = self._codec
            while not self._closing:
                hdr = self._read_exact(codec.header_size)
                nbytes = codec.payload_size(hdr)
                if codec.is_abort(hdr):
                    self._on_abort(codec.abort_reason(bytes(self._read_exact(nbytes))))
                    continue
                self._chunks.append(hdr)
                self._on_data()
                left = nbytes
                while left:
                    piece = self._read_exact(min(left, _READ_CHUNK))
                    left -= len(piece)
                    self._chunks.append(piece)
                    self._on_data()
        except (OSError, ConnectionError) as e:
            if not self._closing:
                self._lost = f"connection to rank {self.peer} lost ({e})"
                self._on_data()

    # -- Channel -------------------------------------------------------------------------------
    def write(self, parts: list[memoryview], check: Callable[[], None]) -> int:
        total = 0
        with self._send_lock:
            for data in parts:
                sent, size = 0, len(data)
                while sent < size:
                    check()
                    if self._lost:
                        raise ConnectionError(self._lost)
                    try:
                        sent += self.sock.send(data[sent:])
                    except TimeoutError:
                        continue
                    except OSError as e:
                        self._lost = f"connection to rank {self.peer} lost ({e})"
                        raise ConnectionError(self._lost) from e
                total += size
        return total

    def read_into(self, out: memoryview) -> int:
        got = 0
        want = len(out)
        chunks = self._chunks
        while got < want and chunks:
            c = chunks[0]
            n = min(len(c), want - got)
            if n >= _GIL_FREE_COPY:
                # numpy copies without the GIL: the reader thread keeps draining the socket.
                np.copyto(
                    np.frombuffer(out[got : got + n], np.uint8), np.frombuffer(c[:n], np.uint8)
                )
            else:
                out[got : got + n] = c[:n]
            got += n
            if n == len(c):
                chunks.popleft()
            else:
                chunks[0] = c[n:]
        return got

    def abort(self, reason: str) -> None:
        frame = self._codec.abort_frame(reason)
        try:
            with self._send_lock:
                self.sock.settimeout(0.5)
                self.sock.sendall(frame)
                self.sock.settimeout(_SLICE_S)
        except OSError:
            pass

    def lost(self) -> str | None:
        return self._lost

    def close(self) -> None:
        self._closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._reader.join(timeout=2)
        self.sock.close()
