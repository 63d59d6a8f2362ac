"""Helpers for the multi-host tests (fixtures are in conftest.py)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest

from sideband.testbed import NETNS, Testbed

HERE = os.path.dirname(os.path.abspath(__file__))


def needs_netns(bed: Testbed) -> None:
    if bed.mode != NETNS:
        pytest.skip(f"needs network namespaces: {bed.fallback_reason}")


def drive(bed: Testbed, scenario: str, timeout_s: float = 240, **args: Any) -> dict[str, Any]:
    script = os.path.join(HERE, "mn_drivers.py")
    return bed.run_driver([sys.executable, script, scenario, json.dumps(args)], timeout_s=timeout_s)
