"""Property-based tests of the frame decoder: whatever bytes arrive, the header check either
accepts a frame within its kind's limit or raises ValueError, and a TCP reader fed any bytes
either waits for more or marks its link lost; it never dies silently, raises into the caller or
hands unchecked bytes up.

Bounded for the suite (examples and deadline below); docs/reliability.md gives a longer run.
"""

from __future__ import annotations

import os
import socket
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sideband.collective.comm import framing
from sideband.collective.comm.framing import CODEC, HEADER
from sideband.collective.transports import tcp
from sideband.collective.transports.handshake import Link

EXAMPLES = int(os.environ.get("SIDEBAND_FUZZ_EXAMPLES", "200"))
_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow],
)

headers = st.tuples(
    st.integers(0, 2**32 - 1) | st.sampled_from(sorted(framing.KINDS.values())),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1) | st.integers(0, 1 << 22),
    st.integers(0, 2**64 - 1),
)


@_SETTINGS
@given(headers)
def test_the_header_check_accepts_only_known_kinds_within_their_limits(h):
    raw = memoryview(HEADER.pack(*h))
    kind, _tag, nbytes, desc = h
    try:
        got_kind, got_n, authenticated = CODEC.parse(raw)
    except ValueError:
        assert kind not in framing.KINDS.values() or nbytes > framing._MAX_PAYLOAD[kind]
        return
    assert (got_kind, got_n) == (kind, nbytes)
    assert nbytes <= framing._MAX_PAYLOAD[kind]
    # Control frames and pickled payloads are always authenticated.
    data_kind = kind in (framing.KIND_COLL, framing.KIND_P2P)
    assert authenticated == (not data_kind or bool(desc & framing.PICKLED))


def _pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        b = socket.create_connection(srv.getsockname())
        a, _ = srv.accept()
    return a, b


@_SETTINGS
@given(st.binary(min_size=1, max_size=4096), st.booleans(), st.booleans())
def test_a_reader_fed_any_bytes_waits_or_loses_its_link(data, genuine_header, mac_all):
    a, b = _pair()
    k1, k2 = os.urandom(32), os.urandom(32)
    ch = tcp.TcpChannel(1, Link(a, k1, k2, mac_all), CODEC, lambda: None, lambda r: None, 1 << 20)
    try:
        if genuine_header:  # a well-tagged header claiming the fuzzed payload, then the bytes
            hdr = HEADER.pack(framing.KIND_P2P, 1, len(data), 2)
            data = hdr + tcp.TcpChannel._tag(k2, 0, hdr) + data
        b.sendall(data)
        b.shutdown(socket.SHUT_WR)  # then the peer closes: the reader must notice
        t0 = time.monotonic()
        while ch.lost() is None and time.monotonic() - t0 < 2:
            time.sleep(0.002)
        assert ch.lost() is not None, "the reader neither failed nor noticed the close"
        got = bytearray(len(data))
        n = ch.read_into(memoryview(got))
        if not genuine_header:
            # Random bytes never carry a valid tag: nothing reached the layer above.
            assert n == 0
        else:
            # At most the checked header and (unless every payload is tagged) the bytes that
            # followed it.
            assert n <= len(data) - 16
            if mac_all:
                assert n <= HEADER.size
    finally:
        ch.close()
        b.close()
