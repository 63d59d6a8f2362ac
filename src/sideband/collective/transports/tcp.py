"""TCP transport between ranks that cannot share memory.

One authenticated connection per pair (``handshake.py``). A reader thread per connection drains
the socket into memory, so a peer's send rarely blocks on this rank's progress; but only up to a
bound (``SIDEBAND_PEER_BUFFER_BYTES``): past it the reader stops reading, TCP's own flow control
holds the sender, and the sender's op ends at its deadline naming the rank that does not receive.

Every frame's header is checked (known kind, size within that kind's limit) before anything of
its payload is read, and carries a tag: a keyed hash over a per-direction frame counter and the
header, so an injected, replayed, reordered or altered header breaks the link instead of being
believed. Control frames and frames whose payload gets unpickled have their payload tagged too,
in chunks, and the layers above see only checked bytes; ``SIDEBAND_TCP_MAC=all`` tags every
payload. Any failure of the reader (a closed socket, a bad tag, a malformed header, a bug) marks
the link lost with its reason, so waiters raise at once. The frame format is comm's: the channel
is handed a :class:`~sideband.collective.transports.base.FrameCodec`.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import itertools
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from sideband import config
from sideband._net import link_timeout_s, watch_link
from sideband.collective.transports.base import Channel, FrameCodec
from sideband.collective.transports.handshake import Link

log = logging.getLogger("sideband.tcp")

_SLICE_S = 0.2
_CHUNK = 1 << 20  # the reader's unit, and the unit of tagged payloads
_TAG = 16
_SMALL_TAG = 4096
_GIL_FREE_COPY = 64 << 10
_IOV_MAX = 512
_STALL_S = 0.005  # the longest a write waits for room before its op consumes what arrived
_TCPI_UNACKED = 24  # offset of tcpi_unacked in Linux's struct tcp_info


class _Protocol(Exception):
    """A frame that fails its tag or its header checks."""


class TcpChannel(Channel):
    """Byte streams to a peer over one authenticated socket."""

    kind = "tcp"

    def __init__(
        self,
        peer: int,
        link: Link,
        codec: FrameCodec,
        on_data: Callable[[], None],
        on_abort: Callable[[str], None],
        buffer_bytes: int | None = None,
    ) -> None:
        super().__init__(peer)
        self.sock = sock = link.sock
        self._codec = codec
        self._hs = codec.header_size
        self._send_key, self._recv_key = link.send_key, link.recv_key
        self._mac_all = link.mac_all
        self._sent = 0  # tags sent and checked: the per-direction counters
        self._checked = 0
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        watch_link(sock)
        sock.settimeout(_SLICE_S)
        self._on_data = on_data
        self._on_abort = on_abort
        self._chunks: collections.deque[memoryview] = collections.deque()
        # Bytes the reader took in and the consumer took out (one writer each, so no lock).
        self._in = 0
        self._out = 0
        # SIDEBAND_PEER_BUFFER_BYTES is validated >= 1 MiB (_CHUNK).
        limit = config.get("SIDEBAND_PEER_BUFFER_BYTES") if buffer_bytes is None else buffer_bytes
        self._limit: int = limit
        self._room = threading.Event()
        self._full = False
        self._lost: str | None = None
        self._closing = False
        self._send_lock = threading.Lock()
        # The frame going out, as (bytes, part of the frame), and the parts list it came as.
        self._wire: collections.deque[tuple[memoryview, bool]] = collections.deque()
        self._owner: list[memoryview] | None = None
        self._room_out = select.poll()
        self._room_out.register(sock.fileno(), select.POLLOUT)
        self._held_open = False
        self._reader = threading.Thread(
            target=self._read_loop, name=f"sideband-tcp-{peer}", daemon=True
        )
        self._reader.start()

    # -- tags ----------------------------------------------------------------------------------
    @staticmethod
    def _tag(key: bytes, counter: int, data: memoryview | bytes) -> bytes:
        """A keyed hash of ``counter`` and ``data``: BLAKE2b for headers and small payloads (the
        cheapest keyed hash per call), HMAC-SHA256 above (OpenSSL, with the CPU's SHA
        instructions: several times BLAKE2b's speed on large chunks)."""
        ctr = counter.to_bytes(8, "little")
        if len(data) <= _SMALL_TAG:
            h = hashlib.blake2b(ctr, key=key, digest_size=_TAG)
            h.update(data)
            return h.digest()
        m = hmac.new(key, ctr, "sha256")
        m.update(data)
        return m.digest()[:_TAG]

    def _check_tag(self, data: memoryview, tag: memoryview) -> None:
        want = self._tag(self._recv_key, self._checked, data)
        self._checked += 1
        if not hmac.compare_digest(want, tag):
            raise _Protocol(
                "a frame failed its integrity check: something on the path altered, injected or "
                "replayed data (or the ranks disagree on SIDEBAND_TCP_MAC)"
            )

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

    def _wait_for_room(self) -> None:
        """Block (TCP then holds the sender) while the bound's worth waits unconsumed."""
        while self._in - self._out >= self._limit and not self._closing:
            self._room.clear()
            self._full = True
            if self._in - self._out >= self._limit:
                self._room.wait(_SLICE_S)
        self._full = False

    def _push(self, data: memoryview) -> None:
        self._chunks.append(data)
        self._in += len(data)
        self._on_data()

    def _read_loop(self) -> None:
        codec, hs = self._codec, self._hs
        try:
            while not self._closing:
                self._wait_for_room()
                raw = self._read_exact(hs + _TAG)
                hdr = raw[:hs]
                self._check_tag(hdr, raw[hs:])
                try:
                    kind, nbytes, authenticated = codec.parse(hdr)
                except ValueError as e:
                    raise _Protocol(str(e)) from None
                tagged = authenticated or self._mac_all
                if kind == codec.abort_kind:
                    payload = b"".join(bytes(p) for p in self._payload(nbytes, tagged))
                    self._on_abort(codec.abort_reason(payload))
                    continue
                self._push(hdr)
                for piece in self._payload(nbytes, tagged):
                    self._push(piece)
        except BaseException as e:
            # Whatever stops the reader loses the link, and says why: a silent reader would
            # leave waiters to their deadline.
            if not self._closing:
                why = str(e) if isinstance(e, (_Protocol, ConnectionError)) else repr(e)
                self._lost = f"connection to rank {self.peer} lost ({why})"
                self._on_data()

    def _payload(self, nbytes: int, tagged: bool) -> Iterator[memoryview]:
        left = nbytes
        while left:
            n = min(left, _CHUNK)
            piece = self._read_exact(n)
            if tagged:
                self._check_tag(piece, self._read_exact(_TAG))
            left -= n
            yield piece
            if left:
                self._wait_for_room()

    # -- Channel -------------------------------------------------------------------------------
    def write(self, parts: list[memoryview], check: Callable[[], None]) -> int:
        """Send what the socket takes now of the frame ``parts`` (its header, then any payload),
        waiting at most :data:`_STALL_S` for room; returns how many of its bytes went.

        Never blocking for longer lets an op that also receives consume what arrived, so two
        ranks sending to each other at once both progress, whatever the bound. Frames go out
        whole, one at a time: a frame started is carried on by later calls with the same
        ``parts`` (the rest of the frame travels with its tags, made when it started, in
        sending order), and a write of another frame meanwhile takes nothing."""
        with self._send_lock:
            if self._owner is not parts:
                if self._wire:
                    return 0
                hdr = parts[0]
                assert len(hdr) == self._hs, "TCP writes whole frames"
                try:
                    _kind, _nbytes, authenticated = self._codec.parse(hdr)
                except ValueError as e:
                    raise ConnectionError(f"refusing to send a malformed frame ({e})") from None
                self._wire.extend(self._framed(hdr, parts[1:], authenticated))
                self._owner = parts
            sent = self._flush()
            if not self._wire:
                self._owner = None
            return sent

    def _framed(
        self, hdr: memoryview, payload: list[memoryview], authenticated: bool
    ) -> list[tuple[memoryview, bool]]:
        """The wire form of a frame, as (bytes, part of the frame): the header's tag after it
        and, where due, each payload chunk's after that chunk (under the send lock: tags are
        numbered in the order they are sent)."""
        key = self._send_key
        out = [(hdr, True), (memoryview(self._tag(key, self._sent, hdr)), False)]
        self._sent += 1
        for data in payload:
            data = memoryview(data).cast("B")
            if not (authenticated or self._mac_all):
                out.append((data, True))
                continue
            for lo in range(0, len(data), _CHUNK):
                chunk = data[lo : lo + _CHUNK]
                out += [(chunk, True), (memoryview(self._tag(key, self._sent, chunk)), False)]
                self._sent += 1
        return [(v, counted) for v, counted in out if len(v)]

    def _flush(self) -> int:
        """Send what the kernel takes of the wire, waiting up to :data:`_STALL_S` whenever it
        takes nothing; returns the frame bytes (tags not counted) sent."""
        wire, sent, fd = self._wire, 0, self.sock.fileno()
        while wire:
            if self._lost:
                raise ConnectionError(self._lost)
            try:
                # The socket is non-blocking underneath its timeout: writev returns at once.
                n = os.writev(fd, [v for v, _ in itertools.islice(wire, _IOV_MAX)])
            except BlockingIOError:
                if self._room_out.poll(_STALL_S * 1000):
                    continue
                # The peer takes nothing: it is not receiving, or its reader is at its bound.
                if self.send_blocked_since is None:
                    self.send_blocked_since = time.monotonic()
                self._hold_open(True)
                return sent
            except OSError as e:
                self._lost = f"connection to rank {self.peer} lost ({e})"
                raise ConnectionError(self._lost) from e
            self._hold_open(False)
            self.send_blocked_since = None
            while n:
                v, counted = wire[0]
                k = min(n, len(v))
                if k == len(v):
                    wire.popleft()
                else:
                    wire[0] = (v[k:], counted)
                sent += k if counted else 0
                n -= k
        return sent

    def _hold_open(self, closed_window: bool) -> None:
        """Keep a link whose peer is alive but not reading. Linux ends a connection whose
        receive window stays shut past TCP_USER_TIMEOUT, probes answered or not; so while every
        byte sent has been acknowledged (the peer's kernel is there, its window shut) the limit
        is lifted, and it is set again once the peer takes data. A peer lost meanwhile is found
        by Ray's actor check or the op's deadline."""
        if closed_window == self._held_open:
            return
        try:
            if closed_window:
                info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
                if struct.unpack_from("<I", info, _TCPI_UNACKED)[0]:
                    return  # data in flight unacknowledged: the peer may be gone
            limit = 0 if closed_window else int(link_timeout_s() * 1000)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, limit)
            self._held_open = closed_window
        except (AttributeError, OSError, struct.error):
            pass

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
        if got:
            self._out += got
            if self._full:
                self._room.set()
        return got

    def abort(self, reason: str) -> None:
        """Tell the peer why this rank stops, after the rest of any frame half sent (the peer
        reads frames whole); gives up after half a second without room."""
        frame = memoryview(self._codec.abort_frame(reason))
        hdr, payload = frame[: self._hs], frame[self._hs :]
        give_up = time.monotonic() + 0.5
        try:
            with self._send_lock:
                self._owner = None  # the op's own frame, if unfinished, is ended here
                self._wire.extend(self._framed(hdr, [payload], True))
                while self._wire and time.monotonic() < give_up:
                    self._flush()
        except (OSError, ConnectionError):
            pass

    def lost(self) -> str | None:
        return self._lost

    def unread(self) -> int:
        return self._in - self._out

    def close(self) -> None:
        self._closing = True
        self._room.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._reader.join(timeout=2)
        self.sock.close()
