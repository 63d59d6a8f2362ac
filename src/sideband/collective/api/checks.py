"""THE edge: every argument check of every op and group call, made once, on the calling rank.

Errors raised here (:class:`~sideband.errors.InvalidArgumentError`) come before anything is
sent, so the group stays usable. Backends and transports below trust what passes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sideband.collective.runtime import work
from sideband.collective.runtime.buffers import Buffer, as_buffer, empty_like_buffer
from sideband.collective.types import ReduceOp
from sideband.errors import InvalidArgumentError

# Every backend name a user may pass (sideband's and ray.util.collective's), and the backend it
# runs. "gloo" and "native" are sideband's own CPU backend; torch's run under sideband's
# rendezvous. Availability is checked where a group forms (the driver may have no GPU).
BACKENDS = {
    "auto": "auto",
    "native": "auto",
    "gloo": "auto",
    "shm": "shm",
    "tcp": "tcp",
    "torch_gloo": "torch_gloo",
    "torch_nccl": "torch_nccl",
    "nccl": "torch_nccl",
}
TORCH_KINDS = {"torch_gloo": "gloo", "torch_nccl": "nccl"}


def backend(value: Any) -> str:
    """The canonical name of a backend given as a string or a ``Backend`` member."""
    name = getattr(value, "value", value)
    if not isinstance(name, str):
        raise InvalidArgumentError(
            f"backend must be a string or a Backend member, got {value!r} "
            f"({type(value).__name__}); use 'auto' (or Backend.GLOO) for CPU groups."
        )
    canonical = BACKENDS.get(name.lower())
    if canonical is None:
        raise InvalidArgumentError(
            f"Unrecognized backend {name!r}: use 'auto' or 'gloo' (sideband's native CPU "
            f"backend), 'nccl', 'torch_gloo', or one of {sorted(BACKENDS)}."
        )
    return canonical


def reduce_op(op: Any) -> ReduceOp:
    """sideband's ReduceOp, ray.util.collective's (matched by name), or a name such as "sum"."""
    if isinstance(op, ReduceOp):
        return op
    name = getattr(op, "name", op)
    if isinstance(name, str):
        try:
            return ReduceOp[name.upper()]
        except KeyError:
            pass
    raise InvalidArgumentError(
        f"Unknown reduce op {op!r}; use one of {[o.name for o in ReduceOp]} "
        "(sideband.ReduceOp, ray.util.collective.types.ReduceOp, or a name)"
    )


def name(value: Any) -> str:
    if not isinstance(value, str) or not value or "/" in value:
        raise InvalidArgumentError(
            f"group name must be a non-empty string without '/', got {value!r}"
        )
    return value


def _int(label: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidArgumentError(f"{label} must be an int, got {type(v).__name__}")
    return int(v)


def world(world_size: Any, rank: Any) -> tuple[int, int]:
    world_size, rank = _int("world_size", world_size), _int("rank", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise InvalidArgumentError(
            f"rank {rank} and world_size {world_size} must satisfy 0 <= rank < world_size"
        )
    return world_size, rank


def timeout(timeout_s: Any) -> float:
    if not isinstance(timeout_s, (int, float)) or isinstance(timeout_s, bool) or timeout_s <= 0:
        raise InvalidArgumentError(f"timeout_s must be a number > 0, got {timeout_s!r}")
    return float(timeout_s)


def what(g: Any, op: str) -> str:
    """``op`` on rank r of group 'name': how errors name the op (made once per group and op)."""
    w = g._whats.get(op)
    if w is None:
        w = g._whats[op] = f"{op} on rank {g.rank} of group {g.name!r}"
    return w


def rank(g: Any, r: Any, role: str, op: str) -> int:
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
        raise InvalidArgumentError(f"{what(g, op)}: {role} must be an int, got {type(r).__name__}")
    if r < 0:
        raise InvalidArgumentError(f"{what(g, op)}: {role} {r} is negative")
    if r >= g.world_size:
        raise InvalidArgumentError(
            f"{what(g, op)}: {role} {r} is out of range: it must be less than the world size "
            f"{g.world_size} (valid ranks: 0..{g.world_size - 1})"
        )
    return int(r)


def peer(g: Any, r: Any, role: str, op: str) -> int:
    r = rank(g, r, role, op)
    if r == g.rank:
        raise InvalidArgumentError(f"{what(g, op)}: {role} is this rank itself")
    return r


def tag(g: Any, t: Any, op: str) -> int:
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < 2**32:
        raise InvalidArgumentError(f"{what(g, op)}: tag must be an int in [0, 2**32), got {t!r}")
    return int(t)


def rows(g: Any, buf: Buffer, op: str, label: str = "x") -> tuple[int, ...]:
    """Shape of one row of an (world_size, ...) argument."""
    n = g.world_size
    if len(buf.shape) >= 1 and buf.shape[0] == n:
        return buf.shape[1:]
    if len(buf.shape) == 1 and buf.shape[0] % n == 0:
        return (buf.shape[0] // n,)
    raise InvalidArgumentError(
        f"{what(g, op)}: {label} must have world_size={n} rows (shape ({n}, ...)) or be 1-D with "
        f"a length divisible by {n}; got shape {buf.shape}"
    )


def _device(x: Any) -> Any:
    dev = getattr(x, "device", None)
    return None if dev is None or isinstance(x, np.ndarray) else str(dev)


def out(
    g: Any, value: Any, like: Buffer, shape: tuple[int, ...], op: str, wro: bool = False
) -> Buffer:
    """The validated output of an op (made like ``like`` when the caller passed none)."""
    if value is None:
        value = empty_like_buffer(like, shape)
    ob = as_buffer(value, f"{what(g, op)} (out)", writable=True, fill=False, write_readonly=wro)
    # math.prod, not np.prod: on a shape tuple numpy costs microseconds, a small op's budget.
    if ob.dtype != like.dtype or math.prod(ob.shape) != math.prod(shape):
        raise InvalidArgumentError(
            f"{what(g, op)}: out must have shape {shape} and dtype {like.dtype}, got shape "
            f"{ob.shape} and dtype {ob.dtype}"
        )
    if like.cuda != ob.cuda or (like.cuda and _device(like.obj) != _device(ob.obj)):
        raise InvalidArgumentError(
            f"{what(g, op)}: out must be on the device of the input ({_device(like.obj) or 'cpu'}"
            f"), got {_device(ob.obj) or 'cpu'}"
        )
    return ob


def blocking(g: Any, op: str, async_op: bool) -> None:
    """Warn, once per op name and process, when a blocking op runs on a running event loop's
    thread: it stalls every other coroutine there (an async actor's other calls) until all
    ranks have called it. The awaitable form is the same op with ``async_op=True``."""
    if async_op or not work.first_on_loop(op):
        return  # the common cases cost one C call
    work.warn_blocking(
        f"{what(g, op)} blocks this thread, which is running an asyncio event loop (an async "
        "actor's, say): every other coroutine on it waits until all ranks have called the op. "
        f"Await it instead: `await group.{op}(..., async_op=True)` (a Work is awaitable; "
        "drop-in users get the group from sideband.collective.get_group_handle(name)). "
        "Warned once per op in this process."
    )
