"""A tiny JSON registry on Ray's internal key-value store (the GCS).

Groups, endpoints and gangs register here so that any process of the cluster can find them,
with no helper actor to leak: entries live in the GCS and are removed by their owners; readers
prune entries whose owning actor or process is gone.
"""

from __future__ import annotations

import json
from typing import Any

_NS = "sideband"


def _kv() -> Any:
    from ray.experimental import internal_kv

    return internal_kv


def put(key: str, value: Any, overwrite: bool = True) -> bool:
    """Store ``value`` (JSON-serialisable) under ``key``; returns whether it was written."""
    added = _kv()._internal_kv_put(
        key.encode(), json.dumps(value).encode(), overwrite=overwrite, namespace=_NS
    )
    # internal_kv returns True when the key already existed.
    return overwrite or not added


def get(key: str) -> Any | None:
    raw = _kv()._internal_kv_get(key.encode(), namespace=_NS)
    return None if raw is None else json.loads(raw)


def delete(key: str) -> None:
    _kv()._internal_kv_del(key.encode(), namespace=_NS)


def delete_prefix(prefix: str) -> None:
    _kv()._internal_kv_del(prefix.encode(), del_by_prefix=True, namespace=_NS)


def keys(prefix: str) -> list[str]:
    return sorted(k.decode() for k in _kv()._internal_kv_list(prefix.encode(), namespace=_NS))


def items(prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in keys(prefix):
        v = get(k)
        if v is not None:
            out[k] = v
    return out


def actor_alive(actor_id: str) -> bool:
    """Whether the actor with this hex id is alive, restarting or pending, per the GCS."""
    from ray._private import state

    try:
        info = state.actors(actor_id)
    except Exception:
        return True  # cannot tell: never prune on doubt
    return bool(info) and info.get("State") != "DEAD"
