"""Zero-copy ``send``/``recv`` and ``broadcast`` between ranks on the same GPU (CUDA IPC).

The sender records an interprocess CUDA event on its tensor's current stream and sends, over the
native group, torch's IPC description of the tensor (``reduce_tensor``: the allocation's handle,
the tensor's offset, size and stride) and the event's handle, a few hundred bytes. The receiver
opens the allocation once (torch caches it by handle; the receiver keeps its last mappings alive
so repeated ops reopen nothing), makes its current stream wait for the event, copies device to
device, waits for the copy while watching the op's deadline and the peers, and acks; the sender
returns only after the ack, so it may reuse its buffer at once. No host copy.

torch's IPC (not raw ``cuIpc*`` calls) also serves allocations of the expandable-segments
allocator. A mapping held by a receiver keeps the sender's block from being reused by the
sender's allocator until it is dropped: receivers keep at most 32, and drop them when the group
is destroyed.
"""

from __future__ import annotations

import collections
import logging
import pickle
import struct
import threading
from typing import Any

from sideband import config
from sideband.collective.algorithms import objects
from sideband.collective.backends.cuda import Gpu
from sideband.collective.comm.framing import KIND_IPC_ACK, KIND_P2P
from sideband.errors import CollectiveError, MismatchError

_META = struct.Struct("<Q64s")  # nbytes, event handle; torch's pickled description follows
_MAX_MAPPINGS = 32
log = logging.getLogger("sideband.collective")


def usable() -> bool:
    """Whether CUDA IPC can be attempted in this process (``SIDEBAND_CUDA_IPC=0`` turns it off,
    e.g. to compare with staging; every rank of a group must see the same setting)."""
    if not config.get("SIDEBAND_CUDA_IPC"):
        _fallback("SIDEBAND_CUDA_IPC=0")
        return False
    try:
        import torch

        ok = bool(torch.cuda.is_available())
    except Exception as e:
        ok, why = False, f"torch.cuda unusable: {e}"
    else:
        why = "torch.cuda.is_available() is False"
    if not ok:
        _fallback(why)
    return ok


_told: set[str] = set()


def _fallback(why: str) -> None:
    """Say once per process and reason that same-GPU ops stage through host memory."""
    if why not in _told:
        _told.add(why)
        log.debug("CUDA IPC off (%s): tensors on one GPU go through host memory", why)


class IpcState:
    """Per-group IPC state: the sender's event, the receiver's cached mappings and events."""

    def __init__(self, device: Any) -> None:
        import torch

        self.device = device
        with torch.cuda.device(device):
            self.event = torch.cuda.Event(interprocess=True)
        self.event_handle = self.event.ipc_handle()
        # Peer tensors opened from IPC descriptions, most recently used last: holding them keeps
        # torch's mapping of the peer's allocation open.
        self.mappings: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self.events: dict[bytes, Any] = {}

    def mapping(self, args: tuple) -> Any:
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        # torch reopens nothing while the storage lives (its cache is keyed by the handle) and
        # then releases the sender's count for this share itself; holding the tensor here keeps
        # the storage alive between ops.
        t = rebuild_cuda_tensor(*args)
        key = (args[7], args[9])  # allocation handle, storage offset in it
        self.mappings[key] = t
        self.mappings.move_to_end(key)
        while len(self.mappings) > _MAX_MAPPINGS:
            self.mappings.popitem(last=False)
        return t

    def peer_event(self, handle: bytes) -> Any:
        import torch

        ev = self.events.get(handle)
        if ev is None:
            ev = self.events[handle] = torch.cuda.Event.from_ipc_handle(self.device, handle)
        return ev

    def close(self) -> None:
        self.events.clear()
        self.mappings.clear()


_THREAD = threading.local()


def _ensure_context(device: Any) -> None:
    """Make the device's primary context current in this thread: driver calls need one, and a
    group's worker thread may not have made any runtime call yet."""
    import torch

    idx = torch.device(device).index or 0
    if getattr(_THREAD, "device", None) != idx:
        torch.cuda.set_device(idx)
        _THREAD.device = idx


def _state(gpu: Gpu, t: Any) -> IpcState:
    _ensure_context(t.device)
    if gpu.ipc is None:
        gpu.ipc = IpcState(t.device)
    return gpu.ipc


def _export(gpu: Gpu, t: Any, stream: Any) -> bytes:
    """Meta for ``t`` (contiguous), after recording the event on ``stream``."""
    import torch
    from torch.multiprocessing.reductions import reduce_tensor

    st = _state(gpu, t)
    st.event.record(stream)
    with torch.cuda.stream(stream):
        _, args = reduce_tensor(t)
    nbytes = t.numel() * t.element_size()
    return _META.pack(nbytes, st.event_handle) + pickle.dumps(args)


def _import_into(
    gpu: Gpu, comm: Any, meta: bytes | memoryview, dst: Any, stream: Any, src_rank: int
) -> None:
    """Copy the peer's tensor described by ``meta`` into ``dst`` (contiguous) on ``stream``,
    and wait for the copy while watching the op."""
    import torch

    meta = bytes(meta)
    nbytes, evh = _META.unpack_from(meta)
    want = dst.numel() * dst.element_size()
    if nbytes != want:
        raise MismatchError(
            f"{comm.describe()}: rank {src_rank} sent {nbytes} bytes but this rank expected "
            f"{want}: the ranks' buffers differ in size"
        )
    st = _state(gpu, dst)
    # Only a member of this authenticated group can have sent this description.
    args = pickle.loads(meta[_META.size :])
    try:
        src = st.mapping(args)
    except Exception as e:
        raise CollectiveError(f"CUDA IPC: opening rank {src_rank}'s tensor failed: {e}") from e
    with torch.cuda.stream(stream):
        stream.wait_event(st.peer_event(evh))
        dst.view(-1).view(torch.uint8).copy_(src.reshape(-1).view(torch.uint8), non_blocking=True)
        done = torch.cuda.Event()
        done.record(stream)
    comm.poll_until(done.query, [src_rank])


def _contig(t: Any, stream: Any) -> Any:
    import torch

    if t.is_contiguous():
        return t
    with torch.cuda.stream(stream):
        return t.contiguous()


# --- the ops (run on the group's executor; ``o`` is the algorithms Op) ---------------------------


def send_body(gpu: Gpu, t: Any, dst: int, tag: int, desc: int, stream: Any) -> Any:
    def body(o: Any) -> None:
        import torch

        with torch.cuda.device(t.device):
            src = _contig(t, stream)  # held until the ack: the receiver reads it
            meta = _export(gpu, src, stream)
            o.comm.exchange([(dst, memoryview(meta))], [], KIND_P2P, tag, desc)
            (ack,) = o.comm.exchange([], [(dst, None)], KIND_IPC_ACK, tag, 0)
        if len(ack):
            raise CollectiveError(f"{o.comm.describe()}: rank {dst} failed: {bytes(ack).decode()}")

    return body


def _receive(
    gpu: Gpu, o: Any, meta: bytes | memoryview, t: Any, stream: Any, src: int, tag: int
) -> None:
    """Copy what ``src`` described into ``t``, then ack; on failure tell ``src`` (which waits
    for the ack) and fail here too."""
    import torch

    flat = t if t.is_contiguous() else torch.empty_like(t, memory_format=torch.contiguous_format)
    try:
        _import_into(gpu, o.comm, meta, flat, stream, src)
    except CollectiveError as e:
        o.comm.exchange([(src, memoryview(str(e).encode()[:4000]))], [], KIND_IPC_ACK, tag, 0)
        raise
    if flat is not t:
        with torch.cuda.stream(stream):
            t.copy_(flat)
        stream.synchronize()
    o.comm.exchange([(src, memoryview(b""))], [], KIND_IPC_ACK, tag, 0)


def recv_body(gpu: Gpu, out: Any, t: Any, src: int, tag: int, desc: int, stream: Any) -> Any:
    def body(o: Any) -> Any:
        import torch

        with torch.cuda.device(t.device):
            (meta,) = o.comm.exchange([], [(src, None)], KIND_P2P, tag, desc)
            _receive(gpu, o, meta, t, stream, src, tag)
        return out

    return body


def broadcast_body(gpu: Gpu, x: Any, t: Any, root: int, stream: Any) -> Any:
    """Every rank on one GPU: the root exports, the others copy from it, then ack."""

    def body(o: Any) -> Any:
        import torch

        with torch.cuda.device(t.device):
            others = [p for p in range(o.n) if p != o.rank]
            if o.rank == root:
                src = _contig(t, stream)
                objects.broadcast_bytes(o, _export(gpu, src, stream), root)
                acks = o.comm.exchange([], [(p, None) for p in others], KIND_IPC_ACK, o.tag, 0)
                bad = [f"rank {p}: {bytes(a).decode()}" for p, a in zip(others, acks) if len(a)]
                if bad:
                    raise CollectiveError(f"{o.comm.describe()}: " + "; ".join(bad))
                return x
            meta = objects.broadcast_bytes(o, None, root)
            _receive(gpu, o, meta, t, stream, root, o.tag)
            return x

    return body
