"""Tests of the sideband tensor transport need torch; without it they are not collected."""

from __future__ import annotations

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("torch") else ["test_*.py", "rdt_helpers.py"]
