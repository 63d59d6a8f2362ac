"""Session records of forming groups in Ray's internal key-value store.

Rank 0, or the driver that calls ``create_group``, opens a *session* with a fresh id and a
per-group secret; every member registers under it; rank 0 publishes the roster once all
``world_size`` ranks are in. A name reused after destroy gets a new session, so stale entries
never mix in. ``declare_group``'s record (``decl/<name>``) names the actors that join lazily.

The secret lives under its own key (``group/<name>/<session>/secret``), never in the session
record that ``list_groups`` reads, and it leaves the store, with any declaration, once the group
has formed (rank 0 calls :func:`retire`), when formation fails, and when the group is destroyed:
anyone with access to the KV can read a *forming* group's secret (Ray's trust boundary), no one a
formed group's.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Sequence
from typing import Any

from sideband import _kv
from sideband.collective.comm import waiting
from sideband.collective.rendezvous import topology
from sideband.errors import RendezvousError


def session_key(name: str) -> str:
    return f"group/{name}/session"


def _member_prefix(name: str, session: str) -> str:
    return f"group/{name}/{session}/m/"


def member_key(name: str, session: str, rank: int) -> str:
    return _member_prefix(name, session) + str(rank)


def roster_key(name: str, session: str) -> str:
    return f"group/{name}/{session}/roster"


def secret_key(name: str, session: str) -> str:
    return f"group/{name}/{session}/secret"


def decl_key(name: str) -> str:
    return f"decl/{name}"


def ray_ids() -> tuple[str | None, str | None]:
    """This process's Ray actor id and node id (None outside an actor / Ray)."""
    try:
        import ray

        ctx = ray.get_runtime_context()
        return ctx.get_actor_id(), ctx.get_node_id()
    except Exception:
        return None, None


def open_session(
    name: str,
    world_size: int,
    backend: str,
    timeout_s: float,
    actor_ids: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """Create a fresh session record for group ``name`` (done by rank 0 or the driver)."""
    sid = uuid.uuid4().hex
    rec: dict[str, Any] = {
        "name": name,
        "session": sid,
        "world_size": world_size,
        "backend": backend,
        "timeout_s": timeout_s,
        "created": time.time(),
        "actor_ids": actor_ids,
    }
    secret = secrets.token_hex(32)
    # The secret first: a member that sees the session finds its secret (unless already retired).
    _kv.put(secret_key(name, sid), secret)
    _kv.put(session_key(name), rec)
    return {**rec, "secret": secret}


def retire(name: str, session: str) -> None:
    """Take session ``session``'s secret, and its declaration if any, out of the store.

    Called once the group formed (every member holds the secret by then), when its formation
    failed, and on destroy. Idempotent.
    """
    _kv.delete(secret_key(name, session))
    decl = _kv.get(decl_key(name))
    if isinstance(decl, dict) and decl.get("session", {}).get("session") == session:
        # A later declaration of the same name carries another session: never removed here.
        _kv.delete(decl_key(name))


def retire_quietly(name: str, session: str) -> None:
    """:func:`retire` on an error path: a store that cannot be reached must not mask the error."""
    try:
        retire(name, session)
    except Exception:
        pass


def fail_session(name: str, session: str, reason: str) -> None:
    """Publish a failed roster so that every waiting member gives up at once."""
    _kv.put(roster_key(name, session), {"error": reason})


def remove_session(name: str, session: str) -> None:
    retire(name, session)
    _kv.delete_prefix(f"group/{name}/{session}/")
    rec = _kv.get(session_key(name))
    if rec is not None and rec.get("session") == session:
        _kv.delete(session_key(name))


def agree(
    name: str,
    world_size: int,
    rank: int,
    backend: str,
    deadline: float,
    rec: dict[str, Any] | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    actor_id, node_id = ray_ids()
    nonce = uuid.uuid4().hex
    entry = {
        "rank": rank,
        "world_size": world_size,
        "backend": backend,
        "nonce": nonce,
        "actor_id": actor_id,
        "node_id": node_id,
        "pid": os.getpid(),
        "host_key": topology.host_key(),
        # Settings every rank must apply alike: the group follows rank 0's (topology.plan).
        "cpus": os.cpu_count() or 1,
        **topology.settings(),
    }
    fixed = rec is not None
    if rec is None and rank == 0:
        rec = open_session(name, world_size, backend, max(0.0, deadline - time.monotonic()))
        fixed = True
    try:
        return _agree(name, world_size, rank, deadline, rec, fixed, entry)
    except BaseException:
        if fixed and rec is not None:
            retire_quietly(name, rec["session"])  # a failed formation leaves no secret behind
        raise


def _agree(
    name: str,
    world_size: int,
    rank: int,
    deadline: float,
    rec: dict[str, Any] | None,
    fixed: bool,
    entry: dict[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    nonce = entry["nonce"]
    registered: str | None = None
    backoff = waiting.Backoff()
    while True:
        if not fixed:
            cur = _kv.get(session_key(name))
            if cur is not None and (rec is None or cur["session"] != rec["session"]):
                # Rank 0 opened a (new) session: (re-)register under it. No secret: that session
                # formed already (an older incarnation of the name), so keep waiting for a new one.
                secret = _kv.get(secret_key(name, cur["session"]))
                if secret is not None:
                    rec = {**cur, "secret": secret}
        if rec is not None and registered != rec["session"]:
            _kv.put(_member_prefix(name, rec["session"]) + str(rank), entry)
            registered = rec["session"]
        if rec is not None:
            if rank == 0:
                roster = _collect(name, rec, world_size)
            else:
                roster = _kv.get(roster_key(name, rec["session"]))
            if isinstance(roster, dict):
                # A failed formation: ours if the driver made the session, or if rank 0 saw us in
                # it; otherwise an older incarnation of the name failed: wait for the new one.
                if fixed or nonce in roster.get("nonces", ()):
                    raise RendezvousError(f"group {name!r}, rank {rank}: {roster['error']}")
            elif roster is not None and rank < len(roster) and roster[rank]["nonce"] == nonce:
                return rec, roster
            # Otherwise the roster of an older incarnation of this name (maybe of another world
            # size) is in the store: wait for rank 0's new session.
        if time.monotonic() > deadline:
            raise RendezvousError(_join_timeout_message(name, rank, world_size, rec))
        backoff.pause()


def _collect(name: str, rec: dict[str, Any], world_size: int) -> list[dict[str, Any]] | dict | None:
    """Rank 0: the roster once every rank registered, an error record, or None (keep waiting)."""
    failed = _kv.get(roster_key(name, rec["session"]))
    if isinstance(failed, dict):
        return failed
    members = _kv.items(_member_prefix(name, rec["session"]))
    if len(members) < world_size:
        return None
    entries = sorted(members.values(), key=lambda e: e["rank"])
    bad = [e for e in entries if e["world_size"] != world_size or e["backend"] != rec["backend"]]
    if bad or [e["rank"] for e in entries] != list(range(world_size)):
        err = {
            "nonces": [e["nonce"] for e in entries],
            "error": "members disagree on world size, ranks or backend: "
            + ", ".join(
                f"rank {e['rank']} (world_size={e['world_size']}, backend={e['backend']!r})"
                for e in entries
            ),
        }
        _kv.put(roster_key(name, rec["session"]), err)
        return err
    _kv.put(roster_key(name, rec["session"]), entries)
    return entries


def _join_timeout_message(name: str, rank: int, world_size: int, rec: dict[str, Any] | None) -> str:
    if rec is None:
        return (
            f"group {name!r}, rank {rank}: rank 0 never opened the group; check that some "
            "actor calls init_group(..., rank=0) with the same name"
        )
    present = {int(k.rsplit("/", 1)[1]) for k in _kv.keys(_member_prefix(name, rec["session"]))}
    missing = sorted(set(range(world_size)) - present)
    return (
        f"group {name!r}, rank {rank}: timed out waiting for ranks {missing} to join "
        f"(world_size={world_size}); check that every rank calls init_group with the same "
        "name and world size, or raise timeout_s"
    )


def _port_key(name: str, session: str, rank: int) -> str:
    return f"group/{name}/{session}/port/{rank}"


def publish_port(name: str, session: str, rank: int, host: str, port: int) -> None:
    _kv.put(_port_key(name, session, rank), {"host": host, "port": port})


def wait_for_port(name: str, session: str, rank: int, deadline: float) -> dict[str, Any]:
    return waiting.until(
        lambda: _kv.get(_port_key(name, session, rank)),
        deadline,
        lambda: RendezvousError(f"group {name!r}: rank {rank} never opened its listener"),
    )
