"""Arrays already in shared memory travel with no copy in the producer (exported in place)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import ray
from rdt_helpers import Consumer, Producer

pytestmark = pytest.mark.timeout(180)

MIB = 1 << 20


@pytest.fixture(scope="module")
def trio(ray_session: None) -> Iterator[tuple]:
    a, b, c = Producer.remote(), Consumer.remote(), Consumer.remote()
    yield a, b, c
    for x in (a, b, c):
        ray.kill(x)


def test_a_tensor_from_empty_is_exported_live(trio: tuple) -> None:
    a, b, _ = trio
    ref = a.shared.remote(MIB, 1.0)
    ray.wait([ref], fetch_local=False)
    blocks = ray.get(a.stats.remote())["live_blocks"]
    # No copy: the producer holds one block, the tensor's own, and writes before the fetch show
    # (Ray's own transports behave alike; ordinary tensors are snapshots, see test_transport).
    ray.get(a.mutate_kept.remote(5.0))
    assert ray.get(b.total.remote(ref)) == 5.0 * MIB
    assert blocks == 1, blocks
    del ref


def test_numpy_array_from_empty(trio: tuple) -> None:
    a, b, _ = trio
    got = ray.get(b.describe.remote(a.shared_numpy.remote(MIB)))
    assert got == ("ndarray", (MIB,), "int32", float(np.arange(MIB, dtype=np.int64).sum()))


def test_a_received_tensor_is_passed_on_without_a_copy(trio: tuple) -> None:
    a, b, c = trio
    ray.get(b.drop.remote())
    before = ray.get(b.stats.remote())["live_blocks"]
    ref = b.forward.remote(a.full.remote(4 * MIB, 2.0))
    assert ray.get(c.total.remote(ref)) == 8.0 * MIB
    # b holds the block it received into and no copy of it for c.
    assert ray.get(b.stats.remote())["live_blocks"] == before + 1
    del ref
    ray.get(b.drop.remote())
