"""Tensors by ref through tensor_transport="sideband": values, kinds, semantics."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import ray
import torch
from rdt_helpers import AsyncActor, Consumer, Producer, ThreadedProducer

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def pair(ray_session: None) -> Iterator[tuple]:
    a, b = Producer.remote(), Consumer.remote()
    yield a, b
    for x in (a, b):
        ray.kill(x)


@pytest.mark.parametrize("n", [2, 16 << 10, 1 << 20, 4 << 20])
def test_roundtrip_sizes(pair: tuple, n: int) -> None:
    a, b = pair
    assert ray.get(b.total.remote(a.full.remote(n, 2.0))) == 2.0 * n


def test_mixed_container_dtypes_and_layouts(pair: tuple) -> None:
    a, b = pair
    got = ray.get(b.describe.remote(a.make.remote("mixed")))
    assert got["a"] == ("tensor", (10,), "torch.int64", 45.0)
    assert got["b"] == ("tensor", (3, 4), "torch.bfloat16", 18.0)
    assert got["c"] == ("tensor", (), "torch.bool", 1.0)
    assert got["d"] == ("tensor", (0, 5), "torch.float32", 0.0)
    assert got["e"] == ("tensor", (5, 4), "torch.float32", 190.0)
    assert got["big"][:3] == ("tensor", (1 << 18,), "torch.float64")
    assert got["big"][3] == pytest.approx((1 << 18) * ((1 << 18) - 1) / 2)
    assert got["note"] == "not a tensor"


def test_numpy_arrays(pair: tuple) -> None:
    a, b = pair
    assert ray.get(b.describe.remote(a.numpy.remote(1 << 20))) == (
        "ndarray",
        (1 << 20,),
        "int32",
        float(np.arange(1 << 20, dtype=np.int64).sum()),
    )


def test_driver_gets_the_ref_directly(pair: tuple) -> None:
    a, _ = pair
    t = ray.get(a.full.remote(1 << 20, 3.0))
    assert isinstance(t, torch.Tensor) and float(t.sum()) == 3.0 * (1 << 20)


def test_snapshot_at_return(pair: tuple) -> None:
    """The consumer sees the tensor as it was returned, not later writes by the producer."""
    a, b = pair
    ref = a.keep_and_return.remote(1 << 20)
    ray.get(ref)
    ray.get(a.mutate_kept.remote(5.0))
    assert ray.get(b.total.remote(ref)) == 0.0


def test_zero_copy_views_are_copy_on_write(pair: tuple) -> None:
    a, b = pair
    ray.get([b.configure.remote(zero_copy=True), b.trim.remote()])
    try:
        ref = a.full.remote(1 << 20, 1.0)
        assert ray.get(b.hold.remote(ref)) == float(1 << 20)
        assert ray.get(b.stats.remote())["peer_mappings"] == 1  # a view of the producer's block
        # The consumer's writes stay private: another consumer of the same ref sees the original.
        assert ray.get(b.write_held.remote(7.0)) == 7.0 * (1 << 20)
        assert ray.get(b.total.remote(ref)) == float(1 << 20)
        del ref
        # The producer frees the ref but never reuses the block under a live view.
        for _ in range(3):
            assert ray.get(b.total.remote(a.full.remote(1 << 20, 9.0))) == 9.0 * (1 << 20)
        assert ray.get(b.held_sum.remote()) == 7.0 * (1 << 20)
    finally:
        ray.get(b.drop.remote())
        ray.get(b.configure.remote(zero_copy=False))


def test_same_actor_and_back(pair: tuple) -> None:
    a, b = pair
    ref = a.full.remote(1 << 20, 1.0)
    assert ray.get(b.total.remote(ref)) == float(1 << 20)
    assert ray.get(b.total.remote(ref)) == float(1 << 20)  # passed twice


def test_threaded_and_async_actors(ray_session: None) -> None:
    """No group, no per-actor limit: actors with max_concurrency > 1 and async actors work."""
    t1, t2 = ThreadedProducer.remote(), ThreadedProducer.remote()
    x1, x2 = AsyncActor.remote(), AsyncActor.remote()
    try:
        refs = []
        for i in range(8):
            refs.append(t2.total.remote(t1.full.remote(1 << 18, float(i))))
            refs.append(x2.total.remote(x1.full.remote(1 << 18, float(i))))
            refs.append(x1.total.remote(t1.full.remote(1 << 18, float(i))))
            refs.append(t1.total.remote(x2.full.remote(1 << 18, float(i))))
        want = [float(i) * (1 << 18) for i in range(8) for _ in range(4)]
        assert ray.get(refs) == want
    finally:
        for x in (t1, t2, x1, x2):
            ray.kill(x)


def test_driver_put_with_the_transport(pair: tuple) -> None:
    _, b = pair
    ref = ray.put(torch.full((1 << 20,), 4.0), _tensor_transport="sideband")
    assert ray.get(b.total.remote(ref)) == 4.0 * (1 << 20)
