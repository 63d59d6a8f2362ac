"""Ports for gang rendezvous and for the libraries a gang starts, inside SIDEBAND_PORT_RANGE.

The range itself is read once, in ``sideband._net`` (``SIDEBAND_PORT_RANGE=lo-hi``); groups and
gangs use the same helpers, so one firewall rule covers groups, gangs and the libraries they wrap.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from sideband._net import bind_in_range, port_range

__all__ = ["bind_in_range", "pick_port", "port_range", "retries_left"]


def pick_port(host: str) -> int:
    """A port that was free a moment ago, in the range when set; 0 (let the library pick) when
    no range is set.

    For libraries that bind on their own and take no socket: the port is free again when this
    returns, so the caller retries on EADDRINUSE (the gang re-forms on it).
    """
    if port_range() is None:
        return 0
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        bind_in_range(s, host)
        return s.getsockname()[1]


def retries_left(port: int) -> int:
    """How many ports above ``port`` a library that counts up on EADDRINUSE (Spark's
    ``spark.port.maxRetries``) may try while staying in the range."""
    rng = port_range()
    if rng is None or port == 0:
        return 16
    return max(0, rng[1] - port)


def node_ip() -> str:
    """This node's IP address as Ray reports it: where members on other nodes reach this one."""
    import ray  # lazily, like every Ray import of the gang's member-side code

    return ray.util.get_node_ip_address()


def wait_listening(
    host: str,
    port: int,
    timeout_s: float,
    check: Callable[[], None] | None = None,
    poll_s: float = 0.01,
) -> bool:
    """Until ``host:port`` accepts connections (True), or ``timeout_s`` passed (False);
    ``check()`` runs between tries and raises to stop (the server's process exited, say)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            if check is not None:
                check()
            if time.monotonic() > deadline:
                return False
            time.sleep(poll_s)
