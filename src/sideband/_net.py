"""Which address and ports sideband's listeners bind to and advertise (groups, gangs, the
libraries gangs start): ``SIDEBAND_HOST`` and ``SIDEBAND_PORT_RANGE`` (read through
:mod:`sideband.config`); and how a socket notices a peer that vanished."""

from __future__ import annotations

import errno
import random
import socket

from sideband import config
from sideband.errors import RendezvousError


def node_address() -> str:
    """The address other members of the cluster reach this process on.

    ``SIDEBAND_HOST`` overrides it. On a single-node cluster nothing outside the machine needs to
    connect, so loopback is used: it is reachable by every local process and by nobody else.
    Otherwise it is the address Ray itself uses for this node.
    """
    env: str | None = config.get("SIDEBAND_HOST")
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
    """``SIDEBAND_PORT_RANGE=lo-hi``: the ports group listeners may bind (None: any).

    A bad value raises :class:`~sideband.errors.ConfigError` (an ``InvalidArgumentError``)."""
    rng: tuple[int, int] | None = config.get("SIDEBAND_PORT_RANGE")
    return rng


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


def link_timeout_s() -> float:
    """How long a silent link may stay unanswered before its peer counts as lost."""
    t: float = config.get("SIDEBAND_LINK_TIMEOUT_S")
    return t


def watch_link(sock: socket.socket) -> None:
    """Let the kernel notice a peer whose host vanished without closing the connection.

    A host that loses power or its network sends no FIN: the socket would wait forever. Keepalive
    probes after a second of silence catch an idle link, and TCP_USER_TIMEOUT a link with data
    in flight; either ends the reader with ETIMEDOUT, which the waiting op reports as a lost
    peer. A live peer's kernel answers probes even while its process is busy.
    """
    limit = link_timeout_s()
    idle = max(1, int(limit / 3))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(limit * 1000))
    except (AttributeError, OSError):  # not Linux: the Ray actor-state check remains
        pass
