"""Drop-in replacement for ``ray.util.collective``.

Switch one import line and code written for ``ray.util.collective``'s CPU path runs on sideband::

    import sideband.collective as col          # was: import ray.util.collective as col
    from sideband.collective.types import Backend, ReduceOp

Every public function of ``ray.util.collective`` exists here with the same name, signature,
defaults, return values and in-place semantics. Differences, all deliberate:

- ``Backend.GLOO`` / ``"gloo"`` runs sideband's native CPU backend (shared memory between ranks
  on one host, TCP between hosts), not torch's gloo. ``"torch_gloo"`` runs torch's own gloo
  under sideband's rendezvous (needs torch). sideband's own names (``"auto"``, ``"native"``,
  ``"shm"``, ``"tcp"``) are accepted too.
- Group names may not contain ``"/"`` (an ``InvalidArgumentError``, a ``ValueError``).
- ``Backend.NCCL`` (still the default, as in Ray) runs torch's NCCL (``"torch_nccl"``) where torch
  with CUDA is available, and raises :class:`sideband.BackendUnavailableError` (a
  ``RuntimeError``) otherwise; every ``*_multigpu`` function raises it (one GPU per process).
- Tensors may be numpy arrays, torch tensors (CPU or CUDA, any dtype incl. bfloat16) and cupy
  arrays; on ``"gloo"`` groups CUDA tensors are staged through pinned host memory or moved by
  CUDA IPC (see docs/gpu.md).
- ``gloo_timeout`` (milliseconds) becomes the group's deadline (``Group.timeout_s``): a join
  gives up with a :class:`sideband.RendezvousError`, an operation with a
  :class:`sideband.CollectiveTimeoutError` (both ``RuntimeError``) instead of hanging.
- Errors keep the builtin types Ray's callers catch: an invalid rank is a ``ValueError``, a
  tensor list of the wrong length or shape a ``RuntimeError`` (:class:`CollectiveUsageError` is
  both), an op on a group that does not exist here a ``RuntimeError``
  (:class:`sideband.GroupNotFoundError`).
- ``reducescatter`` does not modify its input list (Ray's gloo path all-reduces every list
  element in place as a side effect).
- Ray hands numpy arrays that arrive as task arguments out read-only, and Ray's gloo path writes
  into them anyway. So that such code runs unchanged, this module writes results into a
  read-only numpy array's memory too, and warns once per process; copy the array
  (``x = x.copy()``) to avoid it.

Also offered, as in Ray: ``get_group_handle`` (returns a :class:`sideband.Group`) and
``synchronize``. ``register_collective_backend`` is not offered: sideband's backends are
selected by name.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sideband.collective import types
from sideband.errors import (
    BackendUnavailableError,
    CollectiveUsageError,
    InvalidArgumentError,
)

if TYPE_CHECKING:
    from sideband.collective.group import Group

__all__ = [
    "CollectiveUsageError",
    "allgather",
    "allgather_multigpu",
    "allreduce",
    "allreduce_multigpu",
    "barrier",
    "broadcast",
    "broadcast_multigpu",
    "create_collective_group",
    "destroy_collective_group",
    "get_collective_group_size",
    "get_group_handle",
    "get_rank",
    "gloo_available",
    "init_collective_group",
    "is_backend_available",
    "is_group_initialized",
    "nccl_available",
    "recv",
    "recv_multigpu",
    "reduce",
    "reduce_multigpu",
    "reducescatter",
    "reducescatter_multigpu",
    "send",
    "send_multigpu",
    "synchronize",
    "types",
]

logger = logging.getLogger(__name__)

# sideband's names, plus Ray's. Ray's "gloo" is served by the native backend.
_CPU_BACKENDS = {"auto", "native", "shm", "tcp"}
_GPU_BACKENDS = {"nccl", "torch_nccl"}
_KNOWN_BACKENDS = _CPU_BACKENDS | _GPU_BACKENDS | {"gloo", "torch_gloo"}

_readonly_warned = False
_readonly_lock = threading.Lock()


# --- core access --------------------------------------------------------------------------------
# The core is imported on first use: ``sideband/__init__`` imports ``sideband.collective.group``,
# which imports this package first, so a top-level import here would be circular.


def _core() -> Any:
    from sideband.collective import group as core

    return core


def _check_inside_actor(what: str) -> None:
    """Raise unless called inside a Ray actor or task, as ``ray.util.collective`` does."""
    import ray

    worker = ray._private.worker.global_worker
    if getattr(worker, "mode", None) != ray.WORKER_MODE:
        raise CollectiveUsageError(
            f"sideband.collective.{what}() was called in the driver (or outside Ray); like "
            "ray.util.collective, it must be called inside a Ray actor or task. From the "
            "driver, declare a group with create_collective_group(actors, ...)."
        )


def _group(group_name: str, what: str) -> Group:
    """The joined group of that name, joining a declared one on first use (as Ray does)."""
    _check_inside_actor(what)
    return _core().get_group(group_name)


def _backend_name(backend: Any) -> str:
    """Normalise Ray's and sideband's backend spellings to a lower-case name."""
    value = getattr(backend, "value", backend)
    if not isinstance(value, str):
        raise CollectiveUsageError(
            f"backend must be a string or a Backend member, got {backend!r} "
            f"({type(backend).__name__}); use Backend.GLOO for CPU groups."
        )
    name = value.lower()
    if name not in _KNOWN_BACKENDS:
        raise CollectiveUsageError(
            f"Unrecognized backend {value!r}: use 'gloo' (sideband's native CPU backend), "
            f"'nccl', 'torch_gloo', or one of sideband's {sorted(_CPU_BACKENDS)}."
        )
    return name


def _core_backend(backend: Any) -> str:
    """The backend name to hand to the core, or a clear error if it cannot run here."""
    name = _backend_name(backend)
    if name == "gloo":
        return types.Backend.NATIVE.value
    if not is_backend_available(name):
        hint = "use backend='gloo' (sideband's native CPU backend)"
        if name in _GPU_BACKENDS:
            raise BackendUnavailableError(
                f"Backend {name!r} needs a GPU backend, and none is available in this process "
                f"(no CUDA device, or torch.distributed without NCCL); {hint}."
            )
        raise BackendUnavailableError(
            f"Backend {name!r} is not available in this process; {hint}, or install "
            "'sideband[torch]' for torch's own gloo."
        )
    return name


def _to_op(op: Any) -> types.ReduceOp:
    """Accept sideband's ReduceOp, Ray's ReduceOp (matched by name) or a name."""
    if isinstance(op, types.ReduceOp):
        return op
    name = getattr(op, "name", op)
    if isinstance(name, str):
        try:
            return types.ReduceOp[name.upper()]
        except KeyError:
            pass
    raise CollectiveUsageError(
        f"Unknown reduce op {op!r}; use one of {[m.name for m in types.ReduceOp]} "
        "(sideband.collective.types.ReduceOp or ray.util.collective.types.ReduceOp)."
    )


def _check_rank_valid(g: Group, rank: int, what: str = "rank") -> None:
    """0 <= rank < world_size, else a ValueError (as Ray raises)."""
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool):
        raise CollectiveUsageError(f"{what} must be an int, got {rank!r}.")
    if rank < 0:
        raise CollectiveUsageError(
            f"{what} {rank} is negative (group {g.name!r}, called on rank {g.rank})."
        )
    if rank >= g.world_size:
        raise CollectiveUsageError(
            f"{what} {rank} must be less than the world size {g.world_size} "
            f"(group {g.name!r}, called on rank {g.rank})."
        )


# --- tensors ------------------------------------------------------------------------------------


def _torch() -> Any:
    """The torch module if the caller already imported it (a torch tensor implies it has)."""
    return sys.modules.get("torch")


def _is_torch(x: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def _is_cuda(x: Any) -> bool:
    from sideband.collective import cuda

    return cuda.is_cuda(x)


def _check_single_tensor_input(tensor: Any, what: str = "tensor") -> None:
    """numpy arrays, torch tensors (CPU or CUDA) and cupy arrays."""
    if isinstance(tensor, np.ndarray):
        return
    if _is_torch(tensor):
        if tensor.device.type not in ("cpu", "cuda"):
            raise BackendUnavailableError(
                f"{what} is on {tensor.device}; sideband.collective runs CPU and CUDA tensors. "
                "Move it with .cpu()."
            )
        return
    if type(tensor).__module__.split(".")[0] == "cupy" and _is_cuda(tensor):
        return
    raise CollectiveUsageError(
        f"Unrecognized {what} type {type(tensor).__name__!r}. Supported types are: "
        "numpy.ndarray, torch.Tensor (CPU or CUDA) and cupy.ndarray."
    )


def _check_tensor_list_input(tensor_list: Any, what: str = "tensor_list") -> None:
    """A non-empty ``list`` of supported tensors (Ray rejects tuples too)."""
    if not isinstance(tensor_list, list):
        raise CollectiveUsageError(
            f"{what} must be a list of tensors, got {type(tensor_list).__name__!r}."
        )
    if not tensor_list:
        raise CollectiveUsageError(f"{what} is an empty list of tensors.")
    for i, t in enumerate(tensor_list):
        _check_single_tensor_input(t, f"{what}[{i}]")


def _dtype_key(x: Any) -> str:
    """A comparable dtype name of a numpy array, torch tensor or cupy array."""
    dt = x.dtype
    return str(dt).replace("torch.", "") if _is_torch(x) else np.dtype(dt).name


def _as_torch_any(x: Any) -> Any:
    """A torch tensor sharing ``x``'s memory (numpy, torch or cupy)."""
    if _is_torch(x):
        return x.detach()
    if isinstance(x, np.ndarray):
        return _import_torch().from_numpy(x)
    from sideband.collective import cuda

    return cuda.as_torch(x)


def _as_numpy(x: Any) -> np.ndarray:
    """A numpy view sharing ``x``'s memory (no copy)."""
    if isinstance(x, np.ndarray):
        return x
    try:
        return x.detach().numpy()
    except TypeError as exc:  # e.g. bfloat16, which numpy has no type for
        raise CollectiveUsageError(
            f"torch dtype {x.dtype} has no numpy equivalent, so it cannot be used in a tensor "
            "list here; use float32 or pass a single tensor."
        ) from exc


def _byte_bounds(a: np.ndarray) -> tuple[int, int]:
    lib = getattr(np.lib, "array_utils", np)  # numpy >= 2 moved it
    low, high = lib.byte_bounds(a)
    return int(low), int(high)


def _writable(x: Any) -> Any:
    """``x``, or a writable alias of a read-only numpy array's memory (see the module docstring).

    Ray deserialises numpy task arguments read-only and its gloo path writes into them anyway;
    code written for it relies on that, so results land in the caller's array here too.
    """
    if not isinstance(x, np.ndarray) or x.flags.writeable:
        return x
    try:
        x.setflags(write=True)  # the array owns its memory and was merely flagged read-only
        return x
    except ValueError:
        pass  # the memory's owner is read-only (an object-store buffer): alias it below
    global _readonly_warned
    with _readonly_lock:
        if not _readonly_warned:
            _readonly_warned = True
            warnings.warn(
                "sideband.collective is writing a result into a read-only numpy array (as "
                "ray.util.collective does): Ray hands out task arguments read-only. Copy the "
                "array first (x = x.copy()) to avoid writing into Ray's object buffer.",
                RuntimeWarning,
                stacklevel=3,
            )
    if x.size == 0:
        return np.empty_like(x)
    low, high = _byte_bounds(x)
    raw = (ctypes.c_ubyte * (high - low)).from_address(low)
    return np.ndarray(
        x.shape, dtype=x.dtype, buffer=raw, offset=x.ctypes.data - low, strides=x.strides
    )


def _copy_into(dst: Any, src: Any) -> None:
    """Copy ``src`` into ``dst`` in place; either may be numpy, torch (CPU or CUDA) or cupy."""
    if _is_cuda(dst) or _is_cuda(src):
        _as_torch_any(dst).copy_(_as_torch_any(src))
    elif _is_torch(dst):
        torch = _torch()
        dst.detach().copy_(src if _is_torch(src) else torch.from_numpy(np.ascontiguousarray(src)))
    else:
        np.copyto(_writable(dst), _as_numpy(src), casting="no")


def _check_same_layout(
    tensors: Sequence[Any], shape: tuple[int, ...], dtype: str, what: str, g: Group
) -> None:
    """Every element has ``shape`` and ``dtype``, else a RuntimeError (as Ray raises)."""
    for i, t in enumerate(tensors):
        if tuple(t.shape) != shape:
            raise CollectiveUsageError(
                f"{what}[{i}] has shape {tuple(t.shape)}, expected {shape} (group {g.name!r}, "
                f"rank {g.rank}): every element must have the shape of the tensor."
            )
        if _dtype_key(t) != dtype:
            raise CollectiveUsageError(
                f"{what}[{i}] has dtype {_dtype_key(t)}, expected {dtype} (group "
                f"{g.name!r}, rank {g.rank})."
            )


def _no_gpu(what: str) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"sideband.collective.{what}() needs a multi-GPU backend, and sideband has none: it "
        "runs numpy arrays and CPU torch tensors. Use the single-tensor function "
        f"({what.removesuffix('_multigpu')}) with CPU tensors and backend='gloo'."
    )


# --- availability -------------------------------------------------------------------------------


def nccl_available() -> bool:
    """Whether a GPU (NCCL) backend can run in this process."""
    return is_backend_available("nccl")


def gloo_available() -> bool:
    """Whether ``backend="gloo"`` works: always, since sideband's native backend serves it."""
    return is_backend_available("gloo")


def is_backend_available(backend: str) -> bool:
    """Whether the named backend can run in this process (unknown names: False, as in Ray)."""
    try:
        name = _backend_name(backend)
    except CollectiveUsageError:
        return False
    if name == "gloo" or name in _CPU_BACKENDS:
        return True
    core = _core()
    check = getattr(core, "backend_available", None)
    if check is not None:
        return bool(check(name))
    # The core validates backend names as it forms a group: ask it without forming one.
    try:
        core._backend(name)
    except (BackendUnavailableError, InvalidArgumentError):
        return False
    return True


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


# --- groups -------------------------------------------------------------------------------------


def is_group_initialized(group_name: str) -> bool:
    """Whether this process has joined the group of that name.

    As in Ray, a group declared from the driver with :func:`create_collective_group` counts only
    once this process has joined it, which happens on its first collective call.
    """
    return bool(_core().is_group_initialized(group_name))


def init_collective_group(
    world_size: int,
    rank: int,
    backend: types.Backend = types.Backend.NCCL,
    group_name: str = "default",
    gloo_timeout: int = 30000,
) -> None:
    """Join a collective group from inside an actor; returns when every rank has joined.

    Args:
        world_size: the number of processes in the group.
        rank: this process's rank, ``0 <= rank < world_size``.
        backend: ``Backend.GLOO`` runs sideband's native CPU backend; ``Backend.NCCL`` (the
            default, as in Ray) needs a GPU backend.
        group_name: the group's name.
        gloo_timeout: milliseconds to wait for the other ranks, and for every operation.
    """
    _check_inside_actor("init_collective_group")
    if not group_name or not isinstance(group_name, str):
        raise CollectiveUsageError(f"group_name {group_name!r} needs to be a non-empty string.")
    if is_group_initialized(group_name):
        raise CollectiveUsageError(
            f"Trying to initialize group {group_name!r} a second time in this process; "
            "destroy_collective_group() it first."
        )
    for label, value in (("world_size", world_size), ("rank", rank)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise CollectiveUsageError(f"{label} must be an int, got {value!r}.")
    if world_size <= 0 or not 0 <= rank < world_size:
        raise CollectiveUsageError(
            f"rank {rank} and world_size {world_size} for group {group_name!r} must satisfy "
            "0 <= rank < world_size."
        )
    _core().init_group(
        int(world_size),
        int(rank),
        name=group_name,
        backend=_core_backend(backend),
        timeout_s=_timeout_s(gloo_timeout),
    )


def _timeout_s(gloo_timeout: int) -> float:
    if not isinstance(gloo_timeout, (int, float)) or gloo_timeout <= 0:
        raise CollectiveUsageError(
            f"gloo_timeout must be a positive number of milliseconds, got {gloo_timeout!r}."
        )
    return gloo_timeout / 1000.0


def create_collective_group(
    actors: list[Any],
    world_size: int,
    ranks: list[int],
    backend: types.Backend = types.Backend.NCCL,
    group_name: str = "default",
    gloo_timeout: int = 30000,
) -> None:
    """Declare, from the driver, a list of actors as a collective group.

    Each actor joins on its first collective call in that group, as with Ray; the actors need no
    ``init_collective_group`` call.

    Args:
        actors: the actors of the group.
        world_size: the number of actors.
        ranks: the rank of each actor, a permutation of ``0..len(actors)-1``.
        backend: ``Backend.GLOO`` runs sideband's native CPU backend.
        group_name: the group's name.
        gloo_timeout: milliseconds to wait for the other ranks, and for every operation.
    """
    if not group_name or not isinstance(group_name, str):
        raise CollectiveUsageError(f"group_name {group_name!r} needs to be a non-empty string.")
    actors = list(actors)
    ranks = [int(r) for r in ranks]
    if len(ranks) != len(actors):
        raise CollectiveUsageError(
            f"Each actor should correspond to one rank. Got {len(ranks)} ranks but "
            f"{len(actors)} actors (group {group_name!r})."
        )
    if world_size <= 0:
        raise CollectiveUsageError(f"World size must be greater than zero, got {world_size}.")
    if world_size != len(actors):
        raise CollectiveUsageError(
            f"world_size {world_size} differs from the number of actors {len(actors)} "
            f"(group {group_name!r})."
        )
    if sorted(ranks) != list(range(len(ranks))):
        raise CollectiveUsageError(
            f"Ranks must be a permutation of 0..{len(ranks) - 1}, got {ranks} "
            f"(group {group_name!r})."
        )
    _core().declare_group(
        actors,
        int(world_size),
        ranks,
        name=group_name,
        backend=_core_backend(backend),
        timeout_s=_timeout_s(gloo_timeout),
    )


def destroy_collective_group(group_name: str = "default") -> None:
    """Leave and free the group in this process; a group that does not exist is a no-op."""
    _check_inside_actor("destroy_collective_group")
    if not is_group_initialized(group_name):
        logger.warning("The group %r does not exist in this process.", group_name)
        return
    _core().destroy_group(group_name)


def get_rank(group_name: str = "default") -> int:
    """This process's rank in the group, or -1 if it has not joined it."""
    _check_inside_actor("get_rank")
    if not is_group_initialized(group_name):
        return -1
    return int(_core().get_group(group_name).rank)


def get_collective_group_size(group_name: str = "default") -> int:
    """The group's world size, or -1 if this process has not joined it."""
    _check_inside_actor("get_collective_group_size")
    if not is_group_initialized(group_name):
        return -1
    return int(_core().get_group(group_name).world_size)


def get_group_handle(group_name: str = "default") -> Group:
    """The :class:`sideband.Group` of that name (joining a declared group on first use)."""
    return _group(group_name, "get_group_handle")


# --- collectives --------------------------------------------------------------------------------


def allreduce(
    tensor: Any, group_name: str = "default", op: types.ReduceOp = types.ReduceOp.SUM
) -> None:
    """All-reduce ``tensor`` across the group, in place."""
    _check_single_tensor_input(tensor)
    g = _group(group_name, "allreduce")
    g.allreduce(_writable(tensor), op=_to_op(op))


def allreduce_multigpu(
    tensor_list: list, group_name: str = "default", op: types.ReduceOp = types.ReduceOp.SUM
) -> None:
    """Not available: sideband has no multi-GPU backend (raises BackendUnavailableError)."""
    raise _no_gpu("allreduce_multigpu")


def barrier(group_name: str = "default") -> None:
    """Block until every rank of the group has called barrier."""
    _group(group_name, "barrier").barrier()


def reduce(
    tensor: Any,
    dst_rank: int = 0,
    group_name: str = "default",
    op: types.ReduceOp = types.ReduceOp.SUM,
) -> None:
    """Reduce ``tensor`` across the group into ``dst_rank``'s tensor; others are left unchanged."""
    _check_single_tensor_input(tensor)
    g = _group(group_name, "reduce")
    _check_rank_valid(g, dst_rank, "dst_rank")
    target = _writable(tensor) if g.rank == dst_rank else tensor
    g.reduce(target, int(dst_rank), op=_to_op(op))


def reduce_multigpu(
    tensor_list: list,
    dst_rank: int = 0,
    dst_tensor: int = 0,
    group_name: str = "default",
    op: types.ReduceOp = types.ReduceOp.SUM,
) -> None:
    """Not available: sideband has no multi-GPU backend (raises BackendUnavailableError)."""
    raise _no_gpu("reduce_multigpu")


def broadcast(tensor: Any, src_rank: int = 0, group_name: str = "default") -> None:
    """Copy ``src_rank``'s tensor into every rank's tensor, in place."""
    _check_single_tensor_input(tensor)
    g = _group(group_name, "broadcast")
    _check_rank_valid(g, src_rank, "src_rank")
    target = _writable(tensor) if g.rank != src_rank else tensor
    g.broadcast(target, int(src_rank))


def broadcast_multigpu(
    tensor_list: list, src_rank: int = 0, src_tensor: int = 0, group_name: str = "default"
) -> None:
    """Not available: sideband has no multi-GPU backend (raises BackendUnavailableError)."""
    raise _no_gpu("broadcast_multigpu")


def allgather(tensor_list: list, tensor: Any, group_name: str = "default") -> None:
    """Gather every rank's ``tensor`` into ``tensor_list`` (one element per rank, in place).

    ``tensor_list`` must be a list of ``world_size`` tensors shaped like ``tensor``; numpy and
    torch elements may be mixed.
    """
    _check_single_tensor_input(tensor)
    _check_tensor_list_input(tensor_list)
    g = _group(group_name, "allgather")
    if len(tensor_list) != g.world_size:
        raise CollectiveUsageError(
            f"The tensor list passed to allgather has {len(tensor_list)} elements; it must have "
            f"exactly world_size={g.world_size} (group {group_name!r}, rank {g.rank})."
        )
    _check_same_layout(tensor_list, tuple(tensor.shape), _dtype_key(tensor), "tensor_list", g)
    gathered = g.allgather(tensor)
    for i, dst in enumerate(tensor_list):
        _copy_into(dst, gathered[i])


def allgather_multigpu(
    output_tensor_lists: list, input_tensor_list: list, group_name: str = "default"
) -> None:
    """Not available: sideband has no multi-GPU backend (raises BackendUnavailableError)."""
    raise _no_gpu("allgather_multigpu")


def reducescatter(
    tensor: Any,
    tensor_list: list,
    group_name: str = "default",
    op: types.ReduceOp = types.ReduceOp.SUM,
) -> None:
    """Reduce ``tensor_list`` element-wise across the group; rank r receives element r's result.

    ``tensor`` is the output (written in place); ``tensor_list`` holds ``world_size`` inputs
    shaped like it and is left unchanged.
    """
    _check_single_tensor_input(tensor)
    _check_tensor_list_input(tensor_list)
    g = _group(group_name, "reducescatter")
    if len(tensor_list) != g.world_size:
        raise CollectiveUsageError(
            f"The tensor list passed to reducescatter has {len(tensor_list)} elements; it must "
            f"have exactly world_size={g.world_size} (group {group_name!r}, rank {g.rank})."
        )
    _check_same_layout(tensor_list, tuple(tensor.shape), _dtype_key(tensor), "tensor_list", g)
    if all(isinstance(t, np.ndarray) for t in tensor_list):
        stacked = np.stack(tensor_list)
    else:
        # torch, bfloat16 or CUDA elements: stack with torch on the output's device.
        stacked = _import_torch().stack(
            [_as_torch_any(t).to(_as_torch_any(tensor).device) for t in tensor_list]
        )
        if type(tensor).__module__.split(".")[0] == "cupy":
            import cupy

            stacked = cupy.from_dlpack(stacked)
    g.reduce_scatter(stacked, op=_to_op(op), out=_writable(tensor))


def reducescatter_multigpu(
    output_tensor_list: list,
    input_tensor_lists: list,
    group_name: str = "default",
    op: types.ReduceOp = types.ReduceOp.SUM,
) -> None:
    """Not available: sideband has no multi-GPU backend (raises BackendUnavailableError)."""
    raise _no_gpu("reducescatter_multigpu")


def send(tensor: Any, dst_rank: int, group_name: str = "default") -> None:
    """Send ``tensor`` to ``dst_rank``; returns once it has been handed over."""
    _check_single_tensor_input(tensor)
    g = _group(group_name, "send")
    _check_rank_valid(g, dst_rank, "dst_rank")
    if dst_rank == g.rank:
        raise CollectiveUsageError(
            f"The destination rank {dst_rank} is this rank (group {group_name!r})."
        )
    g.send(tensor, int(dst_rank))


def send_multigpu(
    tensor: Any,
    dst_rank: int,
    dst_gpu_index: int,
    group_name: str = "default",
    n_elements: int = 0,
) -> None:
    """Not available: sideband has no multi-GPU backend (raises BackendUnavailableError)."""
    raise _no_gpu("send_multigpu")


def recv(tensor: Any, src_rank: int, group_name: str = "default") -> None:
    """Receive into ``tensor`` (in place) what ``src_rank`` sends."""
    _check_single_tensor_input(tensor)
    g = _group(group_name, "recv")
    _check_rank_valid(g, src_rank, "src_rank")
    if src_rank == g.rank:
        raise CollectiveUsageError(
            f"The source rank {src_rank} is this rank (group {group_name!r})."
        )
    g.recv(_writable(tensor), int(src_rank))


def recv_multigpu(
    tensor: Any,
    src_rank: int,
    src_gpu_index: int,
    group_name: str = "default",
    n_elements: int = 0,
) -> None:
    """Not available: sideband has no multi-GPU backend (raises BackendUnavailableError)."""
    raise _no_gpu("recv_multigpu")


def synchronize(gpu_id: int) -> None:
    """Wait for all work queued on GPU ``gpu_id``; a BackendUnavailableError without a GPU."""
    torch = _import_torch()
    if torch is None or not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"synchronize({gpu_id}) needs a CUDA device and torch with CUDA; none is available "
            "in this process. CPU collectives complete before they return, so drop the call."
        )
    torch.cuda.synchronize(gpu_id)
