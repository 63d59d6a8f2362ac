"""The collectives benchmark (``sideband bench collectives``, :mod:`.cli`): sideband and its peers.

Implementations (see docs/benchmarks.md): ``sideband`` (transports shm and tcp), ``ray_gloo``
(ray.util.collective, backend "gloo"), ``torch_gloo`` (torch.distributed's ProcessGroupGloo in the
same actors), ``object_store`` (ray.put / ray.get, driven from the driver), ``mpich`` (mpi4py on
MPICH under mpiexec, when installed) and ``memcpy`` (one np.copyto of the buffer).

Every Ray-based implementation runs in the same actors, on the same buffers, point by point (one
op and size at a time, implementations back to back), so that the ratios compare like with like.
Time of one iteration: the maximum over ranks of ``perf_counter`` around the op, measured inside
each actor after a barrier of that implementation and after warm-up iterations; a point reports
the median, min and max of those per-iteration maxima.

Modules, by job: :mod:`.config` (implementations, ops, sizes, modes), :mod:`.worker` (inside the
actors), :mod:`.impls` and :mod:`.object_store` (each implementation's lifecycle),
:mod:`.mpich` (mpiexec), :mod:`.sweep` (one world size, point by point), :mod:`.results` and
:mod:`.targets` (records, bandwidth, ratios), :mod:`.report` (tables, JSON, plot), :mod:`.cli`.
"""

from __future__ import annotations

from sideband.bench.collectives.cli import main
from sideband.bench.collectives.config import (
    _KIB,
    _MIB,
    FULL_SIZES,
    IMPLS,
    LABELS,
    MODES,
    OPS,
    QUICK_SIZES,
    SIZED_OPS,
    SMOKE_SIZES,
    SUPPORTS,
    TRANSPORTS,
    Mode,
    _csv,
    _parse_size,
    _shape,
)
from sideband.bench.collectives.report import _fmt_size, _fmt_t, plot
from sideband.bench.collectives.results import Run, _per_iteration_max, busbw
from sideband.bench.collectives.targets import TARGETS, ratios
from sideband.bench.collectives.worker import (
    BenchWorker,
    _a_alloc,
    _a_run,
    _a_setup,
    _a_verify,
    _st,
)

# The underscored names are harness pieces reused by the multinode bench and the tests.
__all__ = [
    "FULL_SIZES",
    "IMPLS",
    "LABELS",
    "MODES",
    "OPS",
    "QUICK_SIZES",
    "SIZED_OPS",
    "SMOKE_SIZES",
    "SUPPORTS",
    "TARGETS",
    "TRANSPORTS",
    "_KIB",
    "_MIB",
    "BenchWorker",
    "Mode",
    "Run",
    "_a_alloc",
    "_a_run",
    "_a_setup",
    "_a_verify",
    "_csv",
    "_fmt_size",
    "_fmt_t",
    "_parse_size",
    "_per_iteration_max",
    "_shape",
    "_st",
    "busbw",
    "main",
    "plot",
    "ratios",
]
