"""The collective core's shape: no import cycles (function-level imports included), every
module importable on its own, and the import-linter contracts kept."""

from __future__ import annotations

import concurrent.futures
import shutil
import subprocess
import sys

import grimp


def _graph():  # noqa: ANN202 - grimp's type
    return grimp.build_graph("sideband", cache_dir=None)


def _modules(graph) -> list[str]:  # noqa: ANN001
    return sorted(m for m in graph.modules if m.startswith("sideband.collective."))


def test_no_import_cycles_in_the_collective_core() -> None:
    graph = _graph()
    mods = set(_modules(graph))
    edges = {m: graph.find_modules_directly_imported_by(m) & mods for m in mods}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycles.append(path[path.index(n) :] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(mods):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles: {cycles}"


def test_every_module_imports_alone() -> None:
    mods = _modules(_graph())

    def one(m: str) -> tuple[str, int, str]:
        p = subprocess.run(
            [sys.executable, "-c", f"import {m}"], capture_output=True, text=True, timeout=120
        )
        return m, p.returncode, p.stderr[-2000:]

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        bad = [r for r in pool.map(one, mods) if r[1] != 0]
    assert not bad, bad


def test_import_linter_contracts_hold() -> None:
    exe = shutil.which("lint-imports")
    assert exe, "import-linter is part of the [dev] extra: pip install -e '.[dev]'"
    p = subprocess.run([exe], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
