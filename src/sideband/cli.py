"""The ``sideband`` command: ``demo``, ``status``, ``bench``, ``doctor``."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from typing import Any

from sideband._table import render
from sideband._version import __version__

_BENCH_SUITES = {
    "collectives": "sideband.bench.collectives",
    "endpoints": "sideband.bench.endpoints",
    "gang": "sideband.bench.gang",
    "multinode": "sideband.bench.multinode",
    "reliability": "sideband.bench.reliability",
    "rdt": "sideband.bench.rdt",
}


def _status(args: argparse.Namespace) -> int:
    import ray

    try:
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError) as e:
        print(f"no Ray cluster at {args.address!r} ({e}); start one with `ray start --head`")
        return 1
    try:
        print(json.dumps(status_data(), indent=2) if args.json else status_text())
    finally:
        ray.shutdown()
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from sideband import doctor

    found = doctor.run(args.ranks)
    if args.json:
        print(json.dumps(doctor.as_dicts(found), indent=2))
    else:
        rows = [[f.state, f.check, f.detail, f.advice] for f in found]
        print(render(["", "check", "found", "what to do"], rows))
    return 1 if any(f.state == "fail" for f in found) else 0


_SECTIONS = (
    ("endpoints", "sideband.endpoint.registry", "list_endpoints"),
    ("gangs", "sideband.gang", "list_gangs"),
)
_COLUMNS = {
    # Ranks that were blocked in an op for over a second (and where those ops stand now).
    "blocked": ["group", "rank", "op", "seq", "in_op", "for_s", "pid"],
    "endpoints": ["name", "class", "protocol", "url", "actor_id"],
    "gangs": ["name", "state", "members"],
}


def status_data() -> dict[str, list[dict[str, Any]]]:
    """Groups, endpoints and gangs of the connected cluster."""
    from sideband.collective.api.driver import list_groups
    from sideband.collective.rendezvous import reports

    data: dict[str, list[dict[str, Any]]] = {"groups": list_groups()}
    now = time.time()
    data["blocked"] = [
        {
            "group": name,
            "rank": rank,
            "op": st.get("op"),
            "seq": st.get("seq"),
            "in_op": st.get("in_op"),
            "for_s": round(now - st["started"], 1) if st.get("in_op") else None,
            "pid": st.get("pid"),
        }
        for name, ranks in sorted(reports.all_groups().items())
        for rank, st in sorted(ranks.items())
    ]
    for title, module, fn in _SECTIONS:
        try:
            data[title] = getattr(importlib.import_module(module), fn)()
        except ImportError:  # that part's extra is not installed: nothing of it can run
            continue
    return data


def status_text() -> str:
    """Groups, endpoints and gangs of the connected cluster, as text."""
    data = status_data()
    rows: list[list[Any]] = [
        [
            g["name"],
            g["world_size"],
            g["backend"],
            g["state"],
            " ".join(str(m["actor_id"])[:8] for m in g["members"]),
        ]
        for g in data["groups"]
    ]
    parts = [
        "groups\n"
        + (render(["name", "size", "backend", "state", "members"], rows) if rows else "  (none)")
    ]
    for title, cols in _COLUMNS.items():
        if title not in data:
            continue
        rows = [[_cell(i.get(c)) for c in cols] for i in data[title]]
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
    parser.add_argument("--version", action="version", version=f"sideband {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="group actors on a local Ray, check every op, time it")
    p.add_argument("--actors", type=int, default=4)
    p.set_defaults(fn=_demo)
    p = sub.add_parser("status", help="list live groups, endpoints and gangs of the Ray cluster")
    p.add_argument("--address", default="auto", help="the Ray cluster (default: auto)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(fn=_status)
    p = sub.add_parser("doctor", help="check this machine for what makes sideband slow or broken")
    p.add_argument("--ranks", type=int, default=None, help="ranks you plan per host")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(fn=_doctor)
    sub.add_parser(
        "bench",
        help="benchmarks: sideband bench [collectives|endpoints|gang|reliability|multinode|rdt] "
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
