"""Gang tests end what they start: a Spark gang's background CDS build is waited for."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_cds_build_left() -> Iterator[None]:
    yield
    cds = sys.modules.get("sideband.gang.cds")
    if cds is not None:
        cds.wait_builds(600)
