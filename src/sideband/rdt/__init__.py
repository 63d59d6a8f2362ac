"""Tensors by ref, out of band: sideband as a Ray Direct Transport (``tensor_transport="sideband"``).

::

    import sideband.rdt
    sideband.rdt.register()          # before the actor classes are defined and created

    @ray.remote
    class Producer:
        @ray.method(tensor_transport="sideband")
        def produce(self): return torch.ones(1 << 20)

    b.consume.remote(a.produce.remote())   # the tensor goes a -> b through shared memory

Same host: the producer's tensors are copied into a shared block when the method returns and the
consumer copies them out (or views them, with ``configure(zero_copy=True)``); across hosts the
consumer pulls them over authenticated TCP. Ray's reference counting frees the block. numpy
arrays travel the same way with ``tensor_transport="sideband_numpy"``. See docs/objectrefs.md.
"""

from __future__ import annotations

import os
from typing import Any

from sideband.rdt.config import Settings, configure

__all__ = ["NAME", "NUMPY_NAME", "Settings", "configure", "empty", "register", "stats", "trim"]

NAME = "sideband"
NUMPY_NAME = "sideband_numpy"


def register() -> None:
    """Make ``tensor_transport="sideband"`` (torch) and ``"sideband_numpy"`` known in this process.

    Call it in every process that defines or creates actors using them, before the classes are
    defined (Ray checks the name in ``@ray.method``); Ray then registers the transport in the
    actors it creates. For actors created by other actors or tasks, have every worker do it:
    ``ray.init(runtime_env={"worker_process_setup_hook": "sideband.rdt.register"})``.
    Calling it again does nothing.
    """
    import numpy as np
    from ray.experimental.rdt import register_tensor_transport
    from ray.experimental.rdt import util as rdt_util

    from sideband.rdt.transport import SidebandNumpyTransport, SidebandTransport

    # Ray's defaults are registered lazily; registering ours first must not skip them.
    rdt_util._ensure_default_transports_registered()
    known = rdt_util.transport_manager_info
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is not None and NAME.upper() not in known:
        register_tensor_transport(NAME, ["cpu"], SidebandTransport, torch.Tensor)
    if NUMPY_NAME.upper() not in known:
        register_tensor_transport(NUMPY_NAME, ["cpu"], SidebandNumpyTransport, np.ndarray)


def empty(shape: Any, dtype: Any = None, *, numpy: bool = False) -> Any:
    """A new uninitialised tensor (or numpy array) in this process's shared memory.

    Returned alone from a ``tensor_transport="sideband"`` method, it travels with no copy in the
    producer: consumers read it where it is. It is then live, as with Ray's own transports:
    writes the producer makes before a consumer has fetched it show there (tensors received
    through the transport are in shared memory too, and are passed on the same way).
    """
    import math

    import numpy as np

    from sideband.rdt import arrays, pool

    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if numpy:
        np_dt = np.dtype(dtype or np.float32)
        return arrays.typed_np(pool.owned(math.prod(dims) * np_dt.itemsize), dims, np_dt)
    import torch

    dt: Any = dtype or torch.get_default_dtype()
    nbytes = math.prod(dims) * torch.empty((), dtype=dt).element_size()
    return arrays.typed_t(pool.owned(nbytes), dims, dt)


def trim() -> None:
    """Hand this process's idle shared blocks and cached mappings of producers' blocks back to the
    kernel now (they go by themselves after ``SIDEBAND_RDT_KEEP_S`` idle seconds, 2 by default)."""
    from sideband.rdt.local import MAPS
    from sideband.rdt.pool import POOL

    MAPS.clear()
    POOL.trim()


def stats() -> dict[str, Any]:
    """This process's transport state: objects held for consumers, pool blocks, memfds, mappings.

    ``memfds`` counts the sideband shared files this process has open (its own and peers'),
    ``mappings`` its mappings of any, ``peer_mappings`` those of files other processes own;
    ``fetched`` how this process's fetches went (inline, local copy, view, TCP pull),
    ``serving`` how many TCP pulls of its objects are streaming now.
    """
    from sideband.rdt import exports, fetch, remote
    from sideband.rdt.pool import POOL

    own = POOL.inodes()
    files: set[int] = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:sideband"):
                files.add(os.stat(f"/proc/self/fd/{fd}").st_ino)
        except OSError:
            pass
    with open("/proc/self/maps") as f:
        mapped = [int(line.split()[4]) for line in f if "/memfd:sideband" in line]
    return {
        "exports": exports.count(),
        **POOL.stats(),
        "memfds": len(files),
        "mappings": len(mapped),
        # Mappings of other processes' blocks (zero-copy views and cached mappings).
        "peer_mappings": sum(1 for ino in mapped if ino not in own),
        "fetched": dict(fetch.COUNTS),
        "serving": remote.serving(),
    }
