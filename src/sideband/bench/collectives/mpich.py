"""The MPICH baseline: mpi4py ranks under ``mpiexec`` (:mod:`sideband.bench.mpi_worker`), all
points of one world size in one launch, outside Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterable

from sideband.bench.collectives.config import SUPPORTS, Mode, _points
from sideband.bench.collectives.results import Run


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
        for count, chunk, actual in _points(op, sizes, ws):
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
        cmd = [str(mpiexec), "-n", str(ws), sys.executable, "-m", "sideband.bench.mpi_worker"]
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
