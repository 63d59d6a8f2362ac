"""The consumer's side: get an object's bytes from its producer, as copies or as views.

Copies land in blocks of this process's pool (pages already touched: several times faster than
fresh memory for large arrays); a block goes back to the pool when the last array over it dies.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from sideband.errors import CollectiveError
from sideband.rdt import arrays, local, pool
from sideband.rdt.config import SETTINGS

_HOST = local.host_id()

# Ray's abort_transport may come before the fetch it aborts has started: remember it a while.
_ABORT_KEEP_S = 300.0
_aborted_lock = threading.Lock()
_aborted: dict[str, float] = {}

# How this process's fetches went (sideband.rdt.stats()): inline, mapped, viewed, pulled.
COUNTS = {"inline": 0, "local": 0, "view": 0, "tcp": 0}


def abort(obj_id: str) -> None:
    now = time.monotonic()
    with _aborted_lock:
        for k in [k for k, t in _aborted.items() if now - t > _ABORT_KEEP_S]:
            del _aborted[k]
        _aborted[obj_id] = now


def _checker(obj_id: str, who: str) -> Any:
    def check() -> None:
        if _aborted and obj_id in _aborted:
            raise CollectiveError(
                f"Ray aborted the fetch of object {obj_id} from {who} (its RDT deadline passed, "
                "or the transfer failed on the other side); pass the ref again to retry"
            )

    return check


def same_host(meta: Any) -> bool:
    return SETTINGS.same_host and bool(_HOST) and meta.host == _HOST


def fetch(obj_id: str, meta: Any, target_buffers: list[Any] | None) -> list[Any]:
    """The arrays of object ``obj_id`` described by ``meta`` (a ``SidebandMetadata``)."""
    check = _checker(obj_id, meta.who)
    check()
    torch_kind = meta.kind == "torch"
    shapes = [m[0] for m in meta.tensor_meta]
    dtypes = [m[1] for m in meta.tensor_meta]
    if target_buffers is None and SETTINGS.zero_copy and meta.inline is None and same_host(meta):
        whole = local.view(meta.pid, meta.fd, meta.ino, meta.size, meta.who)
        COUNTS["view"] += 1
        return [
            arrays.typed(whole[off : off + n], s, d, torch_kind)
            for off, n, s, d in zip(meta.offsets, meta.sizes, shapes, dtypes)
        ]
    if target_buffers is not None:
        dsts = [arrays.u8_of(b) for b in target_buffers]
        out = list(target_buffers)
    else:
        dsts = [pool.owned(n) for n in meta.sizes]
        out = [arrays.typed(o, s, d, torch_kind) for o, s, d in zip(dsts, shapes, dtypes)]
    if meta.inline is not None:
        src = np.frombuffer(meta.inline, np.uint8)
        pos = 0
        for dst in dsts:
            np.copyto(dst, src[pos : pos + dst.size])
            pos += dst.size
        COUNTS["inline"] += 1
    elif same_host(meta):
        parts = list(zip(meta.offsets, dsts))
        local.copy_out(meta.pid, meta.fd, meta.ino, meta.size, parts, check, meta.who)
        COUNTS["local"] += 1
    else:
        from sideband.rdt import remote

        remote.pull(obj_id, meta, list(zip(meta.offsets, dsts)), check, SETTINGS.timeout_s)
        COUNTS["tcp"] += 1
    return out
