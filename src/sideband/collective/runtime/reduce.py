"""Reductions: one table of which (reduce op, dtype) pairs each backend can compute, and the
native backend's elementwise reducers.

Checked once, at the edge, for whichever backend runs the op, so every backend refuses the same
things with the same words, before anything is sent.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from sideband.collective.algorithms.context import Reducer
from sideband.collective.runtime.arrays import FP8, TORCH_ONLY
from sideband.collective.types import ReduceOp
from sideband.errors import InvalidArgumentError

_UFUNCS = {
    ReduceOp.SUM: np.add,
    ReduceOp.PRODUCT: np.multiply,
    ReduceOp.MIN: np.minimum,
    ReduceOp.MAX: np.maximum,
    ReduceOp.AVG: np.add,
    ReduceOp.BAND: np.bitwise_and,
    ReduceOp.BOR: np.bitwise_or,
    ReduceOp.BXOR: np.bitwise_xor,
}
_BOOL_UFUNCS = {
    ReduceOp.SUM: np.logical_or,
    ReduceOp.PRODUCT: np.logical_and,
    ReduceOp.MIN: np.logical_and,
    ReduceOp.MAX: np.logical_or,
    ReduceOp.BAND: np.logical_and,
    ReduceOp.BOR: np.logical_or,
    ReduceOp.BXOR: np.logical_xor,
}
# The C loops' numbering (_native.c): op * 16 + dtype. AVG reduces as SUM.
_C_OPS = {
    ReduceOp.SUM: 0,
    ReduceOp.AVG: 0,
    ReduceOp.PRODUCT: 1,
    ReduceOp.MIN: 2,
    ReduceOp.MAX: 3,
    ReduceOp.BAND: 4,
    ReduceOp.BOR: 5,
    ReduceOp.BXOR: 6,
}
_C_DTYPES = {
    name: i
    for i, name in enumerate(
        "float32 float64 int8 int16 int32 int64 uint8 uint16 uint32 uint64 bool".split()
    )
}
_BITWISE = (ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR)
_FP8_OPS = (ReduceOp.SUM, ReduceOp.AVG, ReduceOp.MIN, ReduceOp.MAX)
_BF16_OPS = (ReduceOp.SUM, ReduceOp.AVG, ReduceOp.PRODUCT, ReduceOp.MIN, ReduceOp.MAX)
# Bool reduces as uint8 on torch's backends: or = MAX, and = MIN (they have no logical ops).
BOOL_AS_UINT8 = {
    ReduceOp.SUM: ReduceOp.MAX,
    ReduceOp.MAX: ReduceOp.MAX,
    ReduceOp.BOR: ReduceOp.MAX,
    ReduceOp.PRODUCT: ReduceOp.MIN,
    ReduceOp.MIN: ReduceOp.MIN,
    ReduceOp.BAND: ReduceOp.MIN,
    ReduceOp.BXOR: ReduceOp.BXOR,
}


def _kind(dtype: str) -> str:
    if dtype == "bfloat16" or dtype in FP8:
        return "f"
    return np.dtype(dtype).kind


def check(op: ReduceOp, dtype: str, backend: str, what: str, nccl_fp8: bool = False) -> None:
    """Raise InvalidArgumentError (prefixed with ``what``) unless ``backend`` ("native",
    "gloo" or "nccl") can reduce ``dtype`` with ``op``."""
    key = (op._value_, dtype, backend, nccl_fp8)  # an Enum member's hash runs Python code
    why = _WHYS.get(key)
    if why is None:
        why = _WHYS[key] = _why(op, dtype, backend, nccl_fp8)  # finitely many keys
    if why:
        raise InvalidArgumentError(f"{what}: {why}")


_WHYS: dict[tuple[int, str, str, bool], str] = {}


def _why(op: ReduceOp, dtype: str, backend: str, nccl_fp8: bool) -> str:
    kind = _kind(dtype)
    if dtype in FP8:
        if backend != "nccl" or not nccl_fp8:
            where = "on the native backend" if backend == "native" else f"on torch {backend}"
            return (
                f"reductions of {dtype} are not supported {where}: fp8 reduces only on NCCL >= "
                "2.24 (CUDA tensors on one GPU per rank). Reduce in bfloat16 or float16 and "
                "cast, or use broadcast/allgather, which move fp8 as it is"
            )
        if op not in _FP8_OPS:
            return f"{op.name} is not defined for {dtype}"
    if dtype == "bfloat16" and backend == "native" and op not in _BF16_OPS:
        return f"{op.name} is not defined for bfloat16"
    if kind == "b":
        if op is ReduceOp.AVG:
            return "AVG is not defined for bool arrays"
    elif kind == "f":
        if op in _BITWISE:
            return f"{op.name} needs an integer or bool dtype, got {dtype}"
    elif op is ReduceOp.AVG:
        return "AVG of integers would have to round; use SUM and divide, or a float dtype"
    if backend == "nccl" and (BOOL_AS_UINT8[op] if kind == "b" else op) in _BITWISE:
        return (
            f"NCCL has no bitwise reductions ({op.name}); use backend='auto' with CPU tensors, "
            "or reduce with MIN/MAX on 0/1 values"
        )
    if backend != "native" and dtype in ("uint16", "uint32", "uint64"):
        return (
            f"torch {backend} cannot reduce {dtype}; use a signed integer dtype, or the native "
            "backend (backend='auto')"
        )
    return ""


@functools.lru_cache(maxsize=256)
def reducer(op: ReduceOp, dtype: str) -> Reducer:
    """``f(acc, other)``: acc = acc (op) other, elementwise, in place (checked pairs only)."""
    if dtype in TORCH_ONLY:  # bfloat16: fp8 never reaches the native backend
        import torch

        tfn: Any = {
            ReduceOp.SUM: torch.add,
            ReduceOp.AVG: torch.add,
            ReduceOp.PRODUCT: torch.mul,
            ReduceOp.MIN: torch.minimum,
            ReduceOp.MAX: torch.maximum,
        }[op]
        tdt = getattr(torch, dtype)

        def bf16(acc: np.ndarray, other: np.ndarray) -> None:
            a = torch.from_numpy(acc).view(tdt)
            tfn(a, torch.from_numpy(other).view(tdt), out=a)

        return Reducer(bf16)
    table = _BOOL_UFUNCS if np.dtype(dtype).kind == "b" else _UFUNCS
    ufunc = table[op]

    def f(acc: np.ndarray, other: np.ndarray) -> None:
        ufunc(acc, other, out=acc)

    d = _C_DTYPES.get(dtype)
    return Reducer(f, -1 if d is None else _C_OPS[op] * 16 + d)


def finish_avg(op: ReduceOp, arr: np.ndarray, dtype: str, n: int) -> None:
    """AVG is computed as SUM everywhere; divide the result by the world size."""
    if op is not ReduceOp.AVG:
        return
    if dtype in TORCH_ONLY:
        import torch

        torch.from_numpy(arr).view(getattr(torch, dtype)).div_(n)
    else:
        np.divide(arr, n, out=arr)
