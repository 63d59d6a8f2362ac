"""The network of netns mode: a bridge in a namespace of its own (the 'switch'), and per host a
namespace with one veth into it and an anchor process holding a private /dev/shm.

Nothing here touches the machine's own namespace: every interface is created inside the switch's
or a host's namespace.
"""

from __future__ import annotations

from sideband.errors import TestbedError
from sideband.testbed import _sys
from sideband.testbed.host import Host

IFACE = "sb0"  # the host's interface inside its namespace


def make_switch(sw: str) -> None:
    _sys.run(["ip", "netns", "add", sw])
    _sys.run(["ip", "-n", sw, "link", "set", "lo", "up"])
    _sys.run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
    _sys.run(["ip", "-n", sw, "link", "set", "br0", "up"])


def make_host(sw: str, tag: str, h: Host) -> None:
    """A namespace with one veth into the bridge, and an anchor process holding a mount
    namespace with a private /dev/shm, which every process of the host then enters."""
    h.netns = f"{tag}-h{h.index}"
    ns = h.netns
    _sys.run(["ip", "netns", "add", ns])
    _sys.run(["ip", "-n", ns, "link", "set", "lo", "up"])
    # Created inside the switch namespace with its peer sent straight into the host's:
    # no interface ever appears in the machine's own namespace.
    _sys.run(["ip", "-n", sw, "link", "add", h.port_iface, "type", "veth"]
             + ["peer", "name", IFACE, "netns", ns])  # fmt: skip
    _sys.run(["ip", "-n", sw, "link", "set", h.port_iface, "master", "br0", "up"])
    _sys.run(["ip", "-n", ns, "addr", "add", f"{h.ip}/24", "dev", IFACE])
    _sys.run(["ip", "-n", ns, "link", "set", IFACE, "up"])
    script = "mount -t tmpfs -o mode=1777 tmpfs /dev/shm && echo up && exec sleep 2147483647"
    h.anchor, err = _sys.spawn_up(
        ["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private"]
        + ["sh", "-c", script]
    )
    h.started.add(h.anchor.pid)
    if err is not None:
        raise TestbedError(f"host {h.index}: private /dev/shm failed: {err}")


def unmake_host(sw: str, h: Host) -> None:
    """Delete a host's namespace and its bridge port (its processes are already dead)."""
    if h.netns:
        _sys.run(["ip", "netns", "del", h.netns], 10, check=False)
        _sys.run(["ip", "-n", sw, "link", "del", h.port_iface], 10, check=False)


def delete_namespaces(names: list[str]) -> None:
    for ns in names:
        _sys.run(["ip", "netns", "del", ns], 10, check=False)


def namespaces_of(tag: str) -> list[str]:
    """The namespaces still present whose name carries ``tag``."""
    listed = _sys.run(["ip", "netns", "list"], 10, check=False).stdout
    return [ln.split()[0] for ln in listed.splitlines() if tag in ln]
