"""Faults on a host's link in netns mode: delay (tc netem, or the userspace wire where the kernel
lacks netem), throttle (tc tbf), and unplugging the host's veth (a partition)."""

from __future__ import annotations

import sys

from sideband.errors import TestbedError
from sideband.testbed import _sys
from sideband.testbed.host import Host
from sideband.testbed.network import IFACE


def netem_available(sw: str) -> bool:
    """Whether the kernel has tc netem: tried once on a throwaway veth in the switch namespace
    (the one link type the test bed needs anyway)."""
    _sys.run(["ip", "-n", sw, "link", "add", "nq0", "type", "veth"]
             + ["peer", "name", "nq1"], check=False)  # fmt: skip
    p = _sys.run(["ip", "netns", "exec", sw, "tc", "qdisc", "add", "dev", "nq0"]
                 + ["root", "netem", "delay", "1ms"], check=False)  # fmt: skip
    _sys.run(["ip", "-n", sw, "link", "del", "nq0"], check=False)
    return p.returncode == 0


def _ends(sw: str, h: Host) -> tuple[tuple[str, str], ...]:
    """(namespace, device) of both ends of the host's link: a qdisc on each shapes both ways."""
    assert h.netns is not None  # links exist in netns mode only
    return ((h.netns, IFACE), (sw, h.port_iface))


def set_qdisc(sw: str, h: Host, qdisc: list[str]) -> None:
    for ns, dev in _ends(sw, h):
        _sys.run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root"]
                 + qdisc)  # fmt: skip


def clear_qdisc(sw: str, h: Host) -> None:
    for ns, dev in _ends(sw, h):
        _sys.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"], check=False)


def wire(sw: str, h: Host, ms: float) -> None:
    """Re-wire the host's bridge port through :mod:`sideband.testbed.wire`, which holds every
    frame back ``ms``."""
    a, b, port = f"w{h.index}a", f"w{h.index}b", h.port_iface
    _sys.run(["ip", "-n", sw, "link", "add", a, "type", "veth", "peer", "name", b])
    _sys.run(["ip", "-n", sw, "link", "set", a, "master", "br0", "up"])
    _sys.run(["ip", "-n", sw, "link", "set", b, "up", "promisc", "on"])
    _sys.run(["ip", "-n", sw, "link", "set", port, "nomaster", "promisc", "on"])
    h.wire, err = _sys.spawn_up(
        ["ip", "netns", "exec", sw, sys.executable, "-m", "sideband.testbed.wire"]
        + [port, b, str(ms)]
    )
    h.started.add(h.wire.pid)
    if err is not None:
        unwire(sw, h)
        raise TestbedError(f"host {h.index}: the delay link did not start: {err}")


def unwire(sw: str, h: Host) -> None:
    """Stop the delay forwarder and put the host's port back on the bridge."""
    if h.wire is not None:
        _sys.kill_all([h.wire.pid])
        _sys.reap(h.wire, 10)
        h.wire = None
        _sys.run(["ip", "-n", sw, "link", "del", f"w{h.index}a"], check=False)
        _sys.run(["ip", "-n", sw, "link", "set", h.port_iface, "master", "br0"], check=False)


def unplug(sw: str, h: Host) -> None:
    """Delete the host's veth: a partition (no FIN, no RST)."""
    unwire(sw, h)
    _sys.run(["ip", "-n", sw, "link", "del", h.port_iface])
