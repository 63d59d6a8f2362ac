"""The drop-in's groups: joining, declaring, leaving and asking about them, as Ray names it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from sideband.collective import types
from sideband.collective.api import checks, driver, table
from sideband.collective.api.group import Group
from sideband.errors import BackendUnavailableError, CollectiveUsageError, InvalidArgumentError

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _usage() -> Iterator[None]:
    """The core's argument errors as Ray's callers catch them (ValueError and RuntimeError)."""
    try:
        yield
    except CollectiveUsageError:
        raise
    except InvalidArgumentError as e:
        raise CollectiveUsageError(str(e)) from e


def _check_inside_actor(what: str) -> None:
    """Raise unless called inside a Ray actor or task, as ``ray.util.collective`` does."""
    import ray

    worker = ray._private.worker.global_worker
    if getattr(worker, "mode", None) != ray.WORKER_MODE:
        raise CollectiveUsageError(
            f"sideband.collective.{what}() was called in the driver (or outside Ray); like "
            "ray.util.collective, it must be called inside a Ray actor or task. From the "
            "driver, declare a group with create_collective_group(actors, ...)."
        )


def _group(group_name: str, what: str) -> Group:
    """The joined group of that name, joining a declared one on first use (as Ray does)."""
    _check_inside_actor(what)
    return table.get_group(group_name)


def _core_backend(backend: Any) -> str:
    """The backend name to hand to the core, or a clear error if it cannot run here."""
    with _usage():
        name = checks.backend(backend)
    if not table.backend_available(name):
        hint = "use backend='gloo' (sideband's native CPU backend)"
        if checks.TORCH_KINDS.get(name) == "nccl":
            raise BackendUnavailableError(
                f"Backend {backend!r} needs a GPU backend, and none is available in this process "
                f"(no CUDA device, or torch.distributed without NCCL); {hint}."
            )
        raise BackendUnavailableError(
            f"Backend {backend!r} is not available in this process; {hint}, or install "
            "'sideband[torch]' for torch's own gloo."
        )
    return name


def _to_op(op: Any) -> types.ReduceOp:
    with _usage():
        return checks.reduce_op(op)


def _check_rank_valid(g: Group, rank: Any, what: str) -> int:
    with _usage():
        return checks.rank(g, rank, what, "sideband.collective")


# --- availability -------------------------------------------------------------------------------


def nccl_available() -> bool:
    """Whether a GPU (NCCL) backend can run in this process."""
    return is_backend_available("nccl")


def gloo_available() -> bool:
    """Whether ``backend="gloo"`` works: always, since sideband's native backend serves it."""
    return is_backend_available("gloo")


def is_backend_available(backend: str) -> bool:
    """Whether the named backend can run in this process (unknown names: False, as in Ray)."""
    return table.backend_available(backend)


# --- groups -------------------------------------------------------------------------------------


def is_group_initialized(group_name: str) -> bool:
    """Whether this process has joined the group of that name.

    As in Ray, a group declared from the driver with :func:`create_collective_group` counts only
    once this process has joined it, which happens on its first collective call.
    """
    return table.is_group_initialized(group_name)


def init_collective_group(
    world_size: int,
    rank: int,
    backend: types.Backend = types.Backend.NCCL,
    group_name: str = "default",
    gloo_timeout: int = 30000,
) -> None:
    """Join a collective group from inside an actor; returns when every rank has joined.

    Args:
        world_size: the number of processes in the group.
        rank: this process's rank, ``0 <= rank < world_size``.
        backend: ``Backend.GLOO`` runs sideband's native CPU backend; ``Backend.NCCL`` (the
            default, as in Ray) needs a GPU backend.
        group_name: the group's name.
        gloo_timeout: milliseconds to wait for the other ranks, and for every operation.
    """
    _check_inside_actor("init_collective_group")
    with _usage():
        checks.name(group_name)
        world_size, rank = checks.world(world_size, rank)
    if is_group_initialized(group_name):
        raise CollectiveUsageError(
            f"Trying to initialize group {group_name!r} a second time in this process; "
            "destroy_collective_group() it first."
        )
    table.init_group(
        int(world_size),
        int(rank),
        name=group_name,
        backend=_core_backend(backend),
        timeout_s=_timeout_s(gloo_timeout),
    )


def _timeout_s(gloo_timeout: int) -> float:
    if not isinstance(gloo_timeout, (int, float)) or gloo_timeout <= 0:
        raise CollectiveUsageError(
            f"gloo_timeout must be a positive number of milliseconds, got {gloo_timeout!r}."
        )
    return gloo_timeout / 1000.0


def create_collective_group(
    actors: list[Any],
    world_size: int,
    ranks: list[int],
    backend: types.Backend = types.Backend.NCCL,
    group_name: str = "default",
    gloo_timeout: int = 30000,
) -> None:
    """Declare, from the driver, a list of actors as a collective group.

    Each actor joins on its first collective call in that group, as with Ray; the actors need no
    ``init_collective_group`` call.

    Args:
        actors: the actors of the group.
        world_size: the number of actors.
        ranks: the rank of each actor, a permutation of ``0..len(actors)-1``.
        backend: ``Backend.GLOO`` runs sideband's native CPU backend.
        group_name: the group's name.
        gloo_timeout: milliseconds to wait for the other ranks, and for every operation.
    """
    with _usage():
        checks.name(group_name)
    actors = list(actors)
    ranks = [int(r) for r in ranks]
    if len(ranks) != len(actors):
        raise CollectiveUsageError(
            f"Each actor should correspond to one rank. Got {len(ranks)} ranks but "
            f"{len(actors)} actors (group {group_name!r})."
        )
    if world_size <= 0:
        raise CollectiveUsageError(f"World size must be greater than zero, got {world_size}.")
    if world_size != len(actors):
        raise CollectiveUsageError(
            f"world_size {world_size} differs from the number of actors {len(actors)} "
            f"(group {group_name!r})."
        )
    if sorted(ranks) != list(range(len(ranks))):
        raise CollectiveUsageError(
            f"Ranks must be a permutation of 0..{len(ranks) - 1}, got {ranks} "
            f"(group {group_name!r})."
        )
    driver.declare_group(
        actors,
        int(world_size),
        ranks,
        name=group_name,
        backend=_core_backend(backend),
        timeout_s=_timeout_s(gloo_timeout),
    )


def destroy_collective_group(group_name: str = "default") -> None:
    """Leave and free the group in this process; a group that does not exist is a no-op."""
    _check_inside_actor("destroy_collective_group")
    if not is_group_initialized(group_name):
        logger.warning("The group %r does not exist in this process.", group_name)
        return
    table.destroy_group(group_name)


def get_rank(group_name: str = "default") -> int:
    """This process's rank in the group, or -1 if it has not joined it."""
    _check_inside_actor("get_rank")
    if not is_group_initialized(group_name):
        return -1
    return int(table.get_group(group_name).rank)


def get_collective_group_size(group_name: str = "default") -> int:
    """The group's world size, or -1 if this process has not joined it."""
    _check_inside_actor("get_collective_group_size")
    if not is_group_initialized(group_name):
        return -1
    return int(table.get_group(group_name).world_size)


def get_group_handle(group_name: str = "default") -> Group:
    """The :class:`sideband.Group` of that name (joining a declared group on first use)."""
    return _group(group_name, "get_group_handle")
