"""Discovery: where every live endpoint listens, stored in the GCS through :mod:`sideband._kv`.

An actor writes ``endpoint/<actor_id>/<protocol>`` once its server accepts connections and
deletes it on graceful exit. A killed actor cannot delete anything, so readers check each entry
against the GCS actor table: entries of dead actors are pruned, and entries written by an earlier
incarnation of a restarted actor (another pid) are ignored until the new one overwrites them.
"""

from __future__ import annotations

import time
from typing import Any

from sideband import _kv
from sideband.errors import EndpointNotFoundError

PREFIX = "endpoint/"
PUBLIC_KEYS = ("actor_id", "name", "class", "protocol", "url")


def key(actor_id: str, protocol: str) -> str:
    return f"{PREFIX}{actor_id}/{protocol}"


def register(entry: dict[str, Any]) -> None:
    _kv.put(key(entry["actor_id"], entry["protocol"]), entry)


def unregister(actor_id: str, protocol: str, pid: int) -> None:
    """Remove our own entry (not one a newer incarnation of the actor already wrote)."""
    k = key(actor_id, protocol)
    entry = _kv.get(k)
    if entry is not None and entry.get("pid") == pid:
        _kv.delete(k)


# The GCS could not be asked (not an error about the actor): never prune on this.
UNKNOWN: dict[str, Any] = {"State": "UNKNOWN"}


def actor_info(actor_id: str) -> dict[str, Any] | None:
    """The GCS's record of an actor (state, pid, restarts); None if the GCS has none, and
    :data:`UNKNOWN` if the GCS could not be asked."""
    from ray._private import state

    try:
        info = state.actors(actor_id)
    except Exception:
        return UNKNOWN
    return info or None


def _live(entry: dict[str, Any], info: dict[str, Any] | None) -> str:
    """'live', 'dead' (prune it) or 'stale' (the actor is restarting or not registered again)."""
    if info is None or info.get("State") == "DEAD":
        return "dead"
    if info is UNKNOWN:
        return "live"  # cannot check: trust the entry rather than drop it
    if info.get("State") == "ALIVE" and info.get("Pid") == entry.get("pid"):
        return "live"
    return "stale"


def list_endpoints(protocol: str | None = None) -> list[dict[str, Any]]:
    """Every live endpoint in the cluster: actor_id, name, class, protocol, url.

    Entries of dead actors are deleted on the way; those of restarting actors are left out
    until the new incarnation registers.
    """
    out = []
    for k, entry in _kv.items(PREFIX).items():
        if protocol is not None and entry.get("protocol") != protocol:
            continue
        verdict = _live(entry, actor_info(entry["actor_id"]))
        if verdict == "dead":
            _kv.delete(k)
        elif verdict == "live":
            out.append({name: entry.get(name) for name in PUBLIC_KEYS})
    return sorted(out, key=lambda e: (e["class"] or "", e["actor_id"], e["protocol"]))


def actor_id_of(actor: Any, namespace: str | None = None) -> str:
    """The hex actor id of a handle or of a named actor."""
    import ray

    if isinstance(actor, str):
        try:
            actor = ray.get_actor(actor, namespace=namespace)
        except ValueError as e:
            raise EndpointNotFoundError(
                f"no actor named {actor!r} (namespace {namespace!r}); check the name, or pass "
                "the actor handle"
            ) from e
    try:
        return actor._actor_id.hex()
    except AttributeError:
        raise TypeError(f"expected an actor handle or an actor name, got {type(actor)!r}") from None


def lookup(
    actor: Any, protocol: str, timeout_s: float = 30.0, namespace: str | None = None
) -> dict:
    """The live registry entry of ``actor``'s ``protocol`` endpoint, waiting up to ``timeout_s``.

    Waits while the actor is being created or restarted; raises EndpointNotFoundError at once if
    the actor is dead, and after ``timeout_s`` if it is alive but has no such endpoint.
    """
    actor_id = actor_id_of(actor, namespace)
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        info = actor_info(actor_id)
        entry = _kv.get(key(actor_id, protocol))
        state = (info or {}).get("State")
        if state == "DEAD":
            if entry is not None:
                _kv.delete(key(actor_id, protocol))
            cause = _death_cause(info or {})
            raise EndpointNotFoundError(
                f"actor {actor_id} is dead, so its {protocol} endpoint is gone ({cause}). "
                "Create a new actor, or use max_restarts for one that comes back."
            )
        if entry is not None and _live(entry, info) == "live":
            return entry
        if time.monotonic() >= deadline:
            cls = (info or {}).get("ActorClassName", "?")
            if info is None:
                what = "is unknown to the cluster"
            elif state == "ALIVE":
                what = f"has no {protocol} endpoint: decorate the class with sideband.{protocol}.expose()"
            else:
                what = f"is {state}, and its {protocol} endpoint did not come up"
            raise EndpointNotFoundError(
                f"actor {actor_id} ({cls}) {what} (waited {timeout_s:g} s)."
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _death_cause(info: dict[str, Any]) -> str:
    cause = info.get("DeathCause")
    text = str(cause).strip() if cause else ""
    # The GCS record is a protobuf message: keep its human-readable error message only.
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("error_message:"):
            return line.split(":", 1)[1].strip().strip('"')[:300]
    return text[:300] or "no cause recorded"
