"""A userspace link with delay, for kernels without ``tc netem``.

``python -m sideband.testbed.wire IFACE_A IFACE_B DELAY_MS`` (inside a namespace) forwards every
frame arriving on one interface out of the other, each held back ``DELAY_MS``. Frames travel
with their virtio-net header (``PACKET_VNET_HDR``), so segmentation-offloaded frames of up to
64 KiB pass whole and the kernel segments them on the way out: Python handles a few thousand
frames a second, not a million. It prints ``up`` once both sockets are bound and runs until
killed or until an interface disappears (a cut link).
"""

from __future__ import annotations

import errno
import heapq
import select
import socket
import sys
import time

_ETH_P_ALL = 0x0003
_SOL_PACKET = 263
_PACKET_VNET_HDR = 15
_PACKET_IGNORE_OUTGOING = 23  # Linux >= 4.20: our own sends are not read back
_SO_RCVBUFFORCE = 33
_FRAME_MAX = 1 << 18  # vnet header + the largest offloaded frame, with room to spare
_BATCH = 256  # frames read per socket per wake-up
_GONE = (errno.ENXIO, errno.ENODEV, errno.ENETDOWN)  # the interface was deleted: a cut link


def _open(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    s.setsockopt(_SOL_PACKET, _PACKET_VNET_HDR, 1)
    s.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
    try:  # a deep buffer: frames wait here while the other direction is being served
        s.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 64 << 20)
    except OSError:
        pass
    s.bind((ifname, _ETH_P_ALL))
    s.setblocking(False)
    return s


def run(a: str, b: str, delay_s: float) -> None:
    socks = [_open(a), _open(b)]
    print("up", flush=True)
    pending: list[tuple[float, int, int, bytes]] = []  # (due, seq, out socket, frame)
    seq = 0
    while True:
        timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else None
        readable, _, _ = select.select(socks, [], [], timeout)
        now = time.monotonic()
        for i, s in enumerate(socks):
            if s not in readable:
                continue
            for _ in range(_BATCH):
                try:
                    frame = s.recv(_FRAME_MAX)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno in _GONE:
                        return
                    raise
                heapq.heappush(pending, (now + delay_s, seq, 1 - i, frame))
                seq += 1
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, _, out, frame = heapq.heappop(pending)
            try:
                socks[out].send(frame)
            except BlockingIOError:
                pass  # the interface's queue is full: dropped, as on a real congested link
            except OSError as e:
                if e.errno in _GONE:
                    return
                # Anything else (e.g. a frame the device refuses): drop it and go on.


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], float(sys.argv[3]) / 1000.0)
