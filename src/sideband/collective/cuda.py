"""CUDA tensors in sideband groups: recognising them, the per-group GPU plan, and staging.

Imports torch (and cupy) lazily; nothing here touches CUDA until a CUDA tensor is passed.

- ``is_cuda`` / ``as_torch``: torch CUDA tensors and anything exposing ``__dlpack__`` +
  ``__cuda_array_interface__`` (cupy) become torch tensors sharing the memory.
- ``plan``: on the first collective with CUDA tensors the ranks exchange their GPU's UUID over the
  native group. Every rank on a distinct GPU (and NCCL usable everywhere): the group's NCCL
  process group is created then and serves all later CUDA collectives. Otherwise the native
  backend runs them, staged through pinned host memory, and ranks sharing a GPU use CUDA IPC for
  ``send``/``recv``/``broadcast``. Point-to-point ops learn only their peer's GPU, pairwise.
- ``staged_buffer``: the native path's view of a CUDA tensor: a pinned host buffer of the group
  (reused across ops) that is filled on the tensor's current stream when the op starts and
  copied back when it ends.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sideband.collective.comm import KIND_GPU_HELLO
from sideband.errors import BackendUnavailableError, InvalidArgumentError

if TYPE_CHECKING:
    from sideband.collective.buffers import Buffer
    from sideband.collective.group import Group


def is_cuda(x: Any) -> bool:
    """Whether ``x`` is a CUDA array (torch CUDA tensor, or cupy-like)."""
    dev = getattr(x, "device", None)
    if dev is not None and getattr(dev, "type", None) == "cuda" and hasattr(x, "data_ptr"):
        return True
    return hasattr(x, "__cuda_array_interface__") and hasattr(x, "__dlpack__")


def is_cupy(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def as_torch(x: Any) -> Any:
    """``x`` as a torch CUDA tensor sharing its memory."""
    import torch

    if isinstance(x, torch.Tensor):
        return x
    return torch.from_dlpack(x)


def like_input(x: Any, t: Any) -> Any:
    """``t`` (torch) as the kind of array ``x`` is (cupy in, cupy out)."""
    if is_cupy(x):
        import cupy

        return cupy.from_dlpack(t)
    return t


def empty_like(x: Any, shape: tuple[int, ...], dtype: str | None = None) -> Any:
    """A new array of ``shape`` of ``x``'s kind, device and (unless given) dtype."""
    from sideband.collective import buffers

    if isinstance(x, np.ndarray):
        return np.empty(shape, dtype=x.dtype if dtype is None else np.dtype(dtype))
    import torch

    t = as_torch(x) if is_cuda(x) else x
    dt = t.dtype if dtype is None else getattr(torch, dtype)
    if not buffers.is_torch(t):
        raise InvalidArgumentError(f"cannot make an output like {type(x).__name__}")
    return like_input(x, torch.empty(shape, dtype=dt, device=t.device))


def torch_dtype_name(t: Any) -> str:
    return str(t.dtype).replace("torch.", "")


# --- the GPU plan ------------------------------------------------------------------------------


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


def _nccl_usable() -> bool:
    from sideband.collective import torch_backend

    return torch_backend.available("nccl")[0]


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


@dataclass
class GpuState:
    """Per-group CUDA state (``Group._cuda``)."""

    plan: Plan | None = None
    device: Any = None
    peer_gpu: dict[int, str] = field(default_factory=dict)  # from pairwise hellos
    nccl: Any = None  # TorchBackend once created
    pinned: dict[str, Any] = field(default_factory=dict)
    ipc: Any = None  # ipc.IpcState once used


def state(g: Group) -> GpuState:
    st = getattr(g, "_cuda", None)
    if st is None:
        st = g._cuda = GpuState()
    return st


def plan(g: Group, t: Any) -> Plan:
    """The group's plan, agreed collectively on the first CUDA collective (a native
    ``allgather_object`` of GPU UUID and NCCL availability)."""
    st = state(g)
    if st.plan is None:
        info = (gpu_uuid(t.device), _nccl_usable())
        infos = g.allgather_object(info)
        uuids = [i[0] for i in infos]
        hosts = [m["host_key"] for m in g._roster]
        distinct = len(set(uuids)) == len(uuids)  # GPU UUIDs are unique across machines
        st.plan = Plan(uuids, hosts, distinct and all(i[1] for i in infos))
        st.device = t.device
        # Not copied into peer_gpu: send/recv learn their peer's GPU by a pairwise hello that
        # both sides make on first contact, whatever collectives either ran before, so the
        # two ends of a send always take the same path.
        own = g._torch is not None and g._torch.kind == "nccl"  # torch_nccl: made at join
        if st.plan.nccl and not own:
            import torch

            from sideband.collective import torch_backend

            with torch.cuda.device(t.device):
                st.nccl = torch_backend.TorchBackend.create(g, "nccl", t.device)
    elif st.device is not None and t.device != st.device:
        raise InvalidArgumentError(
            f"group {g.name!r}, rank {g.rank}: this rank's CUDA tensors were on {st.device} and "
            f"now one is on {t.device}; a group uses one GPU per rank (make a group per device)"
        )
    return st.plan


def peer_same_gpu(g: Group, t: Any, peer: int, timeout_s: float | None) -> bool:
    """Whether ``peer`` uses the same GPU as this rank (pairwise hello on first contact)."""
    st = state(g)
    mine = gpu_uuid(t.device)
    if peer not in st.peer_gpu:

        def body(o: Any) -> Any:
            (got,) = o.comm.exchange(
                [(peer, memoryview(mine.encode()))], [(peer, None)], KIND_GPU_HELLO, 0, 0
            )
            return bytes(got).decode()

        st.peer_gpu[peer] = g._submit(
            f"gpu hello with rank {peer}", 0, body, False, timeout_s, p2p=True
        )
    same_host = g._roster[peer]["host_key"] == g._roster[g.rank]["host_key"]
    return same_host and st.peer_gpu[peer] == mine


# --- staging through pinned host memory -------------------------------------------------------


def pinned(g: Group, key: str, nbytes: int) -> Any:
    """A pinned uint8 host tensor of at least ``nbytes``, reused across the group's ops."""
    import torch

    pool = state(g).pinned
    buf = pool.get(key)
    if buf is None or buf.numel() < nbytes:
        buf = torch.empty(max(nbytes, 64), dtype=torch.uint8, pin_memory=True)
        pool[key] = buf
    return buf


def staged_buffer(x: Any, what: str, writable: bool, fill: bool) -> Buffer:
    """A Buffer for CUDA ``x`` whose host memory is attached when the op starts (``stage``)."""
    import torch

    from sideband.collective.buffers import Buffer, torch_dtype

    t = as_torch(x).detach()
    dtype, np_dtype = torch_dtype(t, what)
    n = t.numel()
    # A stand-in of the right size and dtype (no memory) until the op attaches pinned memory.
    placeholder = np.lib.stride_tricks.as_strided(np.zeros(1, np_dtype), (n,), (0,))
    stream = torch.cuda.current_stream(t.device)
    buf = Buffer(x, placeholder, tuple(t.shape), dtype, None)

    def stage(g: Group, key: str) -> None:
        nbytes = n * t.element_size()
        host = pinned(g, key, nbytes)[:nbytes]
        hv = host.view(t.dtype)
        if fill and n:
            with torch.cuda.stream(stream):
                hv.copy_(t.reshape(-1), non_blocking=True)
            stream.synchronize()
        buf.arr = host.numpy().view(np_dtype)
        if writable:

            def writeback() -> None:
                if n:
                    with torch.cuda.stream(stream):
                        t.copy_(hv.view(t.shape), non_blocking=True)
                    # The pinned buffer is reused by the next op, and the result must be in x.
                    stream.synchronize()

            buf.writeback = writeback

    buf.stage = stage
    return buf


def require_torch_cuda(what: str) -> None:
    if "torch" not in sys.modules:
        try:
            import torch  # noqa: F401
        except ImportError as e:
            raise BackendUnavailableError(
                f"{what}: CUDA arrays need torch with CUDA (sideband[torch])"
            ) from e
