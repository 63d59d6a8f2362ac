"""Checkpoints that outlive a gang's members: pickled into the GCS key-value store.

The GCS holds them, not a member, so a member that dies does not take the last checkpoint
with it. The gang deletes its checkpoint at shutdown.
"""

from __future__ import annotations

from typing import Any

# A namespace of its own: the registry's "gang/" entries are JSON, these are pickles.
_NS = "sideband_gang_checkpoint"
_MAX_BYTES = 64 * 1024 * 1024


def store(gang_name: str, state: Any) -> None:
    from ray import cloudpickle
    from ray.experimental import internal_kv

    from sideband.errors import GangError

    blob = cloudpickle.dumps(state)
    if len(blob) > _MAX_BYTES:
        raise GangError(
            f"gang {gang_name}: checkpoint of {len(blob)} bytes is over {_MAX_BYTES}; "
            "save large state to storage and checkpoint its path"
        )
    internal_kv._internal_kv_put(gang_name.encode(), blob, overwrite=True, namespace=_NS)


def load(gang_name: str) -> Any:
    from ray import cloudpickle
    from ray.experimental import internal_kv

    blob = internal_kv._internal_kv_get(gang_name.encode(), namespace=_NS)
    return None if blob is None else cloudpickle.loads(blob)


def delete(gang_name: str) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(gang_name.encode(), namespace=_NS)
