"""Setup "horovod": Horovod's gloo rendezvous served by the driver, ``hvd.init()`` in members.

What ``horovod.ray.RayExecutor`` does, through a gang: the driver runs Horovod's HTTP rendezvous
server (bound to the gang's master address, not to every interface as Horovod's own launcher
does, and inside SIDEBAND_PORT_RANGE when set) with one slot per member in gang rank order; each
member gets the ``HOROVOD_*`` variables and runs ``horovod.torch.init()``. Horovod 0.28.1 (2023,
the last release) builds from source only, with patches for torch 2.13 (docs/gangs.md).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from sideband.errors import MissingExtraError
from sideband.gang.contract import GangContext
from sideband.gang.ports import bind_in_range, node_ip
from sideband.gang.setup import GangPlan, Setup, require


def _iface_of(ip: str) -> str:
    """The network interface holding ``ip`` (Horovod's gloo binds by interface name)."""
    if ip.startswith("127."):
        return "lo"
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == ip for a in addrs):
            return name
    return "lo"


class HorovodSetup(Setup):
    """``horovod.torch.init()`` in every member against the driver's rendezvous server."""

    name = "horovod"

    def __init__(self) -> None:
        self._httpd: Any = None
        self._thread: threading.Thread | None = None
        self._initialised = False

    def prepare(self, plan: GangPlan) -> dict[str, Any]:
        try:
            require("horovod.torch", "horovod")
        except MissingExtraError as e:
            raise MissingExtraError(
                f"{e}. Horovod 0.28.1 has no wheel and needs two patches to build against torch "
                "2.13: see docs/gangs.md, 'horovod', for the recipe"
            ) from e.__cause__
        from horovod.runner.common.util.hosts import SlotInfo
        from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer

        host = plan.master_addr
        if not plan.single_node:
            import ray

            host = ray.util.get_node_ip_address()
        # Bind first (in the range), then hand the bound address to Horovod's server class.
        with socket.socket() as probe:
            bind_in_range(probe, host)
            port = probe.getsockname()[1]
        self._httpd = RendezvousHTTPServer((host, port), RendezvousHandler, 0)
        sizes = plan.node_sizes
        slots, rank = [], 0
        for node_rank, local_size in enumerate(sizes):
            for local_rank in range(local_size):
                slots.append(
                    SlotInfo(
                        hostname=plan.node_ips[rank],
                        rank=rank,
                        local_rank=local_rank,
                        cross_rank=node_rank,
                        size=plan.world_size,
                        local_size=local_size,
                        cross_size=len(sizes),
                    )
                )
                rank += 1
        self._httpd.init(slots)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="sideband-horovod-rendezvous", daemon=True
        )
        self._thread.start()
        return {"rendezvous": (host, port), "slots": [s.to_response_string() for s in slots]}

    def release(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def setup(
        self, ctx: GangContext, master_socket: socket.socket | None, options: dict[str, Any]
    ) -> None:
        import os

        if master_socket is not None:
            master_socket.close()  # Horovod meets at the driver's rendezvous server
        host, port = options["rendezvous"]
        rank, size, local_rank, local_size, cross_rank, cross_size = options["slots"][
            ctx.rank
        ].split(",")
        my_ip = "127.0.0.1" if ctx.master_addr == "127.0.0.1" else node_ip()
        os.environ.update(
            {
                "HOROVOD_HOSTNAME": my_ip,
                "HOROVOD_RANK": rank,
                "HOROVOD_SIZE": size,
                "HOROVOD_LOCAL_RANK": local_rank,
                "HOROVOD_LOCAL_SIZE": local_size,
                "HOROVOD_CROSS_RANK": cross_rank,
                "HOROVOD_CROSS_SIZE": cross_size,
                "HOROVOD_GLOO_RENDEZVOUS_ADDR": host,
                "HOROVOD_GLOO_RENDEZVOUS_PORT": str(port),
                "HOROVOD_CONTROLLER": "gloo",
                "HOROVOD_CPU_OPERATIONS": "gloo",
                "HOROVOD_GLOO_IFACE": _iface_of(my_ip),
            }
        )
        hvd = require("horovod.torch", "horovod")
        hvd.init()
        self._initialised = True

    def teardown(self, ctx: GangContext) -> None:
        if self._initialised:
            require("horovod.torch", "horovod").shutdown()
            self._initialised = False
