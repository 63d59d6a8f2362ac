"""What a run shows: the tables (times, bus bandwidth, target ratios), the JSON file and the plot."""

from __future__ import annotations

import json
from typing import Any

from sideband._extras import require
from sideband.bench import json_header
from sideband.bench.collectives.config import _KIB, _MIB, IMPLS, OPS, SIZED_OPS, TRANSPORTS
from sideband.bench.collectives.results import _BUS, Run, busbw


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
                cell = cells.get(c)
                if cell is None:
                    vals.append("")
                elif bw:
                    vals.append(f"{busbw(op, nbytes, ws, cell['median_s'])[1]:.2f}")
                else:
                    vals.append(_fmt_t(cell["median_s"]))
            table.add_row(op, str(ws), _fmt_size(nbytes) if op in SIZED_OPS else "", *vals)
        console.print(table)
    rt = Table(title="ratios: sideband median / baseline median, same run (issue 15 targets)")
    for h in ("target", "sideband", "baseline", "ratio", "goal", "met"):
        rt.add_column(h, justify="right" if h != "target" else "left")
    for x in rats:
        rt.add_row(
            x["target"] + (f" (worst: {x['point']})" if x.get("point") else ""),
            _fmt_t(x["sideband_s"]) if x["sideband_s"] is not None else "not measured",
            f"{x['baseline']} "
            + (_fmt_t(x["baseline_s"]) if x["baseline_s"] is not None else "not measured"),
            f"{x['ratio']:.3f}" if x["ratio"] is not None else "n/a",
            f"<= {x['goal']}",
            {True: "yes", False: "NO", None: "n/a"}[x["met"]],
        )
    console.print(rt)


def plot(records: list[dict[str, Any]], path: str) -> None:
    """Time vs size per implementation, log-log, one subplot per (op, world size)."""
    matplotlib = require("matplotlib", "bench", "sideband bench --plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted(
        {(r["op"], r["world_size"]) for r in records if r["op"] in SIZED_OPS},
        key=lambda p: (OPS.index(p[0]), p[1]),
    )
    if not panels:
        return
    wss = sorted({ws for _, ws in panels})
    palette = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]  # a ListedColormap
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


def write_json(path: str, run: Run, rats: list[dict[str, Any]], argv: list[str] | None) -> None:
    """Every record, the ratios, notes and failures of ``run``, with the common header."""
    with open(path, "w") as f:
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
