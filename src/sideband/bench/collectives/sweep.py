"""The sweep over one world size: every Ray-based implementation on the same actors, point by
point (one op and size at a time, implementations back to back), so ratios compare like with
like."""

from __future__ import annotations

from typing import Any

from sideband.bench.collectives.config import SIZED_OPS, SUPPORTS, Mode, _points
from sideband.bench.collectives.impls import _Impl
from sideband.bench.collectives.report import _fmt_size
from sideband.bench.collectives.results import Run
from sideband.bench.collectives.worker import _a_alloc, _a_free, _on_each


def _keys(impls: list[str], transports: list[str]) -> list[tuple[str, str | None]]:
    """(implementation, sideband transport or None) of every Ray-based implementation to run."""
    keys: list[tuple[str, str | None]] = []
    for impl in impls:
        if impl == "mpich":
            continue
        keys += [(impl, t) for t in transports] if impl == "sideband" else [(impl, None)]
    return keys


def _total(ops: list[str], mode: Mode, keys: list[tuple[str, str | None]], with_mpich: bool) -> int:
    """Points of the whole run, for the progress bar."""
    per_world = 0
    for op in ops:
        n_sizes = len(mode.sizes) if op in SIZED_OPS else 1
        per_world += n_sizes * sum(op in SUPPORTS[i] for i, _ in keys)
        per_world += n_sizes * (with_mpich and op in SUPPORTS["mpich"])
    return per_world * len(mode.world_sizes)


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
            for count, chunk, actual in _points(op, mode.sizes, ws):
                iters, warmup = mode.iters(actual)
                _on_each(actors, timeout_s, _a_alloc, op, count, chunk, ws, rank_arg=False)
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
        _on_each(actors, timeout_s, _a_free, rank_arg=False)
    finally:
        for im in impls:
            try:
                im.cleanup()
            except Exception as e:
                run.failures.append(
                    f"{im.key}, {ws} ranks: teardown failed: {type(e).__name__}: {e}"
                )
