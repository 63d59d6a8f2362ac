"""The drop-in's tensor kit: ray.util.collective's list-of-tensors arguments, checked and moved
the way Ray's API defines them (numpy, torch CPU or CUDA, and cupy elements may be mixed)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sideband.collective.runtime.arrays import as_torch, dtype_name, is_cuda, is_cupy
from sideband.collective.runtime.buffers import as_buffer
from sideband.errors import BackendUnavailableError, CollectiveUsageError

if TYPE_CHECKING:
    from sideband.collective.api.group import Group


def _torch() -> Any:
    """The torch module if the caller already imported it (a torch tensor implies it has)."""
    return sys.modules.get("torch")


def _is_torch(x: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def check_single_tensor_input(tensor: Any, what: str = "tensor") -> None:
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
    if is_cupy(tensor) and is_cuda(tensor):
        return
    raise CollectiveUsageError(
        f"Unrecognized {what} type {type(tensor).__name__!r}. Supported types are: "
        "numpy.ndarray, torch.Tensor (CPU or CUDA) and cupy.ndarray."
    )


def check_tensor_list_input(tensor_list: Any, what: str = "tensor_list") -> None:
    """A non-empty ``list`` of supported tensors (Ray rejects tuples too)."""
    if not isinstance(tensor_list, list):
        raise CollectiveUsageError(
            f"{what} must be a list of tensors, got {type(tensor_list).__name__!r}."
        )
    if not tensor_list:
        raise CollectiveUsageError(f"{what} is an empty list of tensors.")
    for i, t in enumerate(tensor_list):
        check_single_tensor_input(t, f"{what}[{i}]")


def as_torch_any(x: Any) -> Any:
    """A torch tensor sharing ``x``'s memory (numpy, torch or cupy)."""
    return as_torch(x).detach() if _is_torch(x) else as_torch(x)


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


def copy_into(dst: Any, src: Any, what: str, write_readonly: bool = False) -> None:
    """Copy ``src`` into ``dst`` in place; either may be numpy, torch (CPU or CUDA) or cupy.

    A read-only numpy ``dst`` is refused as the core refuses it (``InvalidArgumentError``),
    unless ``write_readonly``.
    """
    if is_cuda(dst) or is_cuda(src):
        as_torch_any(dst).copy_(as_torch_any(src))
    elif _is_torch(dst):
        torch = _torch()
        dst.detach().copy_(src if _is_torch(src) else torch.from_numpy(np.ascontiguousarray(src)))
    else:
        buf = as_buffer(dst, what, writable=True, fill=False, write_readonly=write_readonly)
        np.copyto(buf.arr, _as_numpy(src).reshape(-1), casting="no")
        buf.finish()


def check_same_layout(
    tensors: Sequence[Any], shape: tuple[int, ...], dtype: str, what: str, g: Group
) -> None:
    """Every element has ``shape`` and ``dtype``, else a RuntimeError (as Ray raises)."""
    for i, t in enumerate(tensors):
        if tuple(t.shape) != shape:
            raise CollectiveUsageError(
                f"{what}[{i}] has shape {tuple(t.shape)}, expected {shape} (group {g.name!r}, "
                f"rank {g.rank}): every element must have the shape of the tensor."
            )
        if dtype_name(t) != dtype:
            raise CollectiveUsageError(
                f"{what}[{i}] has dtype {dtype_name(t)}, expected {dtype} (group "
                f"{g.name!r}, rank {g.rank})."
            )


def stack(tensor_list: list, like: Any) -> Any:
    """The elements of ``tensor_list`` as one (world_size, ...) array of ``like``'s kind."""
    if all(isinstance(x, np.ndarray) for x in tensor_list):
        return np.stack(tensor_list)
    # torch, bfloat16 or CUDA elements: stack with torch on the output's device.
    import torch

    stacked = torch.stack([as_torch_any(x).to(as_torch_any(like).device) for x in tensor_list])
    if is_cupy(like):
        import cupy

        return cupy.from_dlpack(stacked)
    return stacked


def import_torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch
