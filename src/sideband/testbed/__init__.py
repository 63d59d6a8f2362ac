"""A multi-host test bed on one machine: Ray nodes as separate 'hosts' for tests and benchmarks.

``with Testbed(2) as bed: bed.python(code)`` builds two hosts (a network namespace each, with its
own address on a private bridge and its own /dev/shm), starts a Ray head on host 0 and a worker
node on host 1, runs ``code`` as a driver on host 0 and tears everything down. Where namespaces
are not permitted it falls back to Ray nodes on 127.0.0.x (``bed.mode == "local"``) whose
collectives must use TCP (``bed.backend``). See docs/multinode.md.
"""

from __future__ import annotations

from sideband.testbed._sys import TestbedError, netns_unavailable
from sideband.testbed.bed import LOCAL, NETNS, Host, Testbed
from sideband.testbed.driver import DriverRun, connect, emit, event, info, on_host, run_process

__all__ = [
    "LOCAL",
    "NETNS",
    "DriverRun",
    "Host",
    "Testbed",
    "TestbedError",
    "connect",
    "emit",
    "event",
    "info",
    "netns_unavailable",
    "on_host",
    "run_process",
]
