"""Drop-in replacement for ``ray.util.collective``.

Switch one import line and code written for ``ray.util.collective``'s CPU path runs on sideband::

    import sideband.collective as col          # was: import ray.util.collective as col
    from sideband.collective.types import Backend, ReduceOp

Every public function of ``ray.util.collective`` exists here with the same name, signature,
defaults, return values and in-place semantics, translated onto :class:`sideband.Group`: the
checks are the core's (``api/checks.py``), raised as :class:`CollectiveUsageError` (both the
``ValueError`` and the ``RuntimeError`` Ray's callers catch). Differences, all deliberate:

- ``Backend.GLOO`` / ``"gloo"`` runs sideband's native CPU backend (shared memory between ranks
  on one host, TCP between hosts), not torch's gloo. ``"torch_gloo"`` runs torch's own gloo
  under sideband's rendezvous (needs torch). sideband's own names (``"auto"``, ``"native"``,
  ``"shm"``, ``"tcp"``) are accepted too.
- Group names may not contain ``"/"`` (an ``InvalidArgumentError``, a ``ValueError``).
- ``Backend.NCCL`` (still the default, as in Ray) runs torch's NCCL (``"torch_nccl"``) where torch
  with CUDA is available, and raises :class:`sideband.BackendUnavailableError` (a
  ``RuntimeError``) otherwise.
- Tensors may be numpy arrays, torch tensors (CPU or CUDA, any dtype incl. bfloat16) and cupy
  arrays; on ``"gloo"`` groups CUDA tensors are staged through pinned host memory or moved by
  CUDA IPC (see docs/gpu.md). The ``*_multigpu`` functions (several GPUs per process) raise
  :class:`sideband.BackendUnavailableError`: sideband runs one GPU per process.
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

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from sideband.collective import dropin_tensors as tk
from sideband.collective import types
from sideband.collective.api import checks, driver, table
from sideband.collective.api.group import Group
from sideband.errors import (
    BackendUnavailableError,
    CollectiveUsageError,
    InvalidArgumentError,
)

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

_GPU_BACKENDS = {"torch_nccl"}


@contextlib.contextmanager
def _usage() -> Iterator[None]:
    """The core's argument errors as Ray's callers catch them (ValueError and RuntimeError)."""
    try:
        yield
    except CollectiveUsageError:
        raise
    except InvalidArgumentError as e:
        raise CollectiveUsageError(str(e)) from e


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
    return table.get_group(group_name)


def _core_backend(backend: Any) -> str:
    """The backend name to hand to the core, or a clear error if it cannot run here."""
    with _usage():
        name = checks.backend(backend)
    if not table.backend_available(name):
        hint = "use backend='gloo' (sideband's native CPU backend)"
        if name in _GPU_BACKENDS:
            raise BackendUnavailableError(
                f"Backend {backend!r} needs a GPU backend, and none is available in this process "
                f"(no CUDA device, or torch.distributed without NCCL); {hint}."
            )
        raise BackendUnavailableError(
            f"Backend {backend!r} is not available in this process; {hint}, or install "
            "'sideband[torch]' for torch's own gloo."
        )
    return name


def _to_op(op: Any) -> types.ReduceOp:
    with _usage():
        return checks.reduce_op(op)


def _check_rank_valid(g: Group, rank: Any, what: str) -> int:
    with _usage():
        return checks.rank(g, rank, what, "sideband.collective")


def _no_gpu(what: str) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"sideband.collective.{what}() is a multi-GPU call (several GPUs in one process), and "
        f"sideband runs one GPU per process. Use the single-tensor function "
        f"({what.removesuffix('_multigpu')}) "
        "in one actor per GPU, with CUDA tensors and backend='nccl' (or 'gloo', which stages "
        "them through pinned memory)."
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
    return table.backend_available(backend)


# --- groups -------------------------------------------------------------------------------------


def is_group_initialized(group_name: str) -> bool:
    """Whether this process has joined the group of that name.

    As in Ray, a group declared from the driver with :func:`create_collective_group` counts only
    once this process has joined it, which happens on its first collective call.
    """
    return table.is_group_initialized(group_name)


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
    with _usage():
        checks.name(group_name)
        world_size, rank = checks.world(world_size, rank)
    if is_group_initialized(group_name):
        raise CollectiveUsageError(
            f"Trying to initialize group {group_name!r} a second time in this process; "
            "destroy_collective_group() it first."
        )
    table.init_group(
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
    with _usage():
        checks.name(group_name)
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
    driver.declare_group(
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
    table.destroy_group(group_name)


def get_rank(group_name: str = "default") -> int:
    """This process's rank in the group, or -1 if it has not joined it."""
    _check_inside_actor("get_rank")
    if not is_group_initialized(group_name):
        return -1
    return int(table.get_group(group_name).rank)


def get_collective_group_size(group_name: str = "default") -> int:
    """The group's world size, or -1 if this process has not joined it."""
    _check_inside_actor("get_collective_group_size")
    if not is_group_initialized(group_name):
        return -1
    return int(table.get_group(group_name).world_size)


def get_group_handle(group_name: str = "default") -> Group:
    """The :class:`sideband.Group` of that name (joining a declared group on first use)."""
    return _group(group_name, "get_group_handle")


# --- collectives --------------------------------------------------------------------------------


def allreduce(
    tensor: Any, group_name: str = "default", op: types.ReduceOp = types.ReduceOp.SUM
) -> None:
    """All-reduce ``tensor`` across the group, in place."""
    tk.check_single_tensor_input(tensor)
    g = _group(group_name, "allreduce")
    g.allreduce(tk.writable(tensor), op=_to_op(op))


def allreduce_multigpu(
    tensor_list: list, group_name: str = "default", op: types.ReduceOp = types.ReduceOp.SUM
) -> None:
    """Not available: sideband runs one GPU per process (raises BackendUnavailableError)."""
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
    tk.check_single_tensor_input(tensor)
    g = _group(group_name, "reduce")
    dst_rank = _check_rank_valid(g, dst_rank, "dst_rank")
    target = tk.writable(tensor) if g.rank == dst_rank else tensor
    g.reduce(target, int(dst_rank), op=_to_op(op))


def reduce_multigpu(
    tensor_list: list,
    dst_rank: int = 0,
    dst_tensor: int = 0,
    group_name: str = "default",
    op: types.ReduceOp = types.ReduceOp.SUM,
) -> None:
    """Not available: sideband runs one GPU per process (raises BackendUnavailableError)."""
    raise _no_gpu("reduce_multigpu")


def broadcast(tensor: Any, src_rank: int = 0, group_name: str = "default") -> None:
    """Copy ``src_rank``'s tensor into every rank's tensor, in place."""
    tk.check_single_tensor_input(tensor)
    g = _group(group_name, "broadcast")
    src_rank = _check_rank_valid(g, src_rank, "src_rank")
    target = tk.writable(tensor) if g.rank != src_rank else tensor
    g.broadcast(target, int(src_rank))


def broadcast_multigpu(
    tensor_list: list, src_rank: int = 0, src_tensor: int = 0, group_name: str = "default"
) -> None:
    """Not available: sideband runs one GPU per process (raises BackendUnavailableError)."""
    raise _no_gpu("broadcast_multigpu")


def allgather(tensor_list: list, tensor: Any, group_name: str = "default") -> None:
    """Gather every rank's ``tensor`` into ``tensor_list`` (one element per rank, in place).

    ``tensor_list`` must be a list of ``world_size`` tensors shaped like ``tensor``; numpy and
    torch elements may be mixed.
    """
    tk.check_single_tensor_input(tensor)
    tk.check_tensor_list_input(tensor_list)
    g = _group(group_name, "allgather")
    if len(tensor_list) != g.world_size:
        raise CollectiveUsageError(
            f"The tensor list passed to allgather has {len(tensor_list)} elements; it must have "
            f"exactly world_size={g.world_size} (group {group_name!r}, rank {g.rank})."
        )
    tk.check_same_layout(tensor_list, tuple(tensor.shape), tk.dtype_name(tensor), "tensor_list", g)
    gathered = g.allgather(tensor)
    for i, dst in enumerate(tensor_list):
        tk.copy_into(dst, gathered[i])


def allgather_multigpu(
    output_tensor_lists: list, input_tensor_list: list, group_name: str = "default"
) -> None:
    """Not available: sideband runs one GPU per process (raises BackendUnavailableError)."""
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
    tk.check_single_tensor_input(tensor)
    tk.check_tensor_list_input(tensor_list)
    g = _group(group_name, "reducescatter")
    if len(tensor_list) != g.world_size:
        raise CollectiveUsageError(
            f"The tensor list passed to reducescatter has {len(tensor_list)} elements; it must "
            f"have exactly world_size={g.world_size} (group {group_name!r}, rank {g.rank})."
        )
    tk.check_same_layout(tensor_list, tuple(tensor.shape), tk.dtype_name(tensor), "tensor_list", g)
    stacked = tk.stack(tensor_list, tensor)
    g.reduce_scatter(stacked, op=_to_op(op), out=tk.writable(tensor))


def reducescatter_multigpu(
    output_tensor_list: list,
    input_tensor_lists: list,
    group_name: str = "default",
    op: types.ReduceOp = types.ReduceOp.SUM,
) -> None:
    """Not available: sideband runs one GPU per process (raises BackendUnavailableError)."""
    raise _no_gpu("reducescatter_multigpu")


def send(tensor: Any, dst_rank: int, group_name: str = "default") -> None:
    """Send ``tensor`` to ``dst_rank``; returns once it has been handed over."""
    tk.check_single_tensor_input(tensor)
    g = _group(group_name, "send")
    dst_rank = _check_rank_valid(g, dst_rank, "dst_rank")
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
    """Not available: sideband runs one GPU per process (raises BackendUnavailableError)."""
    raise _no_gpu("send_multigpu")


def recv(tensor: Any, src_rank: int, group_name: str = "default") -> None:
    """Receive into ``tensor`` (in place) what ``src_rank`` sends."""
    tk.check_single_tensor_input(tensor)
    g = _group(group_name, "recv")
    src_rank = _check_rank_valid(g, src_rank, "src_rank")
    if src_rank == g.rank:
        raise CollectiveUsageError(
            f"The source rank {src_rank} is this rank (group {group_name!r})."
        )
    g.recv(tk.writable(tensor), int(src_rank))


def recv_multigpu(
    tensor: Any,
    src_rank: int,
    src_gpu_index: int,
    group_name: str = "default",
    n_elements: int = 0,
) -> None:
    """Not available: sideband runs one GPU per process (raises BackendUnavailableError)."""
    raise _no_gpu("recv_multigpu")


def synchronize(gpu_id: int) -> None:
    """Wait for all work queued on GPU ``gpu_id``; a BackendUnavailableError without a GPU."""
    torch = tk.import_torch()
    if torch is None or not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"synchronize({gpu_id}) needs a CUDA device and torch with CUDA; none is available "
            "in this process. CPU collectives complete before they return, so drop the call."
        )
    torch.cuda.synchronize(gpu_id)
