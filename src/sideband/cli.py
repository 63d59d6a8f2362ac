"""The ``sideband`` command: ``demo``, ``status``, ``bench``."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from sideband._table import render

_BENCH_SUITES = {
    "collectives": "sideband.bench.collectives",
    "endpoints": "sideband.bench.endpoints",
    "gang": "sideband.bench.gang",
    "multinode": "sideband.bench.multinode",
    "reliability": "sideband.bench.reliability",
}


def _status(_args: argparse.Namespace) -> int:
    import ray

    try:
        ray.init(address="auto", include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError) as e:
        print(f"no Ray cluster is running here ({e}); start one with `ray start --head`")
        return 1
    try:
        print(status_text())
    finally:
        ray.shutdown()
    return 0


def status_text() -> str:
    """Groups, endpoints and gangs of the connected cluster, as text."""
    from sideband.collective.api.driver import list_groups

    parts = []
    groups = list_groups()
    rows: list[list[Any]] = [
        [
            g["name"],
            g["world_size"],
            g["backend"],
            g["state"],
            " ".join(str(m["actor_id"])[:8] for m in g["members"]),
        ]
        for g in groups
    ]
    parts.append(
        "groups\n"
        + (render(["name", "size", "backend", "state", "members"], rows) if rows else "  (none)")
    )
    for title, module, fn, cols in (
        (
            "endpoints",
            "sideband.endpoint.registry",
            "list_endpoints",
            ["name", "class", "protocol", "url", "actor_id"],
        ),
        ("gangs", "sideband.gang", "list_gangs", ["name", "state", "members"]),
    ):
        try:
            items = getattr(importlib.import_module(module), fn)()
        except ImportError:
            continue
        rows = [[_cell(i.get(c)) for c in cols] for i in items]
        parts.append(f"{title}\n" + (render(cols, rows) if rows else "  (none)"))
    return "\n\n".join(parts)


def _cell(v: Any) -> str:
    if isinstance(v, list):
        return str(len(v))
    return "" if v is None else str(v)


def _demo(args: argparse.Namespace) -> int:
    from sideband import demo

    return demo.run(num_actors=args.actors)


def _bench(rest: list[str]) -> int:
    suite = "collectives"
    if rest and rest[0] in _BENCH_SUITES:
        suite = rest.pop(0)
    module = importlib.import_module(_BENCH_SUITES[suite])
    return int(module.main(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sideband", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="group actors on a local Ray, check every op, time it")
    p.add_argument("--actors", type=int, default=4)
    p.set_defaults(fn=_demo)
    p = sub.add_parser("status", help="list live groups, endpoints and gangs of the Ray cluster")
    p.set_defaults(fn=_status)
    sub.add_parser(
        "bench",
        help="benchmarks: sideband bench [collectives|endpoints|gang|reliability|multinode] "
        "[options]; "
        "each suite's --help lists its options",
    )
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        # Options belong to the suite, whose own parser reads them.
        return _bench(argv[1:])
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
