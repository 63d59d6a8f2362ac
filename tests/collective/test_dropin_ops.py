"""The drop-in ``sideband.collective``'s operations, called as Ray's own CPU tests call them.

Patterns from ``ray.util.collective``'s single-node CPU tests (allreduce, reduce, broadcast,
allgather, reducescatter, send/recv): an actor keeps a buffer and a list buffer, its methods call
``col.*`` on them in place and return them. Buffers set from the driver arrive read-only, as in
Ray; the workers pass ``write_readonly=True`` so that the drop-in writes results into them as
Ray does (without it, it refuses them). Each test sweeps its parameters over one
set of actors to keep the suite fast on two cores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import ray

import sideband
import sideband.collective as col
from sideband.collective.types import Backend, ReduceOp

SIZES: list[Any] = [2, 2**5, 2**10, 2**15, 2**20, [2, 2], [5, 5, 5]]
DTYPES = [np.uint8, np.float16, np.float32, np.float64]
NAMES = ["default", "test", "123?34!"]


@ray.remote(num_cpus=0)
class Worker:
    """Holds a buffer and a list buffer; every method runs one drop-in call on them."""

    def __init__(self) -> None:
        self.buffer: Any = np.ones((10,), dtype=np.float32)
        self.list_buffer: list[Any] = [np.ones((10,), dtype=np.float32) for _ in range(2)]

    def init_group(
        self, world_size: int, rank: int, backend: Any = Backend.GLOO, group_name: str = "default"
    ) -> bool:
        col.init_collective_group(world_size, rank, backend, group_name)
        return True

    def destroy_group(self, group_name: str = "default") -> bool:
        col.destroy_collective_group(group_name)
        return True

    def set_buffer(self, data: Any, copy: bool = False) -> bool:
        self.buffer = _copy(data) if copy else data
        return True

    def set_list_buffer(self, data: list[Any], copy: bool = False) -> bool:
        self.list_buffer = [_copy(t) for t in data] if copy else data
        return True

    def do_allreduce(self, group_name: str = "default", op: Any = ReduceOp.SUM) -> Any:
        col.allreduce(self.buffer, group_name, op, write_readonly=True)
        return self.buffer

    def do_reduce(
        self, group_name: str = "default", dst_rank: int = 0, op: Any = ReduceOp.SUM
    ) -> Any:
        col.reduce(self.buffer, dst_rank, group_name, op, write_readonly=True)
        return self.buffer

    def do_broadcast(self, group_name: str = "default", src_rank: int = 0) -> Any:
        col.broadcast(self.buffer, src_rank, group_name, write_readonly=True)
        return self.buffer

    def do_allgather(self, group_name: str = "default") -> list[Any]:
        col.allgather(self.list_buffer, self.buffer, group_name, write_readonly=True)
        return self.list_buffer

    def do_reducescatter(self, group_name: str = "default", op: Any = ReduceOp.SUM) -> Any:
        col.reducescatter(self.buffer, self.list_buffer, group_name, op, write_readonly=True)
        return self.buffer

    def do_send(self, group_name: str = "default", dst_rank: int = 0) -> Any:
        col.send(self.buffer, dst_rank, group_name)
        return self.buffer

    def do_recv(self, group_name: str = "default", src_rank: int = 0) -> Any:
        col.recv(self.buffer, src_rank, group_name, write_readonly=True)
        return self.buffer

    def readonly_refused(self) -> tuple[str, Any]:
        """allreduce into an array over read-only memory, as Ray hands out: refused, then
        written on opt-in."""
        # frombuffer over a fresh bytes object: read-only, and setflags(write=True) refuses.
        x = np.frombuffer(np.ones(4, dtype=np.float32).tobytes(), dtype=np.float32)
        try:
            col.allreduce(x)
            refused = "no error"
        except col.CollectiveUsageError as e:
            refused = str(e)
        col.allreduce(x, write_readonly=True)
        return refused, x.copy()


def _copy(t: Any) -> Any:
    return t.copy() if isinstance(t, np.ndarray) else t.clone().detach()


@pytest.fixture
def workers(ray_session: None) -> Iterator[Callable[..., list[Any]]]:
    """``workers(n, group_name)``: n actors in a gloo group; all are killed when the test ends."""
    created: list[Any] = []

    def _make(num_workers: int = 2, group_name: str = "default") -> list[Any]:
        actors = [Worker.remote() for _ in range(num_workers)]
        created.extend(actors)
        ray.get(
            [
                a.init_group.remote(num_workers, i, Backend.GLOO, group_name)
                for i, a in enumerate(actors)
            ]
        )
        return actors

    yield _make
    for actor in created:
        ray.kill(actor)


def init_group(actors: list[Any], group_name: str) -> None:
    ray.get(
        [
            a.init_group.remote(len(actors), i, Backend.GLOO, group_name)
            for i, a in enumerate(actors)
        ]
    )


def init_tensors_for_gather_scatter(
    actors: list[Any], array_size: Any = 10, dtype: Any = np.float32, tensor_backend: str = "numpy"
) -> None:
    """Rank i's buffer is ones * (i + 1); every list buffer is world_size ones."""
    torch = _torch() if tensor_backend == "torch" else None
    world_size = len(actors)
    for i, a in enumerate(actors):
        if tensor_backend == "numpy":
            t: Any = np.ones(array_size, dtype=dtype) * (i + 1)
        else:
            t = torch.ones(array_size, dtype=torch.float32) * (i + 1)
        ray.get(a.set_buffer.remote(t))
    if tensor_backend == "numpy":
        lst: list[Any] = [np.ones(array_size, dtype=dtype) for _ in range(world_size)]
    else:
        lst = [torch.ones(array_size, dtype=torch.float32) for _ in range(world_size)]
    ray.get([a.set_list_buffer.remote(lst, copy=True) for a in actors])


def _torch() -> Any:
    # Imported only by the tests that mix in torch tensors: an actor that never sees a tensor
    # then starts without paying for torch's import.
    return pytest.importorskip("torch")


def ones(shape: Any, dtype: Any = np.float32) -> np.ndarray:
    return np.ones(shape, dtype=dtype)


# --- numpy only (these actors never import torch) -----------------------------------------------


def test_allreduce_different_name(workers: Callable[..., list[Any]]) -> None:
    actors = workers(2, NAMES[0])
    for name in NAMES[1:]:
        init_group(actors, name)
    for name in NAMES:
        ray.get([a.set_buffer.remote(ones(10)) for a in actors])
        results = ray.get([a.do_allreduce.remote(name) for a in actors])
        for r in results:
            assert (r == ones(10) * 2).all()


def test_allreduce_sizes_dtypes_and_ops(workers: Callable[..., list[Any]]) -> None:
    actors = workers(2)
    for size in SIZES[:5]:
        ray.get([a.set_buffer.remote(ones(size)) for a in actors])
        for r in ray.get([a.do_allreduce.remote() for a in actors]):
            assert (r == ones(size) * 2).all()
    for dtype in DTYPES:
        ray.get([a.set_buffer.remote(ones(10, dtype)) for a in actors])
        for r in ray.get([a.do_allreduce.remote() for a in actors]):
            assert r.dtype == dtype
            assert (r == ones(10, dtype) * 2).all()
    for op, expected in [(ReduceOp.PRODUCT, 6), (ReduceOp.MIN, 2), (ReduceOp.MAX, 3)]:
        ray.get([a.set_buffer.remote(ones(10) * (i + 2)) for i, a in enumerate(actors)])
        for r in ray.get([a.do_allreduce.remote(op=op) for a in actors]):
            assert (r == ones(10) * expected).all()
    with pytest.raises(ValueError, match="Unknown reduce op"):
        ray.get([a.do_allreduce.remote(op="median") for a in actors])


def test_allreduce_destroy_and_reinit(workers: Callable[..., list[Any]]) -> None:
    actors = workers(2)
    for r in ray.get([a.do_allreduce.remote() for a in actors]):
        assert (r == ones(10) * 2).all()
    ray.get([a.destroy_group.remote() for a in actors])
    with pytest.raises(RuntimeError):
        ray.get([a.do_allreduce.remote() for a in actors])
    init_group(actors, "default")
    for r in ray.get([a.do_allreduce.remote() for a in actors]):
        assert (r == ones(10) * 4).all()


def test_allreduce_five_groups(workers: Callable[..., list[Any]]) -> None:
    num_groups = 5
    actors = workers(2)
    for name in range(1, num_groups):
        init_group(actors, str(name))
    ray.get([a.set_buffer.remote(ones(10), copy=True) for a in actors])
    for i in range(num_groups):
        name = "default" if i == 0 else str(i)
        results = ray.get([a.do_allreduce.remote(name) for a in actors])
        # The same buffer is summed again in every group: 2, 4, 8, ...
        assert (results[0] == ones(10) * 2 ** (i + 1)).all()
        assert (results[1] == ones(10) * 2 ** (i + 1)).all()


def test_read_only_arrays_refused_unless_write_readonly(
    workers: Callable[..., list[Any]],
) -> None:
    actors = workers(2)
    for refused, x in ray.get([a.readonly_refused.remote() for a in actors]):
        assert "read-only" in refused and "write_readonly=True" in refused
        assert (x == ones(4) * 2).all()


def test_reduce_different_name_and_dst(workers: Callable[..., list[Any]]) -> None:
    actors = workers(2, NAMES[0])
    for name in NAMES[1:]:
        init_group(actors, name)
    for name in NAMES:
        for dst_rank in (0, 1):
            ray.get([a.set_buffer.remote(ones(10)) for a in actors])
            results = ray.get([a.do_reduce.remote(name, dst_rank) for a in actors])
            for i, r in enumerate(results):
                assert (r == ones(10) * (2 if i == dst_rank else 1)).all()


def test_reduce_sizes_ops_groups_and_invalid_rank(workers: Callable[..., list[Any]]) -> None:
    actors = workers(2)
    for size in SIZES[:5]:
        for dst_rank in (0, 1):
            ray.get([a.set_buffer.remote(ones(size)) for a in actors])
            results = ray.get([a.do_reduce.remote(dst_rank=dst_rank) for a in actors])
            for i, r in enumerate(results):
                assert (r == ones(size) * (2 if i == dst_rank else 1)).all()
    for op, expected in [(ReduceOp.PRODUCT, 6), (ReduceOp.MIN, 2), (ReduceOp.MAX, 3)]:
        for dst_rank in (0, 1):
            ray.get([a.set_buffer.remote(ones(10) * (i + 2)) for i, a in enumerate(actors)])
            results = ray.get([a.do_reduce.remote(dst_rank=dst_rank, op=op) for a in actors])
            for i, r in enumerate(results):
                assert (r == ones(10) * (expected if i == dst_rank else i + 2)).all()
    # Five groups at once; each reduce adds the other rank's ones into dst's buffer.
    for name in range(1, 5):
        init_group(actors, str(name))
    for dst_rank in (0, 1):
        ray.get([a.set_buffer.remote(ones(10), copy=True) for a in actors])
        for i in range(5):
            name = "default" if i == 0 else str(i)
            results = ray.get([a.do_reduce.remote(name, dst_rank) for a in actors])
            for j, r in enumerate(results):
                assert (r == ones(10) * ((i + 2) if j == dst_rank else 1)).all()
    with pytest.raises(ValueError, match="less than the world size"):
        ray.get([a.do_reduce.remote(dst_rank=3) for a in actors])
    with pytest.raises(ValueError, match="negative"):
        ray.get([a.do_reduce.remote(dst_rank=-1) for a in actors])


def test_broadcast_names_sizes_src_and_invalid_rank(workers: Callable[..., list[Any]]) -> None:
    actors = workers(2, NAMES[0])
    for name in NAMES[1:]:
        init_group(actors, name)
    for name in NAMES:
        for src_rank in (0, 1):
            ray.get([a.set_buffer.remote(ones(10) * (i + 2)) for i, a in enumerate(actors)])
            results = ray.get([a.do_broadcast.remote(name, src_rank) for a in actors])
            for r in results:
                assert (r == ones(10) * (src_rank + 2)).all()
    for size in SIZES[:5]:
        for src_rank in (0, 1):
            ray.get([a.set_buffer.remote(ones(size) * (i + 2)) for i, a in enumerate(actors)])
            results = ray.get([a.do_broadcast.remote(src_rank=src_rank) for a in actors])
            for r in results:
                assert (r == ones(size) * (src_rank + 2)).all()
    with pytest.raises(ValueError):
        ray.get([a.do_broadcast.remote(src_rank=3) for a in actors])


def test_allgather_dtypes_and_unmatched_lists(workers: Callable[..., list[Any]]) -> None:
    actors = workers(2)
    for dtype in DTYPES:
        init_tensors_for_gather_scatter(actors, dtype=dtype)
        results = ray.get([a.do_allgather.remote() for a in actors])
        for i in range(2):
            for j in range(2):
                assert results[i][j].dtype == dtype
                assert (results[i][j] == ones(10, dtype) * (j + 1)).all()
    init_tensors_for_gather_scatter(actors, array_size=10)
    for length in (0, 1, 2, 3):
        lst = [ones(10) for _ in range(length)]
        ray.get([a.set_list_buffer.remote(lst, copy=True) for a in actors])
        if length != 2:
            with pytest.raises(RuntimeError):
                ray.get([a.do_allgather.remote() for a in actors])
        else:
            ray.get([a.do_allgather.remote() for a in actors])
    for shape in (10, 20, [4, 5], [1, 3, 5, 7]):
        lst = [ones(shape) for _ in range(2)]
        ray.get([a.set_list_buffer.remote(lst, copy=True) for a in actors])
        if shape != 10:
            with pytest.raises(RuntimeError, match="shape"):
                ray.get([a.do_allgather.remote() for a in actors])
        else:
            ray.get([a.do_allgather.remote() for a in actors])


def test_reducescatter_dtypes_ops_and_wrong_lists(workers: Callable[..., list[Any]]) -> None:
    actors = workers(2)
    for dtype in DTYPES:
        init_tensors_for_gather_scatter(actors, dtype=dtype)
        for r in ray.get([a.do_reducescatter.remote() for a in actors]):
            assert r.dtype == dtype and (r == ones(10, dtype) * 2).all()
    # Rank i's list element j is 10*i + j + 1; rank r receives the op over i of element r.
    inputs = [[ones(4) * (10 * i + j + 1) for j in range(2)] for i in range(2)]
    expected = {
        ReduceOp.SUM: [1 + 11, 2 + 12],
        ReduceOp.PRODUCT: [1 * 11, 2 * 12],
        ReduceOp.MIN: [1, 2],
        ReduceOp.MAX: [11, 12],
    }
    for op, want in expected.items():
        ray.get([a.set_list_buffer.remote(inputs[i]) for i, a in enumerate(actors)])
        ray.get([a.set_buffer.remote(np.zeros(4, dtype=np.float32)) for a in actors])
        results = ray.get([a.do_reducescatter.remote(op=op) for a in actors])
        for rank, r in enumerate(results):
            assert (r == ones(4) * want[rank]).all(), op
    ray.get([a.set_buffer.remote(ones(10)) for a in actors])
    for lst in ([ones(10)], [ones(10)] * 3, [ones(20), ones(20)], []):
        ray.get([a.set_list_buffer.remote(lst, copy=True) for a in actors])
        with pytest.raises(RuntimeError):
            ray.get([a.do_reducescatter.remote() for a in actors])


def test_sendrecv_names_sizes_directions_and_invalid_ranks(
    workers: Callable[..., list[Any]],
) -> None:
    actors = workers(2, NAMES[0])
    for name in NAMES[1:]:
        init_group(actors, name)
    for name in NAMES:
        for size in [2, 2**5, 2**10, 2**15, 2**20, [2, 2], [5, 9, 10, 85]]:
            for dst_rank in (0, 1):
                ray.get([a.set_buffer.remote(ones(size) * (i + 1)) for i, a in enumerate(actors)])
                src_rank = 1 - dst_rank
                refs = [
                    a.do_recv.remote(name, src_rank)
                    if i == dst_rank
                    else a.do_send.remote(name, dst_rank)
                    for i, a in enumerate(actors)
                ]
                for r in ray.get(refs):
                    assert (r == ones(size) * (src_rank + 1)).all()
    with pytest.raises(ValueError):
        ray.get([a.do_send.remote(dst_rank=3) for a in actors])
    # Sending to oneself is a RuntimeError, as in Ray.
    with pytest.raises(RuntimeError, match="this rank"):
        ray.get(actors[0].do_send.remote(dst_rank=0))


def test_unsupported_tensor_type_is_a_runtime_error(workers: Callable[..., list[Any]]) -> None:
    (actor,) = workers(1, "solo")
    ray.get(actor.set_buffer.remote([1.0, 2.0]))
    with pytest.raises(RuntimeError, match="Unrecognized tensor type"):
        ray.get(actor.do_allreduce.remote("solo"))
    with pytest.raises(sideband.SidebandError):
        ray.get(actor.do_broadcast.remote("solo"))


# --- torch CPU tensors, alone and mixed with numpy ----------------------------------------------


def test_torch_numpy_mixed_in_allreduce_reduce_broadcast_sendrecv(
    workers: Callable[..., list[Any]],
) -> None:
    torch = _torch()
    from ray.util.collective.types import ReduceOp as RayReduceOp

    actors = workers(2)
    # allreduce: one rank torch, the other numpy, then the other way round.
    ray.get(actors[1].set_buffer.remote(torch.ones(10)))
    results = ray.get([a.do_allreduce.remote() for a in actors])
    assert isinstance(results[0], np.ndarray) and (results[0] == ones(10) * 2).all()
    assert isinstance(results[1], torch.Tensor) and (results[1] == torch.ones(10) * 2).all()
    ray.get(actors[0].set_buffer.remote(torch.ones(10) * (0 + 2)))
    ray.get(actors[1].set_buffer.remote(ones(10) * (1 + 2)))
    # ray.util.collective's own ReduceOp is accepted too.
    results = ray.get([a.do_allreduce.remote(op=RayReduceOp.MAX) for a in actors])
    assert (results[0] == torch.ones(10) * 3).all()
    assert (results[1] == ones(10) * 3).all()
    # reduce: the result lands on dst only.
    for dst_rank in (0, 1):
        ray.get(actors[0].set_buffer.remote(ones(10)))
        ray.get(actors[1].set_buffer.remote(torch.ones(10)))
        results = ray.get([a.do_reduce.remote(dst_rank=dst_rank) for a in actors])
        assert (results[0] == ones(10) * (2 if dst_rank == 0 else 1)).all()
        assert (results[1] == torch.ones(10) * (2 if dst_rank == 1 else 1)).all()
    # broadcast and send/recv between a numpy rank and a torch rank.
    for src_rank in (0, 1):
        ray.get(actors[0].set_buffer.remote(ones(10)))
        ray.get(actors[1].set_buffer.remote(torch.ones(10) * 2))
        results = ray.get([a.do_broadcast.remote(src_rank=src_rank) for a in actors])
        expected = 1 if src_rank == 0 else 2
        assert isinstance(results[0], np.ndarray) and (results[0] == ones(10) * expected).all()
        assert isinstance(results[1], torch.Tensor)
        assert (results[1] == torch.ones(10) * expected).all()
    for dst_rank in (0, 1):
        ray.get(actors[0].set_buffer.remote(ones(10)))
        ray.get(actors[1].set_buffer.remote(torch.ones(10) * 2))
        src_rank = 1 - dst_rank
        refs = [
            a.do_recv.remote(src_rank=src_rank)
            if i == dst_rank
            else a.do_send.remote(dst_rank=dst_rank)
            for i, a in enumerate(actors)
        ]
        results = ray.get(refs)
        expected = 2 if dst_rank == 0 else 1
        assert (results[0] == ones(10) * expected).all()
        assert (results[1] == torch.ones(10) * expected).all()


def test_allgather_torch_sizes_and_mixed_lists(workers: Callable[..., list[Any]]) -> None:
    torch = _torch()
    world_size, shape = 2, [10, 10]
    actors = workers(world_size)
    for tensor_backend in ("numpy", "torch"):
        for size in SIZES:
            init_tensors_for_gather_scatter(actors, size, tensor_backend=tensor_backend)
            results = ray.get([a.do_allgather.remote() for a in actors])
            for i in range(2):
                for j in range(2):
                    if tensor_backend == "numpy":
                        assert (results[i][j] == ones(size) * (j + 1)).all()
                    else:
                        assert isinstance(results[i][j], torch.Tensor)
                        assert (results[i][j] == torch.ones(size) * (j + 1)).all()
    # The gathered tensor and the list's elements: torch, numpy, or a mix.
    cases = [
        ("torch", ["numpy", "numpy"]),
        ("numpy", ["torch", "torch"]),
        ("numpy", ["torch", "numpy"]),
        ("torch", ["numpy", "torch"]),
    ]
    for tensor_kind, list_kinds in cases:
        for i, a in enumerate(actors):
            t: Any = (
                torch.ones(shape) * (i + 1) if tensor_kind == "torch" else ones(shape) * (i + 1)
            )
            ray.get(a.set_buffer.remote(t))
            lst = [torch.ones(shape) if k == "torch" else ones(shape) for k in list_kinds]
            ray.get(a.set_list_buffer.remote(lst, copy=True))
        results = ray.get([a.do_allgather.remote() for a in actors])
        for i in range(world_size):
            for j in range(world_size):
                if list_kinds[j] == "torch":
                    assert isinstance(results[i][j], torch.Tensor)
                    assert (results[i][j] == torch.ones(shape) * (j + 1)).all()
                else:
                    assert isinstance(results[i][j], np.ndarray)
                    assert (results[i][j] == ones(shape) * (j + 1)).all()


def test_reducescatter_torch_sizes_and_mixed_lists(workers: Callable[..., list[Any]]) -> None:
    torch = _torch()
    world_size, shape = 2, [10, 10]
    actors = workers(world_size)
    for tensor_backend in ("numpy", "torch"):
        for size in SIZES:
            init_tensors_for_gather_scatter(actors, size, tensor_backend=tensor_backend)
            results = ray.get([a.do_reducescatter.remote() for a in actors])
            for r in results:
                if tensor_backend == "numpy":
                    assert (r == ones(size) * 2).all()
                else:
                    assert isinstance(r, torch.Tensor) and (r == torch.ones(size) * 2).all()
    # The output tensor and the list's elements: torch, numpy, or a mix, per rank.
    cases = [
        (["torch", "torch"], ["numpy", "numpy"]),
        (["numpy", "numpy"], ["torch", "torch"]),
        (["torch", "numpy"], ["torch", "numpy"]),
        (["torch", "numpy"], ["numpy", "torch"]),
    ]
    for out_kinds, list_kinds in cases:
        for i, a in enumerate(actors):
            t: Any = (
                torch.ones(shape) * (i + 1) if out_kinds[i] == "torch" else ones(shape) * (i + 1)
            )
            ray.get(a.set_buffer.remote(t))
            lst = [torch.ones(shape) if k == "torch" else ones(shape) for k in list_kinds]
            ray.get(a.set_list_buffer.remote(lst))
        results = ray.get([a.do_reducescatter.remote() for a in actors])
        for i in range(world_size):
            if out_kinds[i] == "torch":
                assert isinstance(results[i], torch.Tensor)
                assert (results[i] == torch.ones(shape) * world_size).all()
            else:
                assert isinstance(results[i], np.ndarray)
                assert (results[i] == ones(shape) * world_size).all()
