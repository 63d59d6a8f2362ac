"""Validated array arguments: flat, contiguous numpy views of what the user passed, and back.

Zero-copy where the input is contiguous: a torch CPU tensor is viewed through ``Tensor.numpy()``
(bfloat16, which numpy lacks, through an int16 view; fp8 through a uint8 view). A non-contiguous
input is copied into a contiguous array and, for in-place ops, copied back when the op is done.
CUDA tensors (torch, cupy) are staged through pinned host memory on the native path: the
Buffer gets its memory from ``stage(pool, key)`` when the op starts.

Read-only numpy arrays (Ray hands out every numpy argument and ``ray.get`` result read-only, over
its object store's memory) are refused by ops that write into them, unless the caller passes
``write_readonly=True``: then the op writes through a writable alias of the same memory.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sideband.collective.runtime.arrays import (
    DTYPE_NAMES,
    TORCH_ONLY,
    as_torch,
    dtype_name,
    empty_like,
    is_cuda,
    is_torch,
    torch_dtype,
)
from sideband.errors import BackendUnavailableError, InvalidArgumentError

_KINDS = "biuf"  # bool, signed, unsigned, float


@dataclass(slots=True)
class Buffer:
    """A validated array argument of one rank."""

    obj: Any  # what the user passed
    arr: np.ndarray  # flat, C-contiguous data of ``obj`` (a view, or a copy if non-contiguous)
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, or a torch-only name ("bfloat16", "float8_...")
    writeback: Callable[[], None] | None  # copies ``arr`` back into ``obj`` (non-contiguous)
    # CUDA inputs: attaches pinned host memory (filled from the device) as the op starts.
    stage: Callable[[PinnedPool, str], None] | None = None

    @property
    def nbytes(self) -> int:
        return self.arr.nbytes

    @property
    def cuda(self) -> bool:
        return self.stage is not None

    def finish(self) -> None:
        if self.writeback is not None:
            self.writeback()


class PinnedPool:
    """Pinned host buffers of one group, by key, reused across its ops."""

    def __init__(self) -> None:
        self.bufs: dict[str, Any] = {}

    def get(self, key: str, nbytes: int) -> Any:
        """A pinned uint8 host tensor of at least ``nbytes``."""
        import torch

        buf = self.bufs.get(key)
        if buf is None or buf.numel() < nbytes:
            buf = torch.empty(max(nbytes, 64), dtype=torch.uint8, pin_memory=True)
            self.bufs[key] = buf
        return buf

    def __len__(self) -> int:
        return len(self.bufs)

    def clear(self) -> None:
        self.bufs.clear()


def _from_torch(x: Any, what: str) -> tuple[np.ndarray, str]:
    import torch

    if x.device.type != "cpu":
        raise BackendUnavailableError(
            f"{what}: a {x.device.type} tensor was passed, but sideband moves CPU and CUDA "
            "memory only; move it to the CPU first (tensor.cpu())"
        )
    t = x.detach()
    name, np_dtype = torch_dtype(t, what)
    if name in TORCH_ONLY:
        return t.view(getattr(torch, np_dtype.name)).numpy(), name
    return t.numpy(), name


def as_buffer(
    x: Any, what: str, *, writable: bool, fill: bool = True, write_readonly: bool = False
) -> Buffer:
    """Validate ``x`` and expose it as a flat contiguous array (``writable`` for in-place ops).

    ``fill=False``: the op only writes ``x`` (an output), so a staged CUDA tensor's contents
    need not be copied to the host first. ``write_readonly``: a read-only numpy ``x`` is written
    through an alias of its memory instead of refused.
    """
    if isinstance(x, np.ndarray):
        base = x
        dtype = DTYPE_NAMES.get(x.dtype) or dtype_name(x)
        if x.dtype.kind not in _KINDS:
            raise InvalidArgumentError(
                f"{what}: dtype {x.dtype} is not supported; use bool, an integer or a float dtype "
                "(or the *_object variants for Python objects)"
            )
    elif is_torch(x) and x.device.type == "cpu":
        base, dtype = _from_torch(x, what)
    elif is_cuda(x):
        return staged_buffer(x, what, writable, fill)
    elif is_torch(x):
        base, dtype = _from_torch(x, what)  # raises: neither CPU nor CUDA
    else:
        raise InvalidArgumentError(
            f"{what}: expected a numpy array or a torch tensor (CPU or CUDA) or a cupy array, got "
            f"{type(x).__name__}; use the *_object variants for other Python objects"
        )
    if writable and not base.flags.writeable:
        check_writable(base, what, write_readonly)
        base = writable_alias(base, what)
    if base.flags.c_contiguous:
        return Buffer(x, base if base.ndim == 1 else base.reshape(-1), base.shape, dtype, None)
    flat = np.ascontiguousarray(base).reshape(-1)

    def writeback() -> None:
        base[...] = flat.reshape(base.shape)

    return Buffer(x, flat, tuple(base.shape), dtype, writeback if writable else None)


def check_writable(a: np.ndarray, what: str, write_readonly: bool) -> None:
    """Refuse read-only ``a`` as the target of a result, unless ``write_readonly``."""
    if not a.flags.writeable and not write_readonly:
        raise InvalidArgumentError(
            f"{what}: the array is read-only (Ray hands out numpy arguments and ray.get results "
            "read-only, over its object store's memory) and this op writes its result into it. "
            "Pass a writable copy (x = x.copy()), or write_readonly=True to write into its "
            "memory anyway (other readers of the same Ray object then see the change)"
        )


def writable_alias(a: np.ndarray, what: str) -> np.ndarray:
    """A writable array over the memory of read-only ``a`` (same shape, dtype and strides).

    numpy refuses to flag an array writable when the buffer it came from is read-only (an object
    store mapping, a ``bytes``), so the alias is made from the raw address; ``a`` itself (its
    flags, which other code may rely on) is left untouched.
    """
    if a.size == 0:
        return np.empty_like(a)  # nothing will be written
    lib = getattr(np.lib, "array_utils", np)  # numpy >= 2 moved byte_bounds
    low, high = (int(v) for v in lib.byte_bounds(a))
    if not _mapped_writable(low, high):
        raise InvalidArgumentError(
            f"{what}: write_readonly=True was passed, but the array's memory is mapped read-only "
            "by the operating system (np.load(..., mmap_mode='r'), say): writing into it would "
            "crash this process. Pass a writable copy (x = x.copy()) instead"
        )
    raw = memoryview((ctypes.c_ubyte * (high - low)).from_address(low))
    return np.ndarray(a.shape, a.dtype, buffer=raw, offset=a.ctypes.data - low, strides=a.strides)


def _mapped_writable(low: int, high: int) -> bool:
    """Whether the first and last byte of ``[low, high)`` can be written without a fault.

    The kernel writes each byte back over itself through a pipe: where the page is read-only
    (a PROT_READ mapping) it answers EFAULT instead of the SIGSEGV a plain store would raise.
    """
    page = mmap.PAGESIZE
    r, w = os.pipe()
    try:
        for addr in {low, high - 1} if low // page != (high - 1) // page else {low}:
            os.write(w, ctypes.string_at(addr, 1))
            try:
                os.readv(r, [memoryview((ctypes.c_ubyte * 1).from_address(addr))])
            except OSError as e:
                if e.errno == errno.EFAULT:
                    return False
                raise
    finally:
        os.close(r)
        os.close(w)
    return True


def staged_buffer(x: Any, what: str, writable: bool, fill: bool) -> Buffer:
    """A Buffer for CUDA ``x`` whose host memory is attached when the op starts (``stage``)."""
    import torch

    t = as_torch(x).detach()
    dtype, np_dtype = torch_dtype(t, what)
    n = t.numel()
    # A stand-in of the right size and dtype (no memory) until the op attaches pinned memory.
    placeholder = np.lib.stride_tricks.as_strided(np.zeros(1, np_dtype), (n,), (0,))
    stream = torch.cuda.current_stream(t.device)
    buf = Buffer(x, placeholder, tuple(t.shape), dtype, None)

    def stage(pool: PinnedPool, key: str) -> None:
        nbytes = n * t.element_size()
        host = pool.get(key, nbytes)[:nbytes]
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


def empty_like_buffer(buf: Buffer, shape: tuple[int, ...]) -> Any:
    """A new array of ``shape`` and ``buf``'s dtype, of the same kind (numpy, torch or cupy) and
    device."""
    return empty_like(buf.obj, shape)
