"""examples/rdt_pipeline.py runs (inside the test session's Ray)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rdt_pipeline.py"


@pytest.mark.timeout(120)
def test_rdt_pipeline_example(ray_session: None, capsys: pytest.CaptureFixture[str]) -> None:
    from ray import cloudpickle

    spec = importlib.util.spec_from_file_location("example_rdt_pipeline", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        cloudpickle.register_pickle_by_value(module)  # actors cannot import examples/
        assert module.main(steps=3, n=1 << 20) == [0.0, 2.0, 4.0]
    finally:
        sys.modules.pop(spec.name, None)
    out = capsys.readouterr().out
    assert "driver got [99.0, 99.0, 99.0, 99.0]" in out
