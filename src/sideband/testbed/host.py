"""One 'host' of the test bed, and the two modes a test bed runs in."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

NETNS = "netns"
LOCAL = "local"


@dataclass
class Host:
    """One 'host': a Ray node, plus its namespaces in netns mode."""

    index: int
    ip: str
    netns: str | None = None
    generation: int = 0
    anchor: subprocess.Popen | None = None  # holds the host's mount namespace (netns mode)
    ray: subprocess.Popen | None = None  # `ray start --block`, in a session of its own
    wire: subprocess.Popen | None = None  # the userspace delay link, where netem is missing
    log_path: str = ""
    state: str = "down"  # down, up, cut
    started: set[int] = field(default_factory=set)  # every pid we launched for this host

    @property
    def resource(self) -> str:
        """The custom resource that pins actors here; a restored host gets a new one, so that
        nothing is scheduled on the dead node Ray has not forgotten yet."""
        return f"testbed_host{self.index}_g{self.generation}"

    @property
    def port_iface(self) -> str:
        return f"h{self.index}"  # the switch side of the host's veth
