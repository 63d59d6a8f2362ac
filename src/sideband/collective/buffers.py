"""Turn numpy arrays and torch tensors into flat, contiguous numpy views, and back.

Zero-copy where the input is contiguous: a torch CPU tensor is viewed through ``Tensor.numpy()``
(bfloat16, which numpy lacks, through an int16 view; fp8 through a uint8 view). A non-contiguous
input is copied into a contiguous array and, for in-place ops, copied back when the op is done.
CUDA tensors (torch, cupy) on the native path are staged through pinned host memory
(``cuda.staged_buffer``): the Buffer gets its memory from ``stage`` when the op starts.
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
    # CUDA inputs: attaches pinned host memory (filled from the device) as the op starts.
    stage: Callable[[Any, str], None] | None = None

    @property
    def nbytes(self) -> int:
        return self.arr.nbytes

    def finish(self) -> None:
        if self.writeback is not None:
            self.writeback()


def is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


# torch dtypes numpy lacks, moved as integers of the same width (reduced by torch, see ops.py).
_TORCH_ONLY = {
    "bfloat16": "int16",
    "float8_e4m3fn": "uint8",
    "float8_e5m2": "uint8",
    "float8_e4m3fnuz": "uint8",
    "float8_e5m2fnuz": "uint8",
}


def torch_dtype(t: Any, what: str) -> tuple[str, np.dtype]:
    """sideband's dtype name of torch tensor ``t`` and the numpy dtype its memory is viewed as."""
    name = str(t.dtype).replace("torch.", "")
    if name in _TORCH_ONLY:
        return name, np.dtype(_TORCH_ONLY[name])
    if t.is_complex():
        raise InvalidArgumentError(f"{what}: complex tensors are not supported")
    try:
        return name, np.dtype(name)
    except TypeError:
        raise InvalidArgumentError(f"{what}: torch dtype {t.dtype} is not supported") from None


def _from_torch(x: Any, what: str) -> tuple[np.ndarray, str]:
    import torch

    if x.device.type != "cpu":
        raise BackendUnavailableError(
            f"{what}: a {x.device.type} tensor was passed, but the native backend moves CPU "
            "and CUDA memory only; move it to the CPU first (tensor.cpu())"
        )
    t = x.detach()
    name, np_dtype = torch_dtype(t, what)
    if name in _TORCH_ONLY:
        return t.view(getattr(torch, np_dtype.name)).numpy(), name
    return t.numpy(), name


def as_buffer(x: Any, what: str, *, writable: bool, fill: bool = True) -> Buffer:
    """Validate ``x`` and expose it as a flat contiguous array (``writable`` for in-place ops).

    ``fill=False``: the op only writes ``x`` (an output), so a staged CUDA tensor's contents
    need not be copied to the host first.
    """
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
    elif is_torch(x) and x.device.type == "cpu":
        base, dtype = _from_torch(x, what)
    elif _is_cuda(x):
        from sideband.collective import cuda

        return cuda.staged_buffer(x, what, writable, fill)
    elif is_torch(x):
        base, dtype = _from_torch(x, what)  # raises: neither CPU nor CUDA
    else:
        raise InvalidArgumentError(
            f"{what}: expected a numpy array or a torch tensor (CPU or CUDA) or a cupy array, got "
            f"{type(x).__name__}; use "
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


def _is_cuda(x: Any) -> bool:
    from sideband.collective import cuda

    return cuda.is_cuda(x)


def empty_like_buffer(buf: Buffer, shape: tuple[int, ...]) -> Any:
    """A new array of ``shape`` and ``buf``'s dtype, of the same kind (numpy, torch or cupy) and
    device."""
    if buf.stage is not None:
        from sideband.collective import cuda

        return cuda.empty_like(buf.obj, shape)
    if is_torch(buf.obj):
        import torch

        return torch.empty(shape, dtype=buf.obj.dtype)
    return np.empty(shape, dtype=buf.arr.dtype)


def dtype_from_name(name: str) -> np.dtype:
    return np.dtype(_TORCH_ONLY.get(name, name))
