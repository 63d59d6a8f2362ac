"""Where an endpoint listens: the ``port=`` argument, the advertised host, the URL, and the
error when it cannot."""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence

from sideband.errors import EndpointStartError


def ports(port: int | tuple[int, int] | Iterable[int]) -> list[int]:
    """The ports to try, in order: 0, a port, an inclusive ``(low, high)`` range, or ports."""
    if isinstance(port, int):
        ports = [port]
    elif isinstance(port, tuple) and len(port) == 2 and all(isinstance(p, int) for p in port):
        ports = list(range(port[0], port[1] + 1))  # an inclusive (low, high) range
    else:
        ports = [int(p) for p in port]
    if not ports or any(not 0 <= p <= 65535 for p in ports):
        raise ValueError(f"port must be 0, a port, a (low, high) range or ports, got {port!r}")
    return ports


def advertised_host(bind_host: str) -> str:
    """The address clients should use: the node's IP when bound to every interface."""
    if bind_host in ("0.0.0.0", "::", ""):
        import ray

        return ray.util.get_node_ip_address()
    return bind_host


def url(scheme: str, host: str, port: int) -> str:
    """``scheme://host:port``, brackets around IPv6 hosts."""
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def listen_error(
    what: str, host: str, ports: Sequence[int], last: OSError | None
) -> EndpointStartError:
    """The error of a server that could bind none of ``ports`` on ``host``, with what to do."""
    span = ports[0] if len(ports) == 1 else f"{ports[0]}..{ports[-1]}"
    hint = (
        "Another process holds the port: choose another one, or port=0 for a free one."
        if last is not None and last.errno == errno.EADDRINUSE
        else "Check the host: it must be an address of this node, or 0.0.0.0."
    )
    return EndpointStartError(f"{what} could not listen on {host}:{span}: {last}. {hint}")
