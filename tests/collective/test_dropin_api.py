"""The drop-in ``sideband.collective``: its surface, and group management as Ray's tests use it.

The group tests follow the call patterns of ``ray.util.collective``'s single-node CPU tests
(``test_basic_apis``, ``test_gloo_group_isolation``): actors whose methods call ``col.*``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from enum import Enum
from typing import Any

import numpy as np
import pytest
import ray

import sideband
import sideband.collective as col
from sideband.collective.types import Backend

# ray.util.collective's public functions (its __all__), plus synchronize from its module.
RAY_PUBLIC = [
    "nccl_available",
    "gloo_available",
    "is_backend_available",
    "is_group_initialized",
    "init_collective_group",
    "destroy_collective_group",
    "create_collective_group",
    "get_rank",
    "get_collective_group_size",
    "allreduce",
    "allreduce_multigpu",
    "barrier",
    "reduce",
    "reduce_multigpu",
    "broadcast",
    "broadcast_multigpu",
    "allgather",
    "allgather_multigpu",
    "reducescatter",
    "reducescatter_multigpu",
    "send",
    "send_multigpu",
    "recv",
    "recv_multigpu",
    "get_group_handle",
    "synchronize",
]


@ray.remote(num_cpus=0)
class Member:
    """An actor that manages groups through the drop-in module, like Ray's test worker."""

    def init_group(
        self,
        world_size: int,
        rank: int,
        backend: Any = Backend.GLOO,
        group_name: str = "default",
        gloo_timeout: int = 30000,
    ) -> bool:
        col.init_collective_group(world_size, rank, backend, group_name, gloo_timeout)
        return True

    def destroy_group(self, group_name: str = "default") -> bool:
        col.destroy_collective_group(group_name)
        return True

    def report_rank(self, group_name: str = "default") -> int:
        return col.get_rank(group_name)

    def report_world_size(self, group_name: str = "default") -> int:
        return col.get_collective_group_size(group_name)

    def report_is_group_initialized(self, group_name: str = "default") -> bool:
        return col.is_group_initialized(group_name)

    def report_availability(self) -> tuple[bool, bool]:
        return col.nccl_available(), col.gloo_available()

    def do_allreduce(self, value: float, group_name: str = "default") -> np.ndarray:
        x = np.full(4, value, dtype=np.float64)
        col.allreduce(x, group_name)
        return x

    def do_allgather(self, group_name: str = "default") -> list[np.ndarray]:
        rank = col.get_rank(group_name)
        ws = col.get_collective_group_size(group_name)
        out = [np.zeros(3, dtype=np.int64) for _ in range(ws)]
        col.allgather(out, np.full(3, rank, dtype=np.int64), group_name)
        return out

    def do_barrier(self, group_name: str = "default") -> bool:
        col.barrier(group_name)
        return True

    def handle_info(self, group_name: str = "default") -> tuple[int, int, str, float]:
        g = col.get_group_handle(group_name)
        return g.rank, g.world_size, g.name, g.timeout_s


@pytest.fixture
def spawn(ray_session: None) -> Iterator[Callable[[int], list[Any]]]:
    """Create ``Member`` actors; every actor created is killed when the test ends."""
    created: list[Any] = []

    def _spawn(n: int) -> list[Any]:
        actors = [Member.remote() for _ in range(n)]
        created.extend(actors)
        return actors

    yield _spawn
    for actor in created:
        ray.kill(actor)


def make_group(
    spawn: Callable[[int], list[Any]], world_size: int = 2, group_name: str = "default"
) -> list[Any]:
    actors = spawn(world_size)
    results = ray.get(
        [a.init_group.remote(world_size, i, Backend.GLOO, group_name) for i, a in enumerate(actors)]
    )
    assert results == [True] * world_size
    return actors


# --- the module's surface (no actors) -----------------------------------------------------------


def _norm_default(value: Any) -> Any:
    """Ray's Backend defaults are upper-case strings, sideband's a str enum; ReduceOp by name."""
    if isinstance(value, Enum) and not isinstance(value, str):
        return value.name
    if isinstance(value, str):
        return str(getattr(value, "value", value)).lower()
    return value


@pytest.mark.parametrize("name", RAY_PUBLIC)
def test_same_names_and_signatures_as_ray(name: str) -> None:
    import ray.util.collective.collective as ray_col

    ours = inspect.signature(getattr(col, name))
    theirs = inspect.signature(getattr(ray_col, name))
    # Ray's parameters, in order; sideband's extras (write_readonly) only after them, keyword-only
    # and defaulted, so every call written for Ray means the same here.
    n = len(theirs.parameters)
    assert list(ours.parameters)[:n] == list(theirs.parameters)
    for extra in list(ours.parameters.values())[n:]:
        assert extra.kind == inspect.Parameter.KEYWORD_ONLY, extra.name
        assert extra.default is not inspect.Parameter.empty, extra.name
    ours_ray = list(ours.parameters.values())[:n]
    for p_ours, p_theirs in zip(ours_ray, theirs.parameters.values(), strict=True):
        assert p_ours.kind == p_theirs.kind, p_ours.name
        if p_theirs.default is inspect.Parameter.empty:
            assert p_ours.default is inspect.Parameter.empty, p_ours.name
        else:
            assert _norm_default(p_ours.default) == _norm_default(p_theirs.default), p_ours.name


def test_types_module() -> None:
    from sideband.collective import types

    assert types.Backend.GLOO == "gloo"
    assert {"SUM", "PRODUCT", "MIN", "MAX"} <= {m.name for m in types.ReduceOp}
    assert col.types is types


def test_availability_from_the_driver() -> None:
    assert col.gloo_available() is True
    assert col.is_backend_available("GLOO") is True
    assert col.is_backend_available(Backend.GLOO) is True
    assert col.is_backend_available("no-such-backend") is False
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        assert col.nccl_available() is False
        assert col.is_backend_available("NCCL") is False


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("allreduce_multigpu", ([np.ones(2)],)),
        ("reduce_multigpu", ([np.ones(2)],)),
        ("broadcast_multigpu", ([np.ones(2)],)),
        ("allgather_multigpu", ([[np.ones(2)]], [np.ones(2)])),
        ("reducescatter_multigpu", ([np.ones(2)], [[np.ones(2)]])),
        ("send_multigpu", (np.ones(2), 1, 0)),
        ("recv_multigpu", (np.ones(2), 1, 0)),
    ],
)
def test_multigpu_names_raise_backend_unavailable(name: str, args: tuple[Any, ...]) -> None:
    with pytest.raises(sideband.BackendUnavailableError, match="multi-GPU") as info:
        getattr(col, name)(*args)
    assert isinstance(info.value, RuntimeError)


def test_synchronize_without_gpu() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: synchronize works there")
    with pytest.raises(sideband.BackendUnavailableError, match="CUDA"):
        col.synchronize(0)


def test_collective_calls_from_the_driver_raise_runtime_error(ray_session: None) -> None:
    # As in Ray: these belong inside an actor or task.
    with pytest.raises(RuntimeError, match="inside a Ray actor"):
        col.get_rank()
    with pytest.raises(RuntimeError, match="inside a Ray actor"):
        col.init_collective_group(1, 0, Backend.GLOO, "driver-group")
    with pytest.raises(RuntimeError, match="inside a Ray actor"):
        col.allreduce(np.ones(2), "driver-group")


def test_create_collective_group_validates_like_ray(ray_session: None) -> None:
    fake_actors = [object(), object()]
    with pytest.raises(RuntimeError, match="one rank"):
        col.create_collective_group(fake_actors, 2, [0], Backend.GLOO, "bad-decl")
    with pytest.raises(RuntimeError, match="permutation"):
        col.create_collective_group(fake_actors, 2, [0, 2], Backend.GLOO, "bad-decl")
    with pytest.raises(RuntimeError, match="greater than zero"):
        col.create_collective_group(fake_actors, 0, [0, 1], Backend.GLOO, "bad-decl")
    with pytest.raises(ValueError, match="Unrecognized backend"):
        col.create_collective_group(fake_actors, 2, [0, 1], "mpi-ish", "bad-decl")


# --- group management inside actors -------------------------------------------------------------


@pytest.mark.parametrize("group_name", ["default", "test", "123?34!"])
def test_init_two_actors(spawn: Callable[[int], list[Any]], group_name: str) -> None:
    actors = make_group(spawn, 2, group_name)
    assert ray.get([a.report_rank.remote(group_name) for a in actors]) == [0, 1]
    assert ray.get([a.report_world_size.remote(group_name) for a in actors]) == [2, 2]
    results = ray.get([a.do_allreduce.remote(i + 1.0, group_name) for i, a in enumerate(actors)])
    for r in results:
        assert (r == 3.0).all()


def test_init_multiple_groups_and_reversed_ranks(spawn: Callable[[int], list[Any]]) -> None:
    world_size = 2
    actors = spawn(world_size)
    names = [str(i) for i in range(10)]
    for name in names:
        assert ray.get(
            [a.init_group.remote(world_size, k, group_name=name) for k, a in enumerate(actors)]
        ) == [True, True]
    # A further group with the ranks in reverse order.
    ray.get(
        [
            a.init_group.remote(world_size, world_size - 1 - i, group_name="reversed")
            for i, a in enumerate(actors)
        ]
    )
    assert ray.get([a.report_rank.remote("reversed") for a in actors]) == [1, 0]
    assert ray.get([a.report_rank.remote("3") for a in actors]) == [0, 1]
    # Each group works on its own: allgather lists members in rank order.
    gathered = ray.get([a.do_allgather.remote("reversed") for a in actors])
    for out in gathered:
        assert [int(x[0]) for x in out] == [0, 1]
    for name in names:
        sums = ray.get([a.do_allreduce.remote(1.0, name) for a in actors])
        assert all((s == 2.0).all() for s in sums)


def test_rank_size_and_is_initialized_for_unknown_groups(spawn: Callable[[int], list[Any]]) -> None:
    actors = make_group(spawn, 2)
    assert ray.get(actors[0].report_is_group_initialized.remote()) is True
    for name in ["random", "123", "456"]:
        assert ray.get(actors[0].report_is_group_initialized.remote(name)) is False
        assert ray.get(actors[1].report_rank.remote(name)) == -1
        assert ray.get(actors[1].report_world_size.remote(name)) == -1
    assert ray.get(actors[1].report_is_group_initialized.remote()) is True
    # gloo_timeout's default (30000 ms) is the group's deadline.
    assert ray.get([a.handle_info.remote() for a in actors]) == [
        (0, 2, "default", 30.0),
        (1, 2, "default", 30.0),
    ]
    # An op on a group this actor never joined is a RuntimeError, as in Ray.
    with pytest.raises(RuntimeError):
        ray.get(actors[0].do_barrier.remote("random"))


def test_destroy_group_and_reinit(spawn: Callable[[int], list[Any]]) -> None:
    world_size = 2
    actors = make_group(spawn, world_size)
    ray.get(actors[0].destroy_group.remote())
    assert ray.get(actors[0].report_is_group_initialized.remote()) is False
    assert ray.get(actors[0].report_rank.remote()) == -1
    # Destroying a group that does not exist is a no-op.
    ray.get(actors[0].destroy_group.remote("random"))
    assert ray.get(actors[1].report_is_group_initialized.remote()) is True
    ray.get(actors[1].destroy_group.remote("random"))
    assert ray.get(actors[1].report_is_group_initialized.remote()) is True
    ray.get(actors[1].destroy_group.remote("default"))
    assert ray.get(actors[1].report_is_group_initialized.remote()) is False
    # The same name can be used again.
    assert ray.get([a.init_group.remote(world_size, i) for i, a in enumerate(actors)]) == [
        True,
        True,
    ]
    assert ray.get([a.report_is_group_initialized.remote() for a in actors]) == [True, True]
    sums = ray.get([a.do_allreduce.remote(2.0) for a in actors])
    assert all((s == 4.0).all() for s in sums)


def test_init_errors_inside_the_actor(spawn: Callable[[int], list[Any]]) -> None:
    (actor,) = spawn(1)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        ray.get(actor.init_group.remote(2, 2, group_name="bad-rank"))
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        ray.get(actor.init_group.remote(2, -1, group_name="bad-rank"))
    with pytest.raises(ValueError, match="Unrecognized backend"):
        ray.get(actor.init_group.remote(1, 0, backend="mpi-ish", group_name="bad-backend"))
    assert ray.get(actor.report_is_group_initialized.remote("bad-rank")) is False
    # Ray's default backend is NCCL: without a GPU it is a clear RuntimeError.
    nccl, gloo = ray.get(actor.report_availability.remote())
    assert gloo is True
    if not nccl:
        with pytest.raises(sideband.BackendUnavailableError, match="backend='gloo'"):
            ray.get(actor.init_group.remote(1, 0, backend=Backend.NCCL, group_name="gpu"))
    if not col.is_backend_available("torch_gloo"):
        with pytest.raises(sideband.BackendUnavailableError, match="torch_gloo"):
            ray.get(actor.init_group.remote(1, 0, backend="torch_gloo", group_name="tg"))
    # A second init of a joined group is a RuntimeError, as in Ray.
    assert ray.get(actor.init_group.remote(1, 0, group_name="solo"))
    with pytest.raises(RuntimeError, match="second time"):
        ray.get(actor.init_group.remote(1, 0, group_name="solo"))
    assert ray.get(actor.report_rank.remote("solo")) == 0


def test_two_single_rank_groups_are_isolated(spawn: Callable[[int], list[Any]]) -> None:
    from ray.util.collective.types import Backend as RayBackend

    w1, w2 = spawn(2)
    ret1 = w1.init_group.remote(1, 0, group_name="name_1", gloo_timeout=40000)
    # Code that keeps importing Ray's Backend works unchanged.
    ret2 = w2.init_group.remote(1, 0, RayBackend.GLOO, group_name="name_2", gloo_timeout=60000)
    assert ray.get([ret1, ret2]) == [True, True]
    # Each group keeps its own gloo_timeout (milliseconds) as its deadline in seconds.
    assert ray.get(w1.handle_info.remote("name_1")) == (0, 1, "name_1", 40.0)
    assert ray.get(w2.handle_info.remote("name_2")) == (0, 1, "name_2", 60.0)
    assert ray.get(w1.report_rank.remote("name_2")) == -1
    assert (ray.get(w1.do_allreduce.remote(5.0, "name_1")) == 5.0).all()


def test_failed_join_times_out_and_the_name_is_reusable(spawn: Callable[[int], list[Any]]) -> None:
    (lonely,) = spawn(1)
    # Rank 1 never comes: the join gives up after gloo_timeout instead of hanging.
    with pytest.raises(RuntimeError):
        ray.get(lonely.init_group.remote(2, 0, group_name="never-full", gloo_timeout=1500))
    assert ray.get(lonely.report_is_group_initialized.remote("never-full")) is False
    assert ray.get(lonely.init_group.remote(1, 0, group_name="never-full"))
    assert ray.get(lonely.report_world_size.remote("never-full")) == 1


def test_member_killed_while_joining_leaves_the_name_reusable(
    spawn: Callable[[int], list[Any]],
) -> None:
    w1, w2 = spawn(2)
    pending = w1.init_group.remote(2, 0, group_name="name_1")
    ray.wait([pending], timeout=1)
    ray.kill(w1)
    assert ray.get(w2.init_group.remote(1, 0, group_name="name_1"))
    assert (ray.get(w2.do_allreduce.remote(3.0, "name_1")) == 3.0).all()


def test_declarative_group_from_the_driver(spawn: Callable[[int], list[Any]]) -> None:
    actors = spawn(3)
    ranks = [2, 0, 1]
    col.create_collective_group(actors, 3, ranks, Backend.GLOO, "declared")
    # As in Ray, members join on their first collective call, not before.
    assert (
        ray.get([a.report_is_group_initialized.remote("declared") for a in actors]) == [False] * 3
    )
    assert ray.get([a.report_rank.remote("declared") for a in actors]) == [-1] * 3
    ray.get([a.do_barrier.remote("declared") for a in actors])
    assert ray.get([a.report_rank.remote("declared") for a in actors]) == ranks
    assert ray.get([a.report_world_size.remote("declared") for a in actors]) == [3] * 3
    for out in ray.get([a.do_allgather.remote("declared") for a in actors]):
        assert [int(x[0]) for x in out] == [0, 1, 2]
    sums = ray.get(
        [a.do_allreduce.remote(float(r), "declared") for a, r in zip(actors, ranks, strict=True)]
    )
    assert all((s == 3.0).all() for s in sums)
    # Destroyed everywhere, the name can be declared again, here with other ranks.
    ray.get([a.destroy_group.remote("declared") for a in actors])
    col.create_collective_group(actors[:2], 2, [1, 0], Backend.GLOO, "declared")
    ray.get([a.do_barrier.remote("declared") for a in actors[:2]])
    assert ray.get([a.report_rank.remote("declared") for a in actors]) == [1, 0, -1]


def test_declared_group_with_an_absent_member_times_out(
    spawn: Callable[[int], list[Any]],
) -> None:
    present, absent = spawn(2)
    col.create_collective_group(
        [present, absent], 2, [0, 1], Backend.GLOO, "half-declared", gloo_timeout=1500
    )
    # The absent member never makes a collective call: the present one gets an error, no hang.
    with pytest.raises(RuntimeError):
        ray.get(present.do_barrier.remote("half-declared"))
    assert ray.get(present.report_is_group_initialized.remote("half-declared")) is False


def test_gloo_timeout_bounds_every_operation(spawn: Callable[[int], list[Any]]) -> None:
    actors = spawn(2)
    # Both actors are up before they join, so the short deadline only bites on the barrier.
    ray.get([a.report_rank.remote() for a in actors])
    ray.get(
        [
            a.init_group.remote(2, i, Backend.GLOO, "slow-peer", gloo_timeout=3000)
            for i, a in enumerate(actors)
        ]
    )
    # Rank 1 never joins the barrier: rank 0 gives up after gloo_timeout with a RuntimeError.
    with pytest.raises(RuntimeError):
        ray.get(actors[0].do_barrier.remote("slow-peer"))
    # Destroying the group and forming it again under the same name recovers.
    ray.get([a.destroy_group.remote("slow-peer") for a in actors])
    ray.get([a.init_group.remote(2, i, group_name="slow-peer") for i, a in enumerate(actors)])
    sums = ray.get([a.do_allreduce.remote(1.0, "slow-peer") for a in actors])
    assert all((s == 2.0).all() for s in sums)
