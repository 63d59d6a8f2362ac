"""Torch tensors and numpy arrays as flat bytes, and back: the only module that knows the kinds.

The transport moves bytes; this module turns a producer's arrays into byte copies and a
consumer's byte blocks into arrays of the right shape and dtype, without copying where it can.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sideband.errors import InvalidArgumentError

ALIGN = 64


def is_torch(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "element_size")


def describe(x: Any, i: int) -> tuple[Any, Any, int]:
    """(shape, dtype, nbytes) of array ``i`` of an object; refuses what cannot travel."""
    if is_torch(x):
        if x.device.type != "cpu":
            raise InvalidArgumentError(
                f"tensor {i} is on {x.device}; tensor_transport='sideband' moves CPU tensors "
                "(use 'nccl', 'nixl' or 'cuda_ipc' for GPU tensors, or .cpu() it first)"
            )
        import torch

        if x.layout is not torch.strided:
            raise InvalidArgumentError(f"tensor {i} has layout {x.layout}; only dense tensors")
        return x.shape, x.dtype, x.numel() * x.element_size()
    if isinstance(x, np.ndarray):
        if x.dtype.hasobject:
            raise InvalidArgumentError(f"array {i} has dtype {x.dtype}, which holds objects")
        return x.shape, x.dtype, x.nbytes
    raise InvalidArgumentError(f"object {i} of type {type(x).__name__} is not a tensor or array")


def layout(sizes: list[int]) -> tuple[list[int], int]:
    """Offsets of arrays packed one after another (each 64-byte aligned) and the total size."""
    offsets, end = [], 0
    for n in sizes:
        offsets.append(end)
        end += (n + ALIGN - 1) // ALIGN * ALIGN
    return offsets, end


def copy_into(dst_u8: np.ndarray, x: Any) -> None:
    """Copy array ``x`` (any strides) into the contiguous bytes ``dst_u8``."""
    if dst_u8.size == 0:
        return
    if is_torch(x):
        import torch

        with torch.no_grad():
            typed_t(dst_u8, x.shape, x.dtype).copy_(x)
    else:
        np.copyto(dst_u8.view(x.dtype).reshape(x.shape), x)


def is_contiguous(x: Any) -> bool:
    if is_torch(x):
        return bool(x.is_contiguous())
    return bool(x.flags.c_contiguous)


def to_bytes(x: Any) -> bytes:
    """A small array's bytes (for objects that travel inline, in Ray's own metadata)."""
    if is_torch(x):
        if x.numel() == 0:
            return b""
        return x.detach().contiguous().reshape(-1).view(_torch_u8()).numpy().tobytes()
    return np.ascontiguousarray(x).tobytes()


def u8_of(x: Any) -> np.ndarray:
    """The bytes of a contiguous array the caller owns (a target buffer), as a writable view."""
    if is_torch(x):
        if x.numel() == 0:
            return np.empty(0, np.uint8)
        return x.detach().reshape(-1).view(_torch_u8()).numpy()
    return x.reshape(-1).view(np.uint8)


def typed(owner_u8: np.ndarray, shape: Any, dtype: Any, kind_torch: bool) -> Any:
    """An array of ``shape``/``dtype`` over the bytes ``owner_u8`` (which it keeps alive)."""
    return typed_t(owner_u8, shape, dtype) if kind_torch else typed_np(owner_u8, shape, dtype)


def typed_t(owner_u8: np.ndarray, shape: Any, dtype: Any) -> Any:
    import torch

    if owner_u8.size == 0:
        return torch.empty(shape, dtype=dtype)
    # from_numpy holds owner_u8 itself, so whatever watches owner_u8 sees the tensor's lifetime.
    return torch.from_numpy(owner_u8).view(dtype).view(shape)


def typed_np(owner_u8: np.ndarray, shape: Any, dtype: Any) -> np.ndarray:
    return owner_u8.view(np.dtype(dtype)).reshape(shape)


def _torch_u8() -> Any:
    import torch

    return torch.uint8
