"""Which address and ports sideband's listeners bind to and advertise (groups, gangs, the
libraries gangs start): ``SIDEBAND_HOST`` and ``SIDEBAND_PORT_RANGE``, read in one place."""

from __future__ import annotations

import errno
import os
import random
import socket

from sideband.errors import InvalidArgumentError, RendezvousError


def node_address() -> str:
    """The address other members of the cluster reach this process on.

    ``SIDEBAND_HOST`` overrides it. On a single-node cluster nothing outside the machine needs to
    connect, so loopback is used: it is reachable by every local process and by nobody else.
    Otherwise it is the address Ray itself uses for this node.
    """
    env = os.environ.get("SIDEBAND_HOST")
    if env:
        return env
    import ray

    try:
        alive = [n for n in ray.nodes() if n.get("Alive")]
    except Exception:
        alive = []
    if len(alive) <= 1:
        return "127.0.0.1"
    from ray._private import worker

    return worker.global_worker.node_ip_address


def port_range() -> tuple[int, int] | None:
    """``SIDEBAND_PORT_RANGE=lo-hi``: the ports group listeners may bind (None: any)."""
    spec = os.environ.get("SIDEBAND_PORT_RANGE", "").strip()
    if not spec:
        return None
    try:
        lo_s, hi_s = spec.split("-")
        lo, hi = int(lo_s), int(hi_s)
    except ValueError:
        lo, hi = 0, -1
    if not 1 <= lo <= hi <= 65535:
        raise InvalidArgumentError(
            f"SIDEBAND_PORT_RANGE={spec!r}: expected 'lo-hi' with 1 <= lo <= hi <= 65535, "
            "e.g. 40000-40999"
        )
    return lo, hi


def bind_in_range(sock: socket.socket, host: str) -> None:
    """Bind ``sock`` to ``host`` on a port of SIDEBAND_PORT_RANGE (any free port if unset)."""
    rng = port_range()
    if rng is None:
        sock.bind((host, 0))
        return
    ports = list(range(rng[0], rng[1] + 1))
    # A random order: groups forming at once on one node do not all race for the first port.
    random.shuffle(ports)
    for port in ports:
        try:
            sock.bind((host, port))
            return
        except OSError as e:
            if e.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
    raise RendezvousError(
        f"every port of SIDEBAND_PORT_RANGE={rng[0]}-{rng[1]} on {host} is taken; widen the "
        "range (a group needs one port per rank with remote peers, only while it forms)"
    )
