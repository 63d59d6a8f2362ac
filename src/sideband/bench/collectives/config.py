"""What the collectives benchmark can measure and how much: implementations, ops, sizes, modes,
and the parsing of size and list options."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

IMPLS = ("sideband", "ray_gloo", "torch_gloo", "object_store", "mpich", "memcpy")
OPS = ("allreduce", "broadcast", "allgather", "reduce_scatter", "send/recv", "barrier", "create")
SIZED_OPS = ("allreduce", "broadcast", "allgather", "reduce_scatter", "send/recv")
# "empty": shared memory, with every buffer allocated by Group.empty (ops skip a copy).
TRANSPORTS = ("shm", "tcp", "empty")
# Which ops each implementation runs ("create" only where a group of running actors is formed).
SUPPORTS: dict[str, tuple[str, ...]] = {
    "sideband": OPS,
    "ray_gloo": OPS,
    "torch_gloo": OPS,
    "object_store": SIZED_OPS + ("barrier",),
    "mpich": SIZED_OPS + ("barrier",),
    "memcpy": ("send/recv",),
}
LABELS = {
    "sideband": "sideband",
    "ray_gloo": "ray.util.collective gloo",
    "torch_gloo": "torch.distributed gloo",
    "object_store": "Ray object store",
    "mpich": "mpi4py + MPICH",
    "memcpy": "np.copyto",
}
_KIB, _MIB = 1 << 10, 1 << 20
FULL_SIZES = (
    8,
    64,
    512,
    4 * _KIB,
    32 * _KIB,
    256 * _KIB,
    _MIB,
    4 * _MIB,
    16 * _MIB,
    64 * _MIB,
    256 * _MIB,
)
QUICK_SIZES = (8, 64 * _KIB, _MIB, 64 * _MIB)
SMOKE_SIZES = (8, 64 * _KIB)


@dataclass
class Mode:
    """How much to measure: sizes, iteration counts and create repetitions."""

    sizes: tuple[int, ...]
    world_sizes: tuple[int, ...]
    max_iters: int
    min_iters: int
    budget_bytes: int  # iterations at a size: budget / size, clamped to [min_iters, max_iters]
    create_reps: int

    def iters(self, nbytes: int) -> tuple[int, int]:
        """(timed iterations, warm-up iterations) for one point of ``nbytes``."""
        n = max(self.min_iters, min(self.max_iters, self.budget_bytes // max(nbytes, 1)))
        return n, (1 if nbytes >= 16 * _MIB else 2)


MODES = {
    "full": Mode(FULL_SIZES, (2, 4), 50, 5, 2 << 30, 5),
    "quick": Mode(QUICK_SIZES, (2, 4), 20, 5, 320 * _MIB, 3),
    "smoke": Mode(SMOKE_SIZES, (2,), 3, 2, 1 << 30, 1),
}


def _shape(op: str, nbytes: int, ws: int) -> tuple[int, int, int]:
    """(elements of x, elements of one rank's chunk, bytes actually measured) for float32.

    allgather and reduce_scatter follow NCCL-tests: ``nbytes`` is the whole (ws, chunk) array.
    """
    if op in ("allgather", "reduce_scatter"):
        chunk = max(1, nbytes // 4 // ws)
        return chunk, chunk, chunk * ws * 4
    if op in SIZED_OPS:
        count = max(1, nbytes // 4)
        return count, count, count * 4
    return 0, 0, 0


def _points(op: str, sizes: Iterable[int], ws: int) -> list[tuple[int, int, int]]:
    """:func:`_shape` of every point of ``op``: each size for sized ops, one point otherwise."""
    return [_shape(op, nbytes, ws) for nbytes in (sizes if op in SIZED_OPS else (0,))]


def _parse_size(s: str) -> int:
    s = s.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": _KIB, "M": _MIB, "G": 1 << 30}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def _csv(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]
