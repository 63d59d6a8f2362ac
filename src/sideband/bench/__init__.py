"""Benchmarks behind `sideband bench`."""

from __future__ import annotations

import datetime
import os
import sys
from typing import Any


def json_header(suite: str, argv: list[str] | None) -> dict[str, Any]:
    """The fields every benchmark's ``--json`` file starts with: command, date, cpus."""
    return {
        "command": ["sideband", "bench", suite, *(argv if argv is not None else sys.argv[1:])],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
    }
