"""``sideband bench collectives``: sideband and its peers side by side, in one run, on one machine.

Implementations (see docs/benchmarks.md): ``sideband`` (transports shm and tcp), ``ray_gloo``
(ray.util.collective, backend "gloo"), ``torch_gloo`` (torch.distributed's ProcessGroupGloo in the
same actors), ``object_store`` (ray.put / ray.get, driven from the driver), ``mpich`` (mpi4py on
MPICH under mpiexec, when installed) and ``memcpy`` (one np.copyto of the buffer).

Every Ray-based implementation runs in the same actors, on the same buffers, point by point (one
op and size at a time, implementations back to back), so that the ratios compare like with like.
Time of one iteration: the maximum over ranks of ``perf_counter`` around the op, measured inside
each actor after a barrier of that implementation and after warm-up iterations; a point reports
the median, min and max of those per-iteration maxima.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sideband.bench import json_header

IMPLS = ("sideband", "ray_gloo", "torch_gloo", "object_store", "mpich", "memcpy")
OPS = ("allreduce", "broadcast", "allgather", "reduce_scatter", "send/recv", "barrier", "create")
SIZED_OPS = ("allreduce", "broadcast", "allgather", "reduce_scatter", "send/recv")
# "empty": shared memory, with every buffer allocated by Group.empty (ops skip a copy).
TRANSPORTS = ("shm", "tcp", "empty")
# Which ops each implementation runs ("create" only where a group of running actors is formed).
SUPPORTS: dict[str, tuple[str, ...]] = {
    "sideband": OPS,
    "ray_gloo": OPS,
    "torch_gloo": OPS,
    "object_store": SIZED_OPS + ("barrier",),
    "mpich": SIZED_OPS + ("barrier",),
    "memcpy": ("send/recv",),
}
LABELS = {
    "sideband": "sideband",
    "ray_gloo": "ray.util.collective gloo",
    "torch_gloo": "torch.distributed gloo",
    "object_store": "Ray object store",
    "mpich": "mpi4py + MPICH",
    "memcpy": "np.copyto",
}
# NCCL-tests bus-bandwidth factors: busbw = algbw * factor(world size).
_BUS: dict[str, Callable[[int], float]] = {
    "allreduce": lambda n: 2 * (n - 1) / n,
    "allgather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "send/recv": lambda n: 1.0,
}
_KIB, _MIB = 1 << 10, 1 << 20
FULL_SIZES = (
    8,
    64,
    512,
    4 * _KIB,
    32 * _KIB,
    256 * _KIB,
    _MIB,
    4 * _MIB,
    16 * _MIB,
    64 * _MIB,
    256 * _MIB,
)
QUICK_SIZES = (8, 64 * _KIB, _MIB, 64 * _MIB)
SMOKE_SIZES = (8, 64 * _KIB)
# Only the default group's destroy also ends torch's default process group, which
# ray.util.collective's gloo backend creates once per process: with any other name, a later group
# of another world size in the same actors would hang.
_RAY_GROUP = "default"
_STATE = "_sideband_bench"


@dataclass
class Mode:
    """How much to measure: sizes, iteration counts and create repetitions."""

    sizes: tuple[int, ...]
    world_sizes: tuple[int, ...]
    max_iters: int
    min_iters: int
    budget_bytes: int  # iterations at a size: budget / size, clamped to [min_iters, max_iters]
    create_reps: int

    def iters(self, nbytes: int) -> tuple[int, int]:
        """(timed iterations, warm-up iterations) for one point of ``nbytes``."""
        n = max(self.min_iters, min(self.max_iters, self.budget_bytes // max(nbytes, 1)))
        return n, (1 if nbytes >= 16 * _MIB else 2)


MODES = {
    "full": Mode(FULL_SIZES, (2, 4), 50, 5, 2 << 30, 5),
    "quick": Mode(QUICK_SIZES, (2, 4), 20, 5, 320 * _MIB, 3),
    "smoke": Mode(SMOKE_SIZES, (2,), 3, 2, 1 << 30, 1),
}


# ---------------------------------------------------------------------------------------------
# Inside the actors (shipped with __ray_call__; `self` is the BenchWorker instance).
# ---------------------------------------------------------------------------------------------
class BenchWorker:
    """A plain actor: everything it runs arrives through ``__ray_call__``."""

    def ready(self) -> int:
        return os.getpid()


def _st(self: Any) -> dict[str, Any]:
    st = getattr(self, _STATE, None)
    if st is None:
        st = {}
        setattr(self, _STATE, st)
    return st


def _a_setup(self: Any, env: dict[str, str], with_torch: bool) -> int:
    """Pin the network to loopback and import the heavy libraries before anything is timed."""
    os.environ.update(env)
    if with_torch:
        import ray.util.collective  # noqa: F401
        import torch  # noqa: F401
        import torch.distributed  # noqa: F401
    import sideband  # noqa: F401

    return os.getpid()


def _shape(op: str, nbytes: int, ws: int) -> tuple[int, int, int]:
    """(elements of x, elements of one rank's chunk, bytes actually measured) for float32.

    allgather and reduce_scatter follow NCCL-tests: ``nbytes`` is the whole (ws, chunk) array.
    """
    if op in ("allgather", "reduce_scatter"):
        chunk = max(1, nbytes // 4 // ws)
        return chunk, chunk, chunk * ws * 4
    if op in SIZED_OPS:
        count = max(1, nbytes // 4)
        return count, count, count * 4
    return 0, 0, 0


def _a_alloc(self: Any, op: str, count: int, chunk: int, ws: int) -> None:
    """Allocate this point's buffers once; every implementation then uses these same arrays."""
    st = _st(self)
    st["bufs"] = None  # free the previous point's arrays before allocating the next ones
    b: dict[str, np.ndarray] = {}
    if op in ("allreduce", "broadcast", "send/recv"):
        b["x"] = np.ones(count, np.float32)
    if op == "send/recv":
        b["y"] = np.zeros(count, np.float32)  # np.copyto's destination
    if op == "allgather":
        b["x"], b["out"] = np.ones(chunk, np.float32), np.zeros((ws, chunk), np.float32)
    if op == "reduce_scatter":
        b["x2"], b["out"] = np.ones((ws, chunk), np.float32), np.zeros(chunk, np.float32)
    st["bufs"] = b


def _a_reset(self: Any) -> dict[str, np.ndarray]:
    """Inputs back to ones, so in-place ops never drift towards inf between implementations."""
    b = _st(self)["bufs"] or {}
    for k in ("x", "x2"):
        if k in b:
            b[k].fill(1.0)
    return b


def _op_fns(
    impl: str, name: str, op: str, rank: int, ws: int, b: dict[str, np.ndarray], st: dict
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(barrier, op) closures of ``impl`` over the buffers ``b``."""
    noop: Callable[[], Any] = lambda: None  # noqa: E731
    if impl == "memcpy":
        x, y = b["x"], b["y"]
        return noop, lambda: np.copyto(y, x)
    if impl == "sideband":
        import sideband

        g = sideband.get_group(name)
        if name.endswith("-empty"):
            # The same values in arrays from Group.empty, made before anything is timed.
            from sideband.collective.shared import NO_REF, ref

            shared = {}
            for k, v in b.items():
                shared[k] = v if ref(v) != NO_REF else g.empty(v.shape, v.dtype)
                shared[k][...] = v
            b = shared
        fns: dict[str, Callable[[], Any]] = {
            "barrier": g.barrier,
            "allreduce": lambda: g.allreduce(b["x"]),
            "broadcast": lambda: g.broadcast(b["x"], src=0),
            "allgather": lambda: g.allgather(b["x"], out=b["out"]),
            "reduce_scatter": lambda: g.reduce_scatter(b["x2"], out=b["out"]),
            "send": lambda: g.send(b["x"], dst=1),
            "recv": lambda: g.recv(b["x"], src=0),
        }
        barrier = g.barrier
    elif impl == "ray_gloo":
        import ray.util.collective as col

        # Row views built once, outside the timed loop (ray's API takes lists of arrays).
        out_rows = list(b["out"]) if "out" in b and b["out"].ndim == 2 else []
        in_rows = list(b["x2"]) if "x2" in b else []
        fns = {
            "barrier": lambda: col.barrier(name),
            "allreduce": lambda: col.allreduce(b["x"], name),
            "broadcast": lambda: col.broadcast(b["x"], 0, name),
            "allgather": lambda: col.allgather(out_rows, b["x"], name),
            "reduce_scatter": lambda: col.reducescatter(b["out"], in_rows, name),
            "send": lambda: col.send(b["x"], 1, name),
            "recv": lambda: col.recv(b["x"], 0, name),
        }
        barrier = fns["barrier"]
    elif impl == "torch_gloo":
        import torch

        pg = st["torch_pg"]
        t = {k: torch.from_numpy(v) for k, v in b.items()}  # views: same memory as b
        t_out_rows = list(t["out"]) if "out" in t and t["out"].dim() == 2 else []
        t_in_rows = list(t["x2"]) if "x2" in t else []
        fns = {
            "barrier": lambda: pg.barrier().wait(),
            "allreduce": lambda: pg.allreduce([t["x"]]).wait(),
            "broadcast": lambda: pg.broadcast(t["x"], 0).wait(),
            "allgather": lambda: pg.allgather([t_out_rows], [t["x"]]).wait(),
            "reduce_scatter": lambda: pg.reduce_scatter([t["out"]], [t_in_rows]).wait(),
            "send": lambda: pg.send([t["x"]], 1, 7).wait(),
            "recv": lambda: pg.recv([t["x"]], 0, 7).wait(),
        }
        barrier = fns["barrier"]
    else:
        raise ValueError(f"no in-actor loop for {impl!r}")
    if op == "send/recv":
        return barrier, fns["send"] if rank == 0 else fns["recv"] if rank == 1 else noop
    return barrier, fns[op]


def _a_run(
    self: Any, impl: str, name: str, op: str, rank: int, ws: int, iters: int, warmup: int
) -> list[float]:
    """Seconds of each timed iteration on this rank (warm-ups excluded)."""
    st = _st(self)
    b = _a_reset(self)
    barrier, fn = _op_fns(impl, name, op, rank, ws, b, st)
    times = []
    for i in range(warmup + iters):
        barrier()  # aligned start: every rank leaves the same barrier, then times the op
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    return times


def _a_verify(self: Any, impl: str, name: str, rank: int, ws: int) -> bool:
    """One allreduce of known values through ``impl``, outside any timed loop."""
    x = np.full(1024, rank + 1, np.float32)
    if name.endswith("-empty"):
        import sideband

        x = sideband.get_group(name).empty(1024, np.float32)
        x[:] = rank + 1
    _, fn = _op_fns(impl, name, "allreduce", rank, ws, {"x": x}, _st(self))
    fn()
    return bool(np.all(x == ws * (ws + 1) / 2))


def _a_barrier(self: Any, impl: str, name: str, rank: int, ws: int) -> None:
    barrier, _ = _op_fns(impl, name, "barrier", rank, ws, {}, _st(self))
    barrier()


def _a_torch_init(self: Any, path: str, rank: int, ws: int, timeout_s: float) -> None:
    """A gloo process group of its own (not torch's default one, which ray_gloo owns)."""
    import torch.distributed as dist

    st = _st(self)
    st["torch_store"] = dist.FileStore(path, ws)
    st["torch_pg"] = dist.ProcessGroupGloo(
        st["torch_store"], rank, ws, datetime.timedelta(seconds=timeout_s)
    )


def _a_torch_destroy(self: Any) -> None:
    st = _st(self)
    st.pop("torch_pg", None)
    st.pop("torch_store", None)


def _a_ray_destroy(self: Any, name: str) -> None:
    import ray.util.collective as col

    if col.is_group_initialized(name):
        col.destroy_collective_group(name)


def _a_os_put(self: Any, key: str) -> list:
    import ray

    return [ray.put(_st(self)["bufs"][key])]  # in a list, so the driver gets the ref itself


def _a_os_reduce(self: Any, refs: list) -> None:
    """allreduce's second half: fetch every rank's array and sum them into x."""
    import ray

    x = _st(self)["bufs"]["x"]
    arrays = ray.get(refs)
    np.copyto(x, arrays[0])
    for a in arrays[1:]:
        np.add(x, a, out=x)


def _a_os_copy(self: Any, refs: list, key: str) -> None:
    """broadcast / recv / allgather: fetched arrays copied into this rank's buffer."""
    import ray

    dst = _st(self)["bufs"][key]
    arrays = ray.get(refs)
    if len(arrays) == 1:
        np.copyto(dst, arrays[0])
    else:
        for i, a in enumerate(arrays):
            np.copyto(dst[i], a)


def _a_os_reduce_row(self: Any, refs: list, rank: int) -> None:
    """reduce_scatter: row ``rank`` of every rank's (ws, chunk) array, summed into out."""
    import ray

    out = _st(self)["bufs"]["out"]
    arrays = ray.get(refs)
    np.copyto(out, arrays[0][rank])
    for a in arrays[1:]:
        np.add(out, a[rank], out=out)


def _a_noop(self: Any) -> None:
    return None


def _a_os_verify(self: Any, refs: list, rank: int, ws: int) -> bool:
    import ray

    s = sum(np.asarray(a, np.float64) for a in ray.get(refs))
    return bool(np.all(s == ws * (ws + 1) / 2))


def _a_os_put_value(self: Any, rank: int) -> list:
    import ray

    return [ray.put(np.full(1024, rank + 1, np.float32))]


# ---------------------------------------------------------------------------------------------
# On the driver.
# ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    """What one benchmark run produced."""

    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    impls_run: set[str] = field(default_factory=set)

    def add(
        self, impl: str, op: str, ws: int, nbytes: int, transport: str | None, ts: list[float]
    ) -> None:
        self.impls_run.add(impl)
        self.records.append(
            {
                "impl": impl,
                "op": op,
                "world_size": ws,
                "nbytes": nbytes,
                "transport": transport,
                "median_s": statistics.median(ts),
                "min_s": min(ts),
                "max_s": max(ts),
            }
        )


def _rget(refs: Any, timeout_s: float) -> Any:
    import ray

    return ray.get(refs, timeout=timeout_s)


def _per_iteration_max(per_rank: list[list[float]]) -> list[float]:
    return [max(c) for c in zip(*per_rank)]


class _Impl:
    """One implementation bound to the actors of one world size: create, verify, run, close."""

    def __init__(self, impl: str, transport: str | None, actors: list[Any], op_timeout_s: float):
        self.impl, self.transport, self.actors = impl, transport, actors
        self.ws = len(actors)
        self.timeout_s = op_timeout_s
        self.name = (
            f"sbbench-{os.getpid()}-{self.ws}-{transport}" if impl == "sideband" else _RAY_GROUP
        )
        self.handle: Any = None
        self.ray_declared = False
        self.tmpdir: str | None = None
        self.live = False

    @property
    def key(self) -> str:
        return f"{self.impl}:{self.transport}" if self.transport else self.impl

    def _each(self, fn: Callable[..., Any], *args: Any, rank_arg: bool = True) -> list[Any]:
        refs = [
            a.__ray_call__.remote(fn, *(args + ((r, self.ws) if rank_arg else ())))
            for r, a in enumerate(self.actors)
        ]
        return _rget(refs, self.timeout_s)

    def create(self, reps: int) -> list[float]:
        """Form the group ``reps`` times from the driver (each timed up to a first barrier)."""
        times = []
        for i in range(reps):
            if self.live:
                self.close()
            t0 = time.perf_counter()
            if self.impl == "sideband":
                import sideband

                backend = "shm" if self.transport == "empty" else self.transport
                self.handle = sideband.create_group(
                    self.actors, name=self.name, backend=backend, timeout_s=self.timeout_s
                )
            elif self.impl == "ray_gloo":
                import ray.util.collective as col

                self.ray_declared = True
                col.create_collective_group(
                    self.actors, self.ws, list(range(self.ws)), backend="gloo", group_name=self.name
                )
            elif self.impl == "torch_gloo":
                self.tmpdir = self.tmpdir or tempfile.mkdtemp(prefix="sideband-bench-torch-")
                path = os.path.join(self.tmpdir, f"store-{i}")
                refs = [
                    a.__ray_call__.remote(_a_torch_init, path, r, self.ws, self.timeout_s)
                    for r, a in enumerate(self.actors)
                ]
                _rget(refs, self.timeout_s)
            self.live = True
            if self.impl in ("sideband", "ray_gloo", "torch_gloo"):
                self._each(_a_barrier, self.impl, self.name)
            times.append(time.perf_counter() - t0)
        return times

    def verify(self) -> bool | None:
        """One allreduce of known values, outside the timed loops (None: not a collective)."""
        if self.impl == "object_store":
            refs = [
                _rget(a.__ray_call__.remote(_a_os_put_value, r), self.timeout_s)[0]
                for r, a in enumerate(self.actors)
            ]
            return all(self._each(_a_os_verify, refs))
        if self.impl == "memcpy":
            return None
        return all(self._each(_a_verify, self.impl, self.name))

    def run(self, op: str, iters: int, warmup: int) -> list[float]:
        if self.impl == "object_store":
            return self._run_object_store(op, iters, warmup)
        if self.impl == "memcpy":
            return _rget(
                self.actors[0].__ray_call__.remote(
                    _a_run, "memcpy", "", op, 0, self.ws, iters, warmup
                ),
                self.timeout_s,
            )
        per_rank = self._each_run(op, iters, warmup)
        return _per_iteration_max(per_rank)

    def _each_run(self, op: str, iters: int, warmup: int) -> list[list[float]]:
        refs = [
            a.__ray_call__.remote(_a_run, self.impl, self.name, op, r, self.ws, iters, warmup)
            for r, a in enumerate(self.actors)
        ]
        return _rget(refs, self.timeout_s)

    def _run_object_store(self, op: str, iters: int, warmup: int) -> list[float]:
        """Driver-orchestrated put + get (+ sum or copy into the buffer), timed on the driver."""
        acts, t_o = self.actors, self.timeout_s
        times = []
        for i in range(warmup + iters):
            t0 = time.perf_counter()
            if op == "allreduce":
                refs = [
                    r[0] for r in _rget([a.__ray_call__.remote(_a_os_put, "x") for a in acts], t_o)
                ]
                _rget([a.__ray_call__.remote(_a_os_reduce, refs) for a in acts], t_o)
            elif op == "broadcast":
                refs = _rget(acts[0].__ray_call__.remote(_a_os_put, "x"), t_o)
                _rget([a.__ray_call__.remote(_a_os_copy, refs, "x") for a in acts[1:]], t_o)
            elif op == "allgather":
                refs = [
                    r[0] for r in _rget([a.__ray_call__.remote(_a_os_put, "x") for a in acts], t_o)
                ]
                _rget([a.__ray_call__.remote(_a_os_copy, refs, "out") for a in acts], t_o)
            elif op == "reduce_scatter":
                refs = [
                    r[0] for r in _rget([a.__ray_call__.remote(_a_os_put, "x2") for a in acts], t_o)
                ]
                _rget(
                    [a.__ray_call__.remote(_a_os_reduce_row, refs, r) for r, a in enumerate(acts)],
                    t_o,
                )
            elif op == "send/recv":
                refs = _rget(acts[0].__ray_call__.remote(_a_os_put, "x"), t_o)
                _rget(acts[1].__ray_call__.remote(_a_os_copy, refs, "x"), t_o)
            elif op == "barrier":
                _rget([a.__ray_call__.remote(_a_noop) for a in acts], t_o)
            dt = time.perf_counter() - t0
            refs = []  # drop the refs so the objects are freed before the next iteration
            if i >= warmup:
                times.append(dt)
        return times

    def close(self) -> None:
        """Destroy the group in every member; safe to call twice and after errors."""
        if not self.live and not self.ray_declared:
            return
        self.live = False
        try:
            if self.impl == "sideband" and self.handle is not None:
                self.handle.destroy()
                self.handle = None
            elif self.impl == "ray_gloo":
                self._each(_a_ray_destroy, self.name, rank_arg=False)
            elif self.impl == "torch_gloo":
                self._each(_a_torch_destroy, rank_arg=False)
        finally:
            if self.impl == "ray_gloo" and self.ray_declared:
                self.ray_declared = False
                _kill_named(f"info_{self.name}")

    def cleanup(self) -> None:
        try:
            self.close()
        finally:
            if self.tmpdir:
                shutil.rmtree(self.tmpdir, ignore_errors=True)
                self.tmpdir = None


def _kill_named(name: str) -> None:
    """Kill ray.util.collective's detached info actor if our destroy left it behind."""
    import ray

    try:
        ray.kill(ray.get_actor(name))
    except ValueError:
        pass  # already gone: destroy_collective_group killed it


def _mpiexec() -> str | None:
    cand = os.path.join(sysconfig.get_path("scripts"), "mpiexec")
    return cand if os.path.exists(cand) else shutil.which("mpiexec")


def _run_mpich(
    run: Run, ws: int, ops: list[str], sizes: Iterable[int], mode: Mode, timeout_s: float
) -> int:
    """All MPI points of one world size in one ``mpiexec`` launch; returns points measured."""
    mpiexec = _mpiexec()
    points = []
    for op in ops:
        if op not in SUPPORTS["mpich"]:
            continue
        for nbytes in sizes if op in SIZED_OPS else (0,):
            count, chunk, actual = _shape(op, nbytes, ws)
            iters, warmup = mode.iters(actual)
            points.append(
                {
                    "op": op,
                    "nbytes": actual,
                    "count": count,
                    "chunk": chunk,
                    "iters": iters,
                    "warmup": warmup,
                }
            )
    if not points:
        return 0
    with tempfile.TemporaryDirectory(prefix="sideband-bench-mpi-") as d:
        spec, out = os.path.join(d, "spec.json"), os.path.join(d, "out.json")
        with open(spec, "w") as f:
            json.dump({"points": points}, f)
        cmd = [mpiexec, "-n", str(ws), sys.executable, "-m", "sideband.bench.mpi_worker"]
        # Own session, so that on a timeout mpiexec, its proxies and the ranks go together.
        proc = subprocess.Popen(
            cmd + ["--spec", spec, "--out", out],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            run.failures.append(f"mpich, {ws} ranks: mpiexec ran past {timeout_s:.0f} s, killed")
            return len(points)
        if proc.returncode != 0 or not os.path.exists(out):
            tail = (stderr or stdout).strip()[-500:]
            run.failures.append(f"mpich, {ws} ranks: mpiexec exited {proc.returncode}: {tail}")
            return len(points)
        with open(out) as f:
            res = json.load(f)
    if not res["verified"]:
        run.failures.append(f"mpich, {ws} ranks: allreduce check gave a wrong result")
    note = f"mpich: {res['library']} (mpiexec {mpiexec})"
    if note not in run.notes:
        run.notes.append(note)
    for pt in res["points"]:
        run.add("mpich", pt["op"], ws, pt["nbytes"], None, pt["times"])
    return len(points)


def _parse_size(s: str) -> int:
    s = s.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": _KIB, "M": _MIB, "G": 1 << 30}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def _csv(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def _fmt_t(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.3f} s"


def _fmt_size(n: int) -> str:
    if n >= _MIB and n % _MIB == 0:
        return f"{n // _MIB} MiB"
    if n >= _KIB and n % _KIB == 0:
        return f"{n // _KIB} KiB"
    return f"{n} B"


def busbw(op: str, nbytes: int, ws: int, seconds: float) -> tuple[float, float]:
    """(algbw, busbw) in GB/s, NCCL-tests conventions."""
    if op not in _BUS or seconds <= 0:
        return 0.0, 0.0
    alg = nbytes / seconds / 1e9
    return alg, alg * _BUS[op](ws)


# The targets: (what, op, world size, nbytes, sideband transport, baseline, goal).
TARGETS: tuple[tuple[str, str, int, int, str, str, float], ...] = (
    ("allreduce 64 MiB, 2 actors vs ray gloo", "allreduce", 2, 64 * _MIB, "shm", "ray_gloo", 0.5),
    ("allreduce 64 MiB, 2 actors vs MPICH", "allreduce", 2, 64 * _MIB, "shm", "mpich", 1.0),
    ("allreduce 64 MiB, 4 actors vs ray gloo", "allreduce", 4, 64 * _MIB, "shm", "ray_gloo", 0.5),
    ("allreduce 8 B, 2 actors vs ray gloo", "allreduce", 2, 8, "shm", "ray_gloo", 0.1),
    ("allreduce 8 B, 4 actors vs ray gloo", "allreduce", 4, 8, "shm", "ray_gloo", 0.2),
    ("allgather 64 MiB, 4 actors vs ray gloo", "allgather", 4, 64 * _MIB, "shm", "ray_gloo", 0.2),
    ("broadcast 64 MiB, 4 actors vs ray gloo", "broadcast", 4, 64 * _MIB, "shm", "ray_gloo", 0.5),
    ("send/recv 64 MiB vs one np.copyto", "send/recv", 2, 64 * _MIB, "shm", "memcpy", 1.2),
    (
        "tcp allreduce 64 MiB, 2 actors vs torch gloo",
        "allreduce",
        2,
        64 * _MIB,
        "tcp",
        "torch_gloo",
        1.0,
    ),
    ("create a group of 4 running actors vs ray gloo", "create", 4, 0, "shm", "ray_gloo", 0.2),
    # Group.empty buffers (issue 4, point 3): the gain over the rows above with ordinary arrays.
    (
        "send/recv 64 MiB, g.empty vs one np.copyto",
        "send/recv",
        2,
        64 * _MIB,
        "empty",
        "memcpy",
        1.2,
    ),
    (
        "allreduce 64 MiB, 4 actors, g.empty vs ray gloo",
        "allreduce",
        4,
        64 * _MIB,
        "empty",
        "ray_gloo",
        0.5,
    ),
)


def ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's target ratios (sideband median / baseline median) from one run's records."""
    idx = {(r["impl"], r["op"], r["world_size"], r["nbytes"], r["transport"]): r for r in records}
    out = []
    for what, op, ws, nbytes, transport, base, goal in TARGETS:
        sb = idx.get(("sideband", op, ws, nbytes, transport))
        bl = idx.get((base, op, ws, nbytes, None))
        ratio = sb["median_s"] / bl["median_s"] if sb and bl and bl["median_s"] > 0 else None
        out.append(
            {
                "target": what,
                "sideband_s": sb["median_s"] if sb else None,
                "baseline": base,
                "baseline_s": bl["median_s"] if bl else None,
                "ratio": ratio,
                "goal": goal,
                # "faster than MPICH" is strict; every other goal is "at most".
                "met": None
                if ratio is None
                else ratio < goal
                if base == "mpich"
                else ratio <= goal,
            }
        )
    return out


def _column(r: dict[str, Any]) -> str:
    return f"{r['impl']} {r['transport']}" if r["transport"] else r["impl"]


_SHORT = {
    "sideband shm": "sideband shm",
    "sideband tcp": "sideband tcp",
    "sideband empty": "sideband g.empty",
    "ray_gloo": "ray gloo",
    "torch_gloo": "torch gloo",
    "object_store": "object store",
    "mpich": "MPICH",
    "memcpy": "np.copyto",
}


def _print_tables(run: Run, rats: list[dict[str, Any]], console: Any) -> None:
    from rich.table import Table

    cols: list[str] = []
    for impl in IMPLS:
        for t in (*TRANSPORTS, None) if impl == "sideband" else (None,):
            c = f"{impl} {t}" if t else impl
            if any(_column(r) == c for r in run.records):
                cols.append(c)
    rows: dict[tuple[int, int, int], dict[str, dict]] = {}
    for r in run.records:
        rows.setdefault((OPS.index(r["op"]), r["world_size"], r["nbytes"]), {})[_column(r)] = r
    for title, bw in (
        ("median time per iteration (min-max in the JSON)", False),
        ("busbw GB/s of the median (NCCL-tests conventions; sizes >= 64 KiB)", True),
    ):
        table = Table(title=title)
        for h in ("op", "ranks", "size"):
            table.add_column(h)
        for c in cols:
            table.add_column(_SHORT.get(c, c), justify="right")
        for (oi, ws, nbytes), cells in sorted(rows.items()):
            op = OPS[oi]
            if bw and (op not in _BUS or nbytes < 64 * _KIB):
                continue
            vals = []
            for c in cols:
                r = cells.get(c)
                if r is None:
                    vals.append("")
                elif bw:
                    vals.append(f"{busbw(op, nbytes, ws, r['median_s'])[1]:.2f}")
                else:
                    vals.append(_fmt_t(r["median_s"]))
            table.add_row(op, str(ws), _fmt_size(nbytes) if op in SIZED_OPS else "", *vals)
        console.print(table)
    rt = Table(title="ratios: sideband median / baseline median, same run (issue 4 targets)")
    for h in ("target", "sideband", "baseline", "ratio", "goal", "met"):
        rt.add_column(h, justify="right" if h != "target" else "left")
    for x in rats:
        rt.add_row(
            x["target"],
            _fmt_t(x["sideband_s"]) if x["sideband_s"] is not None else "not measured",
            f"{x['baseline']} "
            + (_fmt_t(x["baseline_s"]) if x["baseline_s"] is not None else "not measured"),
            f"{x['ratio']:.3f}" if x["ratio"] is not None else "n/a",
            f"{'<' if x['baseline'] == 'mpich' else '<='} {x['goal']}",
            {True: "yes", False: "NO", None: "n/a"}[x["met"]],
        )
    console.print(rt)


def plot(records: list[dict[str, Any]], path: str) -> None:
    """Time vs size per implementation, log-log, one subplot per (op, world size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted(
        {(r["op"], r["world_size"]) for r in records if r["op"] in SIZED_OPS},
        key=lambda p: (OPS.index(p[0]), p[1]),
    )
    if not panels:
        return
    wss = sorted({ws for _, ws in panels})
    palette = plt.get_cmap("tab10").colors
    colors = {
        c: palette[i % len(palette)] for i, c in enumerate(sorted({_column(r) for r in records}))
    }
    ops = [op for op in SIZED_OPS if any(p[0] == op for p in panels)]
    fig, axes = plt.subplots(
        len(ops), len(wss), figsize=(6 * len(wss), 3.6 * len(ops)), squeeze=False
    )
    for i, op in enumerate(ops):
        for j, ws in enumerate(wss):
            ax = axes[i][j]
            lines: dict[str, list[tuple[int, float]]] = {}
            for r in records:
                if r["op"] == op and r["world_size"] == ws:
                    lines.setdefault(_column(r), []).append((r["nbytes"], r["median_s"]))
            for label, pts in sorted(lines.items()):
                pts.sort()
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    marker="o",
                    label=_SHORT.get(label, label),
                    color=colors[label],  # one colour per implementation in every panel
                )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{op}, {ws} ranks")
            ax.set_xlabel("bytes")
            ax.set_ylabel("median seconds")
            ax.grid(True, which="both", alpha=0.3)
            if lines:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sideband bench collectives", description=__doc__.split("\n")[0]
    )
    m = p.add_mutually_exclusive_group()
    m.add_argument(
        "--quick", action="store_true", help="fewer sizes and iterations (< 3 min on 2 cores)"
    )
    m.add_argument("--smoke", action="store_true", help="smallest mode, for tests (seconds)")
    p.add_argument("--json", metavar="PATH", help="write every record (and the ratios) as JSON")
    p.add_argument("--plot", metavar="PATH.png", help="draw time vs size per implementation")
    p.add_argument("--ops", help=f"comma list of {','.join(OPS)}")
    p.add_argument("--sizes", help="comma list of sizes, e.g. 8,1K,1M,64M,256M")
    p.add_argument("--world-sizes", help="comma list, e.g. 2,4")
    p.add_argument("--impls", help=f"comma list of {','.join(IMPLS)}")
    p.add_argument(
        "--transports", help="sideband transports: shm,tcp,empty (shm with Group.empty buffers)"
    )
    p.add_argument(
        "--iters", type=int, help="timed iterations per point (at most; big sizes use fewer)"
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds allowed for one point")
    return p.parse_args(argv)


def _select(
    value: str | None, allowed: tuple[str, ...], default: Iterable[str], what: str
) -> list[str]:
    if value is None:
        return list(default)
    items = ["send/recv" if v in ("sendrecv", "send_recv") else v for v in _csv(value)]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise SystemExit(
            f"sideband bench collectives: unknown {what} {bad}; choose from {list(allowed)}"
        )
    return items


def main(argv: list[str] | None = None) -> int:
    """Run the collectives benchmark; returns 0 when every implementation ran and checked out."""
    import ray
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    args = _args(argv)
    mode = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.sizes:
        mode = dataclasses.replace(mode, sizes=tuple(_parse_size(v) for v in _csv(args.sizes)))
    if args.world_sizes:
        mode = dataclasses.replace(mode, world_sizes=tuple(int(w) for w in _csv(args.world_sizes)))
    if args.iters:
        mode = dataclasses.replace(
            mode, max_iters=args.iters, min_iters=min(mode.min_iters, args.iters)
        )
    ops = _select(args.ops, OPS, OPS, "ops")
    impls = _select(args.impls, IMPLS, IMPLS, "impls")
    transports = _select(args.transports, TRANSPORTS, TRANSPORTS, "transports")
    if any(w < 2 for w in mode.world_sizes):
        raise SystemExit(
            "sideband bench collectives: world sizes must be >= 2 (send/recv needs two ranks)"
        )
    console = Console(stderr=True)
    run = Run()

    # Loopback only: sideband's listeners, gloo's sockets and Ray's node address.
    os.environ["SIDEBAND_HOST"] = "127.0.0.1"
    env = {"SIDEBAND_HOST": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    has_torch = importlib.util.find_spec("torch") is not None
    for impl in ("ray_gloo", "torch_gloo"):
        if impl in impls and not has_torch:
            impls.remove(impl)
            run.notes.append(
                f"{impl} skipped: torch is not installed (pip install 'sideband[torch]')"
            )
    if "mpich" in impls and (importlib.util.find_spec("mpi4py") is None or _mpiexec() is None):
        impls.remove("mpich")
        run.notes.append("mpich skipped: mpi4py or mpiexec missing (pip install 'sideband[bench]')")
    started_ray = False
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
        started_ray = True

    keys: list[tuple[str, str | None]] = []
    for impl in impls:
        if impl == "mpich":
            continue
        keys += [(impl, t) for t in transports] if impl == "sideband" else [(impl, None)]
    per_world = 0
    for op in ops:
        n_sizes = len(mode.sizes) if op in SIZED_OPS else 1
        per_world += n_sizes * sum(op in SUPPORTS[i] for i, _ in keys)
        per_world += n_sizes * ("mpich" in impls and op in SUPPORTS["mpich"])
    total = per_world * len(mode.world_sizes)

    actor_cls = ray.remote(num_cpus=0)(BenchWorker)
    actors = [actor_cls.remote() for _ in range(max(mode.world_sizes))]
    started = time.perf_counter()
    try:
        _rget([a.__ray_call__.remote(_a_setup, env, has_torch) for a in actors], args.timeout)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("starting", total=total)
            for ws in mode.world_sizes:
                _bench_world(run, actors[:ws], keys, ops, mode, args.timeout, progress, task)
                if "mpich" in impls:
                    progress.update(task, description=f"mpich {ws} ranks (mpiexec)")
                    n = _run_mpich(run, ws, ops, mode.sizes, mode, args.timeout * 4)
                    progress.advance(task, n)
    finally:
        for a in actors:
            ray.kill(a)
        if started_ray:
            ray.shutdown()
    elapsed = time.perf_counter() - started
    rats = ratios(run.records)
    # Tables are read in files and CI logs too: never squeeze them to a pipe's 80 columns.
    out = Console() if sys.stdout.isatty() else Console(width=160)
    _print_tables(run, rats, out)
    for n in run.notes:
        out.print(f"note: {n}")
    for f in run.failures:
        out.print(f"[red]FAILED[/red]: {f}")
    out.print(
        f"{len(run.records)} records in {elapsed:.0f} s; time per iteration = max over ranks, "
        "timed inside the actors (object store: on the driver); median/min/max over iterations"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    **json_header("collectives", argv),
                    "impls": sorted(run.impls_run),
                    "timing": "per iteration: max over ranks of perf_counter around the op after a barrier; "
                    "median/min/max over iterations; warm-ups excluded",
                    "records": run.records,
                    "ratios": rats,
                    "notes": run.notes,
                    "failures": run.failures,
                },
                f,
                indent=1,
            )
    if args.plot:
        plot(run.records, args.plot)
    return 1 if run.failures else 0


def _bench_world(
    run: Run,
    actors: list[Any],
    keys: list[tuple[str, str | None]],
    ops: list[str],
    mode: Mode,
    timeout_s: float,
    progress: Any,
    task: Any,
) -> None:
    """Every Ray-based implementation on the same ``actors``, point by point."""
    ws = len(actors)
    impls = [_Impl(i, t, actors, timeout_s) for i, t in keys]
    live: list[_Impl] = []
    try:
        for im in impls:
            progress.update(task, description=f"{im.key} {ws} ranks: create + check")
            try:
                reps = mode.create_reps if "create" in ops and "create" in SUPPORTS[im.impl] else 1
                ts = im.create(reps)
                if "create" in ops and "create" in SUPPORTS[im.impl]:
                    run.add(im.impl, "create", ws, 0, im.transport, ts)
                    progress.advance(task)
                if im.verify() is False:
                    run.failures.append(
                        f"{im.key}, {ws} ranks: allreduce check gave a wrong result"
                    )
                    continue
                live.append(im)
            except Exception as e:
                run.failures.append(f"{im.key}, {ws} ranks: setup failed: {type(e).__name__}: {e}")
                im.cleanup()
        for op in ops:
            if op == "create":
                continue
            for nbytes in mode.sizes if op in SIZED_OPS else (0,):
                count, chunk, actual = _shape(op, nbytes, ws)
                iters, warmup = mode.iters(actual)
                _rget(
                    [a.__ray_call__.remote(_a_alloc, op, count, chunk, ws) for a in actors],
                    timeout_s,
                )
                for im in list(live):
                    if op not in SUPPORTS[im.impl]:
                        continue
                    progress.update(
                        task, description=f"{im.key} {ws} ranks: {op} {_fmt_size(actual)}"
                    )
                    try:
                        # np.copyto costs milliseconds: take every iteration allowed, since
                        # its median is the denominator of the send/recv target.
                        n = mode.max_iters if im.impl == "memcpy" else iters
                        ts = im.run(op, n, warmup)
                        run.add(im.impl, op, ws, actual, im.transport, ts)
                    except Exception as e:
                        run.failures.append(
                            f"{im.key}, {ws} ranks: {op} {_fmt_size(actual)} failed: {type(e).__name__}: {e}"
                        )
                        live.remove(im)
                        im.cleanup()
                    progress.advance(task)
        _rget([a.__ray_call__.remote(_a_free) for a in actors], timeout_s)
    finally:
        for im in impls:
            try:
                im.cleanup()
            except Exception as e:
                run.failures.append(
                    f"{im.key}, {ws} ranks: teardown failed: {type(e).__name__}: {e}"
                )


def _a_free(self: Any) -> None:
    _st(self)["bufs"] = None


if __name__ == "__main__":
    sys.exit(main())
