"""Turn numpy arrays and CPU torch tensors into flat, contiguous numpy views, and back.

Zero-copy where the input is contiguous: a torch CPU tensor is viewed through ``Tensor.numpy()``
(bfloat16, which numpy lacks, through an int16 view). A non-contiguous input is copied into a
contiguous array and, for in-place ops, copied back when the op is done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sideband.errors import BackendUnavailableError, InvalidArgumentError

_KINDS = "biuf"  # bool, signed, unsigned, float
_NAMES: dict[np.dtype, str] = {}


@dataclass
class Buffer:
    """A validated array argument of one rank."""

    obj: Any  # what the user passed
    arr: np.ndarray  # flat, C-contiguous data of ``obj`` (a view, or a copy if non-contiguous)
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, or "bfloat16"
    writeback: Callable[[], None] | None  # copies ``arr`` back into ``obj`` (non-contiguous)

    @property
    def nbytes(self) -> int:
        return self.arr.nbytes

    def finish(self) -> None:
        if self.writeback is not None:
            self.writeback()


def is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def _from_torch(x: Any, what: str) -> tuple[np.ndarray, str]:
    import torch

    if x.device.type != "cpu":
        raise BackendUnavailableError(
            f"{what}: a {x.device.type} tensor was passed, but the native backend moves CPU "
            "memory only; move it to the CPU first (tensor.cpu())"
        )
    t = x.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy(), "bfloat16"
    if t.is_complex():
        raise InvalidArgumentError(f"{what}: complex tensors are not supported")
    return t.numpy(), str(t.dtype).replace("torch.", "")


def as_buffer(x: Any, what: str, *, writable: bool) -> Buffer:
    """Validate ``x`` and expose it as a flat contiguous array (``writable`` for in-place ops)."""
    if isinstance(x, np.ndarray):
        base = x
        dtype = _NAMES.get(x.dtype)  # dtype.name is slow enough to show in small ops
        if dtype is None:
            dtype = _NAMES[x.dtype] = x.dtype.name
        if x.dtype.kind not in _KINDS:
            raise InvalidArgumentError(
                f"{what}: dtype {x.dtype} is not supported; use bool, an integer or a float dtype "
                "(or the *_object variants for Python objects)"
            )
    elif is_torch(x):
        base, dtype = _from_torch(x, what)
    else:
        raise InvalidArgumentError(
            f"{what}: expected a numpy array or a CPU torch tensor, got {type(x).__name__}; use "
            "the *_object variants for other Python objects"
        )
    if writable and not base.flags.writeable:
        raise InvalidArgumentError(
            f"{what}: the array is read-only but this op writes its result into it; pass a "
            "writable array (e.g. arr.copy())"
        )
    if base.flags.c_contiguous:
        return Buffer(x, base.reshape(-1), tuple(base.shape), dtype, None)
    flat = np.ascontiguousarray(base).reshape(-1)

    def writeback() -> None:
        base[...] = flat.reshape(base.shape)

    return Buffer(x, flat, tuple(base.shape), dtype, writeback if writable else None)


def empty_like_buffer(buf: Buffer, shape: tuple[int, ...]) -> Any:
    """A new array of ``shape`` and ``buf``'s dtype, of the same kind (numpy or torch)."""
    if is_torch(buf.obj):
        import torch

        return torch.empty(shape, dtype=buf.obj.dtype)
    return np.empty(shape, dtype=buf.arr.dtype)


def dtype_from_name(name: str) -> np.dtype:
    return np.dtype("int16") if name == "bfloat16" else np.dtype(name)
