"""The multi-host test bed, brought up once per test module that asks for it.

Every multi-node driver runs as a subprocess (on the test bed's host 0, or as a process that
starts its own ``ray.cluster_utils.Cluster``), so the session's ``ray_session`` Ray in this
process is never touched, and whatever a driver leaves behind dies with its session.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from sideband.testbed import Testbed

_MODES: list[str] = []


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    """Two hosts (namespaced where permitted), torn down after the module, even on failure."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the multi-host test bed needs Linux (/proc, ray start)")
    tb = Testbed(2, quiet=True)
    _MODES.append(tb.describe())
    with tb:
        yield tb
    # close() raised if anything of it survived; check once more that nothing did.
    assert not tb.leftovers()


@pytest.fixture
def healthy(bed: Testbed) -> Testbed:
    """The test bed with every host up and no delay (a fault test before may have cut one)."""
    bed.ensure_healthy()
    return bed


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in dict.fromkeys(_MODES):
        terminalreporter.write_line(line)
