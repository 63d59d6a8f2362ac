"""CUDA tensors in sideband groups: the per-group GPU plan, and the state CUDA ops keep.

Imports torch lazily; nothing here touches CUDA until a CUDA tensor is passed.

- ``Gpu.agree``: on the first collective with CUDA tensors the ranks exchange their GPU's UUID
  (a native ``allgather_object``). Every rank on a distinct GPU (and NCCL usable everywhere): the
  group's NCCL process group is created then and serves all later CUDA collectives. Otherwise the
  native backend runs them, staged through pinned host memory (``runtime/buffers.py``), and ranks
  sharing a GPU use CUDA IPC for ``send``/``recv``/``broadcast`` (``ipc.py``). Point-to-point
  ops learn only their peer's GPU, pairwise (``Gpu.peer_same_gpu``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sideband.collective.backends import torch_pg
from sideband.collective.backends.native import Native
from sideband.collective.backends.torch_ops import Torch
from sideband.collective.comm.framing import KIND_GPU_HELLO
from sideband.collective.runtime.buffers import PinnedPool
from sideband.errors import InvalidArgumentError


def gpu_uuid(device: Any) -> str:
    """A globally unique id of the physical GPU (CUDA_VISIBLE_DEVICES renumbers indices)."""
    import torch

    props = torch.cuda.get_device_properties(device)
    uuid = getattr(props, "uuid", None)
    if uuid:
        return str(uuid)
    return (
        f"{props.name}:{getattr(props, 'pci_bus_id', '?')}:{getattr(props, 'pci_device_id', '?')}"
    )


@dataclass
class Plan:
    """How a group moves CUDA tensors; the same on every rank."""

    uuids: list[str]
    hosts: list[str]
    nccl: bool  # every rank on its own GPU and NCCL usable everywhere

    def same_gpu(self, a: int, b: int) -> bool:
        return self.uuids[a] == self.uuids[b] and self.hosts[a] == self.hosts[b]

    def all_same_gpu(self) -> bool:
        return all(self.same_gpu(0, r) for r in range(len(self.uuids)))


class Gpu:
    """Per-group CUDA state (``Group._cuda``), made on the group's first CUDA op."""

    def __init__(
        self, native: Native, roster: list[dict[str, Any]], session: str, own_nccl: bool
    ) -> None:
        self.native = native
        self.roster = roster
        self.session = session
        self.own_nccl = own_nccl  # backend "torch_nccl": the NCCL group was made at join
        self.plan: Plan | None = None
        self.device: Any = None
        self.peer_gpu: dict[int, str] = {}  # from pairwise hellos
        self.nccl: Torch | None = None
        self.pinned = PinnedPool()
        self.ipc: Any = None  # ipc.IpcState once used

    def agree(self, t: Any) -> Plan:
        """The group's plan, agreed collectively on the first CUDA collective."""
        if self.plan is None:
            info = (gpu_uuid(t.device), torch_pg.available("nccl")[0])
            infos = self.native.allgather_object(info)
            uuids = [i[0] for i in infos]
            hosts = [m["host_key"] for m in self.roster]
            distinct = len(set(uuids)) == len(uuids)  # GPU UUIDs are unique across machines
            self.plan = Plan(uuids, hosts, distinct and all(i[1] for i in infos))
            self.device = t.device
            # Not copied into peer_gpu: send/recv learn their peer's GPU by a pairwise hello that
            # both sides make on first contact, whatever collectives either ran before, so the
            # two ends of a send always take the same path.
            if self.plan.nccl and not self.own_nccl:
                import torch

                with torch.cuda.device(t.device):
                    self.nccl = Torch.create(self.native, self.session, "nccl", t.device)
        elif self.device is not None and t.device != self.device:
            ex = self.native.ex
            raise InvalidArgumentError(
                f"group {ex.name!r}, rank {ex.rank}: this rank's CUDA tensors were on "
                f"{self.device} and now one is on {t.device}; a group uses one GPU per rank "
                "(make a group per device)"
            )
        return self.plan

    def peer_same_gpu(self, t: Any, peer: int, timeout_s: float | None) -> bool:
        """Whether ``peer`` uses the same GPU as this rank (pairwise hello on first contact)."""
        mine = gpu_uuid(t.device)
        if peer not in self.peer_gpu:
            got = self.native.hello(peer, KIND_GPU_HELLO, mine.encode(), timeout_s)
            self.peer_gpu[peer] = got.decode()
        rank = self.native.rank
        same_host = self.roster[peer]["host_key"] == self.roster[rank]["host_key"]
        return same_host and self.peer_gpu[peer] == mine

    def close(self, broken: bool) -> None:
        """Release the NCCL group, IPC mappings and pinned buffers."""
        if self.nccl is not None:
            self.nccl.broken = self.nccl.broken or broken
            try:
                self.nccl.close()
            except Exception:
                pass
            self.nccl = None
        if self.ipc is not None:
            try:
                self.ipc.close()
            except Exception:
                pass
        self.pinned.clear()
