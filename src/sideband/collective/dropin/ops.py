"""The drop-in's collectives and point-to-point ops, as ``ray.util.collective`` names them."""

from __future__ import annotations

from typing import Any

import numpy as np

from sideband.collective import types
from sideband.collective.api import checks
from sideband.collective.dropin import tensors as tk
from sideband.collective.dropin.groups import _check_rank_valid, _group, _to_op, _usage
from sideband.collective.runtime.buffers import check_writable
from sideband.errors import BackendUnavailableError, CollectiveUsageError


def _no_gpu(what: str) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"sideband.collective.{what}() is a multi-GPU call (several GPUs in one process), and "
        f"sideband runs one GPU per process. Use the single-tensor function "
        f"({what.removesuffix('_multigpu')}) "
        "in one actor per GPU, with CUDA tensors and backend='nccl' (or 'gloo', which stages "
        "them through pinned memory)."
    )


# --- collectives --------------------------------------------------------------------------------


def allreduce(
    tensor: Any,
    group_name: str = "default",
    op: types.ReduceOp = types.ReduceOp.SUM,
    *,
    write_readonly: bool = False,
) -> None:
    """All-reduce ``tensor`` across the group, in place.

    A read-only numpy ``tensor`` (as Ray hands out arguments) raises CollectiveUsageError unless
    ``write_readonly=True`` (so for every function here that writes into a tensor).
    """
    tk.check_single_tensor_input(tensor)
    g = _group(group_name, "allreduce")
    with _usage():
        g.allreduce(tensor, op=_to_op(op), write_readonly=write_readonly)


def allreduce_multigpu(
    tensor_list: list, group_name: str = "default", op: types.ReduceOp = types.ReduceOp.SUM
) -> None:
    """Not available: sideband runs one GPU per process (raises BackendUnavailableError)."""
    raise _no_gpu("allreduce_multigpu")


def barrier(group_name: str = "default") -> None:
    """Block until every rank of the group has called barrier."""
    g = _group(group_name, "barrier")
    with _usage():
        g.barrier()


def reduce(
    tensor: Any,
    dst_rank: int = 0,
    group_name: str = "default",
    op: types.ReduceOp = types.ReduceOp.SUM,
    *,
    write_readonly: bool = False,
) -> None:
    """Reduce ``tensor`` across the group into ``dst_rank``'s tensor; others are left unchanged."""
    tk.check_single_tensor_input(tensor)
    g = _group(group_name, "reduce")
    dst_rank = _check_rank_valid(g, dst_rank, "dst_rank")
    with _usage():
        g.reduce(tensor, int(dst_rank), op=_to_op(op), write_readonly=write_readonly)


def reduce_multigpu(
    tensor_list: list,
    dst_rank: int = 0,
    dst_tensor: int = 0,
    group_name: str = "default",
    op: types.ReduceOp = types.ReduceOp.SUM,
) -> None:
    """Not available: sideband runs one GPU per process (raises BackendUnavailableError)."""
    raise _no_gpu("reduce_multigpu")


def broadcast(
    tensor: Any, src_rank: int = 0, group_name: str = "default", *, write_readonly: bool = False
) -> None:
    """Copy ``src_rank``'s tensor into every rank's tensor, in place."""
    tk.check_single_tensor_input(tensor)
    g = _group(group_name, "broadcast")
    src_rank = _check_rank_valid(g, src_rank, "src_rank")
    with _usage():
        g.broadcast(tensor, int(src_rank), write_readonly=write_readonly)


def broadcast_multigpu(
    tensor_list: list, src_rank: int = 0, src_tensor: int = 0, group_name: str = "default"
) -> None:
    """Not available: sideband runs one GPU per process (raises BackendUnavailableError)."""
    raise _no_gpu("broadcast_multigpu")


def allgather(
    tensor_list: list, tensor: Any, group_name: str = "default", *, write_readonly: bool = False
) -> None:
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
    what = checks.what(g, "allgather")
    with _usage():
        for i, dst in enumerate(tensor_list):  # refused before anything moves
            if isinstance(dst, np.ndarray):
                check_writable(dst, f"{what} (tensor_list[{i}])", write_readonly)
        gathered = g.allgather(tensor)
        for i, dst in enumerate(tensor_list):
            tk.copy_into(dst, gathered[i], f"{what} (tensor_list[{i}])", write_readonly)


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
    *,
    write_readonly: bool = False,
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
    with _usage():
        g.reduce_scatter(stacked, op=_to_op(op), out=tensor, write_readonly=write_readonly)


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
    with _usage():
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


def recv(
    tensor: Any, src_rank: int, group_name: str = "default", *, write_readonly: bool = False
) -> None:
    """Receive into ``tensor`` (in place) what ``src_rank`` sends."""
    tk.check_single_tensor_input(tensor)
    g = _group(group_name, "recv")
    src_rank = _check_rank_valid(g, src_rank, "src_rank")
    if src_rank == g.rank:
        raise CollectiveUsageError(
            f"The source rank {src_rank} is this rank (group {group_name!r})."
        )
    with _usage():
        g.recv(tensor, int(src_rank), write_readonly=write_readonly)


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
