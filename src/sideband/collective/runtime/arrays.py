"""What kind of array a user passed (numpy, torch CPU or CUDA, cupy), and its dtype's name.

The one place that recognises array kinds and names dtypes: numpy's names, plus the torch dtypes
numpy lacks (bfloat16, the fp8 kinds), which move as integers of the same width. torch and cupy
are imported only when such an array is passed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sideband.errors import InvalidArgumentError

# torch dtypes numpy lacks, moved as integers of the same width (reduced by torch: runtime/reduce).
TORCH_ONLY = {
    "bfloat16": "int16",
    "float8_e4m3fn": "uint8",
    "float8_e5m2": "uint8",
    "float8_e4m3fnuz": "uint8",
    "float8_e5m2fnuz": "uint8",
}
FP8 = tuple(k for k in TORCH_ONLY if k.startswith("float8"))

# numpy dtype -> name: dtype.name is slow enough to show in small ops (read by buffers too).
DTYPE_NAMES: dict[np.dtype, str] = {}


def is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def is_cuda(x: Any) -> bool:
    """Whether ``x`` is a CUDA array (torch CUDA tensor, or cupy-like)."""
    dev = getattr(x, "device", None)
    if dev is not None and getattr(dev, "type", None) == "cuda" and hasattr(x, "data_ptr"):
        return True
    return hasattr(x, "__cuda_array_interface__") and hasattr(x, "__dlpack__")


def is_cupy(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def as_torch(x: Any) -> Any:
    """``x`` (torch, or a CUDA array exposing ``__dlpack__``) as a torch tensor sharing memory."""
    import torch

    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    return torch.from_dlpack(x)


def like_input(x: Any, t: Any) -> Any:
    """``t`` (torch) as the kind of array ``x`` is (cupy in, cupy out)."""
    if is_cupy(x):
        import cupy

        return cupy.from_dlpack(t)
    return t


def dtype_name(x: Any) -> str:
    """sideband's name of ``x``'s dtype: numpy's, or torch's for the dtypes numpy lacks."""
    dt = x.dtype
    if isinstance(dt, np.dtype):
        name = DTYPE_NAMES.get(dt)
        if name is None:
            name = DTYPE_NAMES[dt] = dt.name
        return name
    if is_torch(x):
        return str(dt).replace("torch.", "")
    return np.dtype(dt).name  # cupy


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype the memory of a ``name`` array is viewed as."""
    return np.dtype(TORCH_ONLY.get(name, name))


def torch_dtype(t: Any, what: str) -> tuple[str, np.dtype]:
    """sideband's dtype name of torch tensor ``t`` and the numpy dtype its memory is viewed as."""
    name = dtype_name(t)
    if name in TORCH_ONLY:
        return name, np.dtype(TORCH_ONLY[name])
    if t.is_complex():
        raise InvalidArgumentError(f"{what}: complex tensors are not supported")
    try:
        return name, np.dtype(name)
    except TypeError:
        raise InvalidArgumentError(f"{what}: torch dtype {t.dtype} is not supported") from None


def empty_like(x: Any, shape: tuple[int, ...], dtype: str | None = None) -> Any:
    """A new array of ``shape`` of ``x``'s kind, device and (unless given) dtype."""
    if isinstance(x, np.ndarray):
        return np.empty(shape, dtype=x.dtype if dtype is None else numpy_dtype(dtype))
    import torch

    t = as_torch(x) if is_cuda(x) else x
    if not is_torch(t):
        raise InvalidArgumentError(f"cannot make an output like {type(x).__name__}")
    dt = t.dtype if dtype is None else getattr(torch, dtype)
    return like_input(x, torch.empty(shape, dtype=dt, device=t.device))
