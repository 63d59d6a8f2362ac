"""The per-process table of groups: joining, looking up and leaving groups in this process."""

from __future__ import annotations

import threading
from typing import Any

from sideband import _kv
from sideband.collective import rendezvous
from sideband.collective.api import checks
from sideband.collective.api.group import Group
from sideband.collective.backends import torch_pg
from sideband.collective.backends.torch_ops import Torch
from sideband.collective.rendezvous import session
from sideband.errors import GroupNotFoundError, InvalidArgumentError

_GROUPS: dict[str, Group] = {}
_TABLE_LOCK = threading.Lock()
_USED_DECLARATIONS: set[str] = set()


def backend_available(backend: Any) -> bool:
    """Whether ``backend`` can run in this process (torch's need torch; NCCL a CUDA device)."""
    try:
        be = checks.backend(backend)
    except InvalidArgumentError:
        return False
    kind = checks.TORCH_KINDS.get(be)
    return kind is None or torch_pg.available(kind)[0]


def init_group(
    world_size: int,
    rank: int,
    name: str = "default",
    backend: Any = "auto",
    timeout_s: float = 60.0,
) -> Group:
    """Join group ``name`` as ``rank`` from inside an actor; returns once every rank joined."""
    return join(world_size, rank, name, backend, timeout_s, None)


def join(
    world_size: int,
    rank: int,
    name: str,
    backend: Any,
    timeout_s: float,
    session_rec: dict[str, Any] | None,
) -> Group:
    name = checks.name(name)
    world_size, rank = checks.world(world_size, rank)
    be = checks.backend(backend)
    timeout_s = checks.timeout(timeout_s)
    with _TABLE_LOCK:
        if name in _GROUPS:
            raise InvalidArgumentError(
                f"this process is already rank {_GROUPS[name].rank} of group {name!r}; destroy it "
                "first, or use another name"
            )
        _GROUPS[name] = None  # type: ignore[assignment]  # reserved while joining
    try:
        joined = rendezvous.join(name, world_size, rank, be, timeout_s, session_rec)
    except BaseException:
        with _TABLE_LOCK:
            _GROUPS.pop(name, None)
        if session_rec is not None:  # the driver's session (declared or created) failed to form
            session.retire_quietly(name, session_rec["session"])
        raise
    g = Group(name, rank, world_size, be, timeout_s, joined)
    kind = checks.TORCH_KINDS.get(be)
    try:
        if rank == 0:
            # Formed: every member holds the secret, so it (and any declaration) leaves the KV.
            session.retire(name, g.session)
        if kind is not None:
            # Every member builds the torch process group now, over the native group just formed.
            g._torch = Torch.create(g._native, g.session, kind)
    except BaseException:
        g._close()
        with _TABLE_LOCK:
            _GROUPS.pop(name, None)
        raise
    with _TABLE_LOCK:
        _GROUPS[name] = g
    return g


def get_group(name: str = "default") -> Group:
    """This process's group ``name`` (joining it now if the driver declared it for this actor)."""
    with _TABLE_LOCK:
        g = _GROUPS.get(name)
    if g is not None:
        return g
    g = _join_declared(name)
    if g is not None:
        return g
    raise GroupNotFoundError(
        f"this process is not a member of group {name!r}: call sideband.init_group(...) here, or "
        "sideband.create_group(actors, name=...) on the driver"
    )


def is_group_initialized(name: str = "default") -> bool:
    """Whether this process has joined group ``name``."""
    with _TABLE_LOCK:
        return _GROUPS.get(name) is not None


def destroy_group(name: str = "default") -> None:
    """Leave group ``name`` in this process and release its resources (idempotent)."""
    with _TABLE_LOCK:
        g = _GROUPS.pop(name, None)
    if g is not None:
        g._close()


def lookup(name: str) -> Group | None:
    """This process's group ``name`` if it joined it (no declared join)."""
    with _TABLE_LOCK:
        return _GROUPS.get(name)


def local_groups() -> dict[str, Group]:
    with _TABLE_LOCK:
        return {k: v for k, v in _GROUPS.items() if v is not None}


# --- driver side -----------------------------------------------------------------------------------


def _join_declared(name: str) -> Group | None:
    actor_id, _ = session.ray_ids()
    if actor_id is None:
        return None
    try:
        decl = _kv.get(session.decl_key(name))
    except Exception:
        return None
    if not decl or actor_id not in decl["ranks"]:
        return None
    rec = decl["session"]
    if rec["session"] in _USED_DECLARATIONS:
        return None  # already joined once and destroyed: a declaration forms one group
    _USED_DECLARATIONS.add(rec["session"])
    return join(
        rec["world_size"], decl["ranks"][actor_id], name, rec["backend"], rec["timeout_s"], rec
    )
