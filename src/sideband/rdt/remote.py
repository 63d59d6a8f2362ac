"""Across hosts: the consumer pulls an object's bytes from its producer over TCP.

Every producing process runs one small server (started with its first exported block, bound to
the address Ray uses for the node, loopback on a one-node cluster). Each object gets a token,
``HMAC(process secret, object id)``, which travels only in Ray's metadata; a consumer proves it
holds the token with an HMAC over a fresh nonce from the server before a byte is sent. Every read
has the fetch's deadline, an abort from Ray closes the socket, and a producer that dies resets
the connection: the consumer raises within the deadline, never hangs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from sideband._net import bind_in_range, node_address, watch_link
from sideband.errors import CollectiveError, CollectiveTimeoutError, PeerLostError
from sideband.rdt import exports
from sideband.rdt.config import SETTINGS

_NONCE = 16
_REQ = struct.Struct("<H32s")  # id length, HMAC(token, nonce + id)
_REPLY = struct.Struct("<BQ")  # status (0 ok, 1 unknown id), byte count
_PIECE = 4 << 20

_lock = threading.Lock()
_server: _Server | None = None
_active: dict[str, socket.socket] = {}
_serving = 0  # connections streaming an object's bytes right now


def serving() -> int:
    return _serving


class _Server:
    def __init__(self) -> None:
        self.secret = os.urandom(32)
        host = node_address()
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        bind_in_range(self.sock, host)  # SIDEBAND_PORT_RANGE holds for this server too
        self.sock.listen(64)
        self.addr = self.sock.getsockname()
        t = threading.Thread(target=self._accept, name="sideband-rdt-server", daemon=True)
        t.start()

    def token(self, obj_id: str) -> bytes:
        return hmac.new(self.secret, obj_id.encode(), hashlib.sha256).digest()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10.0)
            watch_link(conn)
            nonce = os.urandom(_NONCE)
            conn.sendall(nonce)
            n, mac = _REQ.unpack(_recv_exact(conn, _REQ.size))
            obj_id = _recv_exact(conn, n).decode()
            want = hmac.new(self.token(obj_id), nonce + obj_id.encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(mac, want):
                return  # not a holder of the ref: say nothing, send nothing
            ex = exports.lookup(obj_id)
            if ex is None or ex.block is None:
                conn.sendall(_REPLY.pack(1, 0))
                return
            conn.sendall(_REPLY.pack(0, sum(ex.sizes)))
            conn.settimeout(None)
            _count_serving(1)
            try:
                for off, size in zip(ex.offsets, ex.sizes):
                    conn.sendall(ex.block.buf.data[off : off + size])
            finally:
                _count_serving(-1)
        except (OSError, ValueError, struct.error):
            pass
        finally:
            conn.close()


def _count_serving(d: int) -> None:
    global _serving
    with _lock:
        _serving += d


_nodes_checked = 0.0
_multi_node = False


def _needed() -> bool:
    """Whether a consumer elsewhere could pull: a multi-node cluster, or ``serve`` is set.

    On one node the server would listen on loopback for nobody (same-host consumers map the
    block), so it is not started. Node counts are looked up at most every 10 s.
    """
    global _nodes_checked, _multi_node
    if SETTINGS.serve:
        return True
    now = time.monotonic()
    if now - _nodes_checked > 10.0:
        import ray

        try:
            alive = [n for n in ray.nodes() if n.get("Alive")] if ray.is_initialized() else []
        except Exception:
            alive = []
        _multi_node = len(alive) > 1
        _nodes_checked = now
    return _multi_node


def advertise(obj_id: str) -> tuple[str, int, bytes] | None:
    """(address, port, token) with which a consumer on another host pulls ``obj_id``."""
    global _server
    if _server is None and not _needed():
        return None
    with _lock:
        if _server is None:
            _server = _Server()
        srv = _server
    return srv.addr[0], srv.addr[1], srv.token(obj_id)


def abort(obj_id: str) -> None:
    with _lock:
        sock = _active.get(obj_id)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionResetError("connection closed")
        got += k
    return bytes(buf)


def pull(
    obj_id: str,
    meta: Any,
    parts: list[tuple[int, np.ndarray]],
    check: Callable[[], None],
    timeout_s: float,
) -> None:
    """Fill each uint8 array of ``parts`` with its piece of ``obj_id`` from the producer."""
    if meta.tcp is None:
        raise PeerLostError(
            f"{meta.who} is on another host (or same_host=False here) but serves no TCP: it runs "
            "on a one-node cluster; set SIDEBAND_RDT_SERVE=1 in the producer to serve anyway"
        )
    host, port, token = meta.tcp
    deadline = time.monotonic() + timeout_s
    where = f"{meta.who} at {host}:{port}"

    def left() -> float:
        rest = deadline - time.monotonic()
        if rest <= 0:
            raise CollectiveTimeoutError(
                f"fetching object {obj_id} from {where} took more than {timeout_s:g} s; "
                "raise sideband.rdt.configure(timeout_s=...) if the link is that slow"
            )
        return min(rest, 1.0)

    try:
        sock = socket.create_connection((host, port), timeout=left())
    except OSError as e:
        raise PeerLostError(f"cannot reach {where} to fetch object {obj_id}: {e}") from e
    with _lock:
        _active[obj_id] = sock
    try:
        watch_link(sock)
        sock.settimeout(left())
        nonce = _recv_exact(sock, _NONCE)
        ident = obj_id.encode()
        mac = hmac.new(token, nonce + ident, hashlib.sha256).digest()
        sock.sendall(_REQ.pack(len(ident), mac) + ident)
        status, total = _REPLY.unpack(_recv_exact(sock, _REPLY.size))
        if status != 0:
            raise PeerLostError(f"{where} no longer holds object {obj_id} (freed or retried)")
        if total != sum(dst.size for _, dst in parts):
            raise CollectiveError(f"{where} sent {total} bytes for object {obj_id}, not the size")
        for _off, dst in parts:
            view, got = dst.data, 0
            while got < dst.size:
                check()
                sock.settimeout(left())
                try:
                    k = sock.recv_into(view[got : got + _PIECE])
                except TimeoutError:
                    continue  # left() raises once the deadline has passed
                if k == 0:
                    raise ConnectionResetError("connection closed")
                got += k
    except CollectiveError:
        raise  # our own deadline or abort (CollectiveTimeoutError is also an OSError)
    except (ConnectionError, EOFError) as e:
        check()  # an abort closed the socket: say so rather than "lost"
        raise PeerLostError(
            f"lost {where} while fetching object {obj_id} ({e}): the producer died or its host "
            "became unreachable; produce the tensors again"
        ) from e
    except OSError as e:
        check()
        raise PeerLostError(f"fetching object {obj_id} from {where} failed: {e}") from e
    finally:
        with _lock:
            if _active.get(obj_id) is sock:
                del _active[obj_id]
        sock.close()
