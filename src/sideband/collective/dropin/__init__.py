"""Drop-in replacement for ``ray.util.collective``.

Switch one import line and code written for ``ray.util.collective``'s CPU path runs on sideband::

    import sideband.collective as col          # was: import ray.util.collective as col
    from sideband.collective.types import Backend, ReduceOp

Every public function of ``ray.util.collective`` exists here with the same name, signature,
defaults, return values and in-place semantics, translated onto :class:`sideband.Group`: the
checks are the core's (``api/checks.py``), raised as :class:`CollectiveUsageError` (both the
``ValueError`` and the ``RuntimeError`` Ray's callers catch). Differences, all deliberate:

- ``Backend.GLOO`` / ``"gloo"`` runs sideband's native CPU backend (shared memory between ranks
  on one host, TCP between hosts), not torch's gloo. ``"torch_gloo"`` runs torch's own gloo
  under sideband's rendezvous (needs torch). sideband's own names (``"auto"``, ``"native"``,
  ``"shm"``, ``"tcp"``) are accepted too.
- Group names may not contain ``"/"`` (an ``InvalidArgumentError``, a ``ValueError``).
- ``Backend.NCCL`` (still the default, as in Ray) runs torch's NCCL (``"torch_nccl"``) where torch
  with CUDA is available, and raises :class:`sideband.BackendUnavailableError` (a
  ``RuntimeError``) otherwise.
- Tensors may be numpy arrays, torch tensors (CPU or CUDA, any dtype incl. bfloat16) and cupy
  arrays; on ``"gloo"`` groups CUDA tensors are staged through pinned host memory or moved by
  CUDA IPC (see docs/gpu.md). The ``*_multigpu`` functions (several GPUs per process) raise
  :class:`sideband.BackendUnavailableError`: sideband runs one GPU per process.
- ``gloo_timeout`` (milliseconds) becomes the group's deadline (``Group.timeout_s``): a join
  gives up with a :class:`sideband.RendezvousError`, an operation with a
  :class:`sideband.CollectiveTimeoutError` (both ``RuntimeError``) instead of hanging.
- Errors keep the builtin types Ray's callers catch: an invalid rank is a ``ValueError``, a
  tensor list of the wrong length or shape a ``RuntimeError`` (:class:`CollectiveUsageError` is
  both), an op on a group that does not exist here a ``RuntimeError``
  (:class:`sideband.GroupNotFoundError`).
- ``reducescatter`` does not modify its input list (Ray's gloo path all-reduces every list
  element in place as a side effect).
- Ray hands numpy arrays that arrive as task arguments (or from ``ray.get``) out read-only, over
  its object store's memory, and Ray's own collective writes results into them anyway (through
  ``torch.from_numpy``, which warns that this is undefined behaviour; other readers of the same
  object see the change). Here a function that would write into a read-only numpy array raises
  :class:`CollectiveUsageError` before anything moves, saying so; copy the array
  (``x = x.copy()``), or pass ``write_readonly=True`` (a keyword every writing function takes)
  to write into its memory as Ray does.

Also offered, as in Ray: ``get_group_handle`` (returns a :class:`sideband.Group`) and
``synchronize``. ``register_collective_backend`` is not offered: sideband's backends are
selected by name.
"""

from __future__ import annotations

from sideband.collective import types
from sideband.collective.dropin.groups import (
    create_collective_group,
    destroy_collective_group,
    get_collective_group_size,
    get_group_handle,
    get_rank,
    gloo_available,
    init_collective_group,
    is_backend_available,
    is_group_initialized,
    nccl_available,
)
from sideband.collective.dropin.ops import (
    allgather,
    allgather_multigpu,
    allreduce,
    allreduce_multigpu,
    barrier,
    broadcast,
    broadcast_multigpu,
    recv,
    recv_multigpu,
    reduce,
    reduce_multigpu,
    reducescatter,
    reducescatter_multigpu,
    send,
    send_multigpu,
    synchronize,
)
from sideband.errors import CollectiveUsageError

__all__ = [
    "CollectiveUsageError",
    "allgather",
    "allgather_multigpu",
    "allreduce",
    "allreduce_multigpu",
    "barrier",
    "broadcast",
    "broadcast_multigpu",
    "create_collective_group",
    "destroy_collective_group",
    "get_collective_group_size",
    "get_group_handle",
    "get_rank",
    "gloo_available",
    "init_collective_group",
    "is_backend_available",
    "is_group_initialized",
    "nccl_available",
    "recv",
    "recv_multigpu",
    "reduce",
    "reduce_multigpu",
    "reducescatter",
    "reducescatter_multigpu",
    "send",
    "send_multigpu",
    "synchronize",
    "types",
]
