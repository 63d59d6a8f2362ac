"""The driver side: forming groups of actors from outside them, and listing live groups."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sideband import _kv
from sideband.collective.api import checks
from sideband.collective.api.table import destroy_group, join, lookup
from sideband.collective.rendezvous import session
from sideband.errors import InvalidArgumentError, RendezvousError, SidebandError


def _actor_label(actor: Any) -> str:
    try:
        return f"actor {actor._actor_id.hex()} ({actor._ray_actor_creation_function_descriptor.class_name})"
    except Exception:
        return repr(actor)


def _remote_join(
    _self: Any,
    world_size: int,
    rank: int,
    name: str,
    backend: str,
    timeout_s: float,
    rec: dict[str, Any],
) -> int:
    g = join(world_size, rank, name, backend, timeout_s, rec)
    return g.rank


def _remote_destroy(_self: Any, name: str, sess: str | None) -> None:
    g = lookup(name)
    if g is not None and (sess is None or g.session == sess):
        destroy_group(name)


class GroupHandle:
    """The driver's handle on a group created with :func:`create_group`."""

    def __init__(self, name: str, actors: list[Any], sess: str, backend: str) -> None:
        self.name = name
        self.actors = actors
        self.session = sess
        self.backend = backend
        self.world_size = len(actors)

    def __repr__(self) -> str:
        return f"GroupHandle(name={self.name!r}, world_size={self.world_size}, backend={self.backend!r})"

    def destroy(self, timeout_s: float = 30.0) -> None:
        """End the group in every member (members that died are skipped) and in the registry."""
        import ray

        # A declaration first, so that no member joins lazily while the others are destroyed.
        session.retire(self.name, self.session)
        refs = []
        for a in self.actors:
            try:
                refs.append(a.__ray_call__.remote(_remote_destroy, self.name, self.session))
            except Exception:
                pass
        if refs:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
            for r in ready:
                try:
                    ray.get(r)
                except Exception:
                    pass  # a dead member has nothing left to destroy
        session.remove_session(self.name, self.session)

    def __enter__(self) -> GroupHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def _actor_ids(actors: list[Any], what: str) -> list[str]:
    import ray

    bad = [a for a in actors if not isinstance(a, ray.actor.ActorHandle)]
    if bad:
        raise InvalidArgumentError(f"{what}: expected Ray actor handles, got {bad[0]!r}")
    ids = [a._actor_id.hex() for a in actors]
    if len(set(ids)) != len(ids):
        raise InvalidArgumentError(f"{what}: the same actor appears twice in the list")
    return ids


def create_group(
    actors: Sequence[Any], name: str = "default", backend: Any = "auto", timeout_s: float = 60.0
) -> GroupHandle:
    """Group ``actors`` (any Ray actors; ranks follow list order); returns once all joined."""
    import ray

    name = checks.name(name)
    actors = list(actors)
    if not actors:
        raise InvalidArgumentError("create_group needs at least one actor")
    be = checks.backend(backend)
    ids = _actor_ids(actors, "create_group")
    rec = session.open_session(name, len(actors), be, timeout_s, ids)
    refs = [
        a.__ray_call__.remote(_remote_join, len(actors), i, name, be, timeout_s, rec)
        for i, a in enumerate(actors)
    ]
    pending = dict(zip(refs, range(len(actors))))
    deadline = time.monotonic() + timeout_s + 5
    error: str | None = None
    while pending and error is None:
        ready, _ = ray.wait(
            list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic())
        )
        if not ready:
            ranks = sorted(pending.values())
            error = (
                "timed out: "
                + ", ".join(f"rank {i} ({_actor_label(actors[i])})" for i in ranks)
                + " did not join; an actor busy in a long method joins only when it is done"
            )
            break
        for r in ready:
            i = pending.pop(r)
            try:
                ray.get(r)
            except SidebandError as e:
                error = f"rank {i} ({_actor_label(actors[i])}) failed to join: {e}"
            except Exception as e:
                error = f"rank {i} ({_actor_label(actors[i])}) is dead or failed: {e}"
    if error is not None:
        session.fail_session(name, rec["session"], error)
        GroupHandle(name, actors, rec["session"], be).destroy(timeout_s=5)
        raise RendezvousError(f"create_group({name!r}): {error}")
    return GroupHandle(name, actors, rec["session"], be)


def declare_group(
    actors: Sequence[Any],
    world_size: int,
    ranks: Sequence[int],
    name: str = "default",
    backend: Any = "auto",
    timeout_s: float = 60.0,
) -> GroupHandle:
    """Declare a group from the driver; each actor joins on its first ``get_group(name)``.

    Unlike :func:`create_group` this does not call the actors, so they may be busy; the group
    forms when all of them first use it. The declaration (which holds the group's secret) leaves
    the KV once the group forms, when its formation fails, or on the handle's ``destroy()``.
    """
    name = checks.name(name)
    be = checks.backend(backend)
    actors = list(actors)
    ranks = [int(r) for r in ranks]
    if len(actors) != world_size or sorted(ranks) != list(range(world_size)):
        raise InvalidArgumentError(
            f"declare_group({name!r}): need world_size={world_size} actors and ranks "
            f"0..{world_size - 1} each once; got {len(actors)} actors and ranks {ranks}"
        )
    ids = _actor_ids(actors, "declare_group")
    rec = session.open_session(name, world_size, be, timeout_s, ids)
    _kv.put(session.decl_key(name), {"session": rec, "ranks": dict(zip(ids, ranks))})
    by_rank = [a for _, a in sorted(zip(ranks, actors), key=lambda p: p[0])]
    return GroupHandle(name, by_rank, rec["session"], be)


def list_groups() -> list[dict[str, Any]]:
    """Live groups of the cluster with their members; entries of dead groups are removed."""
    out = []
    for key, rec in _kv.items("group/").items():
        if not key.endswith("/session"):
            continue
        roster = _kv.get(session.roster_key(rec["name"], rec["session"]))
        members = roster if isinstance(roster, list) else []
        ids = [m.get("actor_id") for m in members] or [i for i in (rec.get("actor_ids") or []) if i]
        alive = [_kv.actor_alive(i) if i else True for i in ids]
        if ids and not any(alive):
            session.remove_session(rec["name"], rec["session"])
            continue
        dead = [r for r, ok in enumerate(alive) if not ok]
        state = "ready" if members else "forming"
        if dead:
            state = f"broken (ranks {dead} dead)"
        out.append(
            {
                "name": rec["name"],
                "session": rec["session"],
                "world_size": rec["world_size"],
                "backend": rec["backend"],
                "state": state,
                "members": [
                    {
                        "rank": m["rank"],
                        "actor_id": m.get("actor_id"),
                        "node_id": m.get("node_id"),
                        "pid": m.get("pid"),
                    }
                    for m in members
                ],
            }
        )
    return sorted(out, key=lambda g: g["name"])
