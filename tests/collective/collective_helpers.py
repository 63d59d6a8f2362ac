"""Helpers for collective tests: a pool of plain actors and code shipped into them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray


class Boom:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


@ray.remote(num_cpus=0)
class Member:
    """A plain actor with no sideband-specific methods: tests run code in it via __ray_call__."""

    def pid(self) -> int:
        import os

        return os.getpid()


@ray.remote(num_cpus=0)
class AsyncMember:
    """An async actor: ops awaited on its event loop."""

    async def ping(self) -> str:
        return "pong"


def on_all(actors: list[Any], fn: Callable[..., Any], *args: Any, timeout: float = 120) -> list:
    """Run ``fn(actor_instance, *args)`` in every actor at once; results in actor order."""
    return ray.get([a.__ray_call__.remote(fn, *args) for a in actors], timeout=timeout)


def on_all_refs(actors: list[Any], fn: Callable[..., Any], *args: Any) -> list:
    return [a.__ray_call__.remote(fn, *args) for a in actors]
