"""The gang examples run (inside the test session's Ray, with zero-CPU members)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from gang_helpers import ZERO

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str) -> ModuleType:
    from ray import cloudpickle

    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)  # members cannot import examples/
    return module


def test_torch_ddp_cpu_example(ray_session: None) -> None:
    pytest.importorskip("torch")
    results = _load("torch_ddp_cpu").main(resources_per_worker=ZERO)
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world_size"] == 2 and len(r["losses"]) == 5 for r in results)
    assert results[0]["losses"][-1] < results[0]["losses"][0]  # it trains


def test_mpi_allreduce_example(ray_session: None) -> None:
    pytest.importorskip("mpi4py")
    results = _load("mpi_allreduce").main(resources_per_worker=ZERO)
    assert [(r["rank"], r["size"], r["value"]) for r in results] == [(0, 2, 3.0), (1, 2, 3.0)]
