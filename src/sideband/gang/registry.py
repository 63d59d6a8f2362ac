"""Live gangs, listed from any process of the cluster (``sideband status``).

Entries live in the GCS under "gang/<name>" (sideband._kv). The owning driver writes them on
every state change and deletes them at shutdown; readers prune entries whose driver is gone, and
mark members whose actor is dead.
"""

from __future__ import annotations

from typing import Any

from sideband import _kv

PREFIX = "gang/"


def publish(entry: dict[str, Any]) -> None:
    _kv.put(PREFIX + entry["name"], entry)


def member_entries(infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the registry keeps of each member, in rank order."""
    keys = ("actor_id", "node_ip", "node_id", "pid", "name")
    return [
        {"rank": r, **{("node" if k == "node_ip" else k): info.get(k) for k in keys}}
        for r, info in enumerate(infos)
    ]


def remove(name: str) -> None:
    _kv.delete(PREFIX + name)


def _dead_jobs() -> set[str] | None:
    try:
        from ray._private import state

        return {j["JobID"] for j in state.state.job_table() if j.get("IsDead")}
    except Exception:
        return None


def _actor_alive(actor_id: str) -> bool:
    # The GCS's actor table answers without the dashboard, which _kv.actor_alive needs.
    try:
        from ray._private import state

        info = state.actors(actor_id=actor_id)
        return bool(info) and info.get("State") != "DEAD"
    except Exception:
        return _kv.actor_alive(actor_id)


def list_gangs() -> list[dict[str, Any]]:
    """Live gangs: dicts with "name", "state", "setup", "world_size", "members" (each with
    "rank", "actor_id", "node", "pid", "alive"). Entries of dead drivers are pruned."""
    dead_jobs = _dead_jobs() or set()
    out: list[dict[str, Any]] = []
    for key, entry in _kv.items(PREFIX).items():
        if entry.get("job_id") in dead_jobs:
            _kv.delete(key)
            continue
        members = entry.get("members", [])
        for m in members:
            m["alive"] = _actor_alive(m["actor_id"]) if m.get("actor_id") else False
        if entry.get("state") in ("ready", "running") and members:
            if not any(m["alive"] for m in members):
                # Members gone while the entry says otherwise: the driver died without cleanup
                # (or is about to notice); nothing is left to list.
                _kv.delete(key)
                continue
            if not all(m["alive"] for m in members):
                entry["state"] = "degraded"
        out.append(entry)
    return sorted(out, key=lambda e: e["name"])
