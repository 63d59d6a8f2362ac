"""Gangs with the "jax" setup: jax.distributed with its coordinator on rank 0 (CPU)."""

from __future__ import annotations

import gang_helpers
import pytest
from gang_helpers import ZERO, ship_by_value

from sideband.gang import Gang, context

pytest.importorskip("jax")
ship_by_value(__name__)
ship_by_value(gang_helpers.__name__)


def _jax_world() -> tuple[int, int, int, float]:
    import jax
    import jax.numpy as jnp
    from jax.experimental import multihost_utils

    total = multihost_utils.process_allgather(jnp.array([context().rank + 1.0])).sum()
    return jax.process_index(), jax.process_count(), len(jax.devices()), float(total)


def test_jax_distributed(ray_session: None) -> None:
    with Gang(2, resources_per_worker=ZERO, setup="jax", env={"JAX_PLATFORMS": "cpu"}) as gang:
        out = gang.run(_jax_world)
    assert out == [(0, 2, 2, 3.0), (1, 2, 2, 3.0)]
