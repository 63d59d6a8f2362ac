"""examples/http_counter.py runs (inside the test session's Ray)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "http_counter.py"


def _load() -> ModuleType:
    from ray import cloudpickle

    spec = importlib.util.spec_from_file_location("example_http_counter", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)  # actors cannot import examples/
    return module


def test_http_counter_example(ray_session: None, capsys) -> None:  # noqa: ANN001
    values = _load().main(n=4)
    assert values == ["5", "6", "7", "8"]
    out = capsys.readouterr().out
    assert out.count("http://127.0.0.1:") >= 4
