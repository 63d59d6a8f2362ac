"""Which address sideband's listeners bind to and advertise."""

from __future__ import annotations

import os


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
