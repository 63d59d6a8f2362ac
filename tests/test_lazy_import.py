"""``import sideband`` is light: the collective core, gangs and endpoints load on first use
(PEP 562), yet every public name, ``dir()``, ``from sideband import *`` and type checkers work."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _python(code: str) -> str:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def test_import_loads_neither_the_collective_core_nor_ray() -> None:
    out = _python(
        "import sys, sideband\n"
        "print(sorted(m for m in sys.modules if m.startswith(('sideband.', 'ray'))))"
    )
    loaded = eval(out)
    assert not [m for m in loaded if m.startswith(("ray", "sideband.collective"))], loaded
    assert "sideband.errors" in loaded and "sideband.config" in loaded


def test_every_public_name_resolves_and_dir_lists_them() -> None:
    out = _python(
        "import sideband\n"
        "missing = [n for n in sideband.__all__ if getattr(sideband, n, None) is None]\n"
        "print(missing, sorted(set(sideband.__all__) - set(dir(sideband))))\n"
        "from sideband import *\n"
        "print(ReduceOp.SUM, Gang.__name__, create_group.__name__, endpoints.__name__)"
    )
    first, second = out.splitlines()
    assert first == "[] []"
    assert second.split()[1:] == ["Gang", "create_group", "list_endpoints"]


def test_the_lazy_names_are_the_real_objects() -> None:
    import sideband
    from sideband.collective.api.driver import create_group
    from sideband.collective.types import ReduceOp
    from sideband.endpoint.registry import list_endpoints
    from sideband.gang import Gang

    assert sideband.create_group is create_group and sideband.ReduceOp is ReduceOp
    assert sideband.Gang is Gang and sideband.endpoints is list_endpoints
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = sideband.nope  # type: ignore[attr-defined]


def test_type_checkers_see_the_lazy_names(tmp_path: Path) -> None:
    mypy = shutil.which("mypy")
    if mypy is None:
        pytest.skip("mypy is part of the [dev] extra")
    snippet = tmp_path / "use.py"
    snippet.write_text(
        "import sideband\n"
        "reveal_type(sideband.create_group)\n"
        "reveal_type(sideband.ReduceOp.SUM)\n"
        "reveal_type(sideband.Gang)\n"
        "reveal_type(sideband.guard.dumps)\n"
    )
    p = subprocess.run(
        [mypy, "--no-incremental", "--follow-imports=silent", str(snippet)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert 'Revealed type is "Any"' not in p.stdout and "has no attribute" not in p.stdout
    assert "-> sideband.collective.api.driver.GroupHandle" in p.stdout, p.stdout
    assert "ReduceOp.SUM" in p.stdout and "-> sideband.gang.gang.Gang" in p.stdout, p.stdout
    assert "-> bytes" in p.stdout, p.stdout
