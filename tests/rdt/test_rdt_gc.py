"""Ray's reference counting frees the producer's memory; nothing is left behind."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import ray
from rdt_helpers import Consumer, Producer, proc_memory

pytestmark = pytest.mark.timeout(180)

MIB = 1 << 20


@pytest.fixture(scope="module")
def pair(ray_session: None) -> Iterator[tuple]:
    a, b = Producer.remote(), Consumer.remote()
    ray.get([a.pid.remote(), b.pid.remote()])
    yield a, b
    for x in (a, b):
        ray.kill(x)


def _eventually(cond: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


def test_memory_returns_after_the_last_ref_dies(pair: tuple) -> None:
    a, b = pair
    ray.get(a.trim.remote())
    base = ray.get(a.memory.remote())
    ref = a.full.remote(64 * MIB // 4)
    assert ray.get(b.total.remote(ref)) == 64 * MIB // 4
    held = ray.get(a.memory.remote())
    # The tensor and its shared copy are both in the producer while the ref lives.
    assert held["rss"] - base["rss"] > 100 * MIB, (base, held)
    assert held["memfds"] > base["memfds"]
    time.sleep(3)  # longer than the pool's keep time: the ref alone keeps the block
    assert ray.get(a.stats.remote())["exports"] == 1
    del ref
    assert _eventually(
        lambda: (
            ray.get(a.memory.remote())["rss"] - base["rss"] < 16 * MIB
            and ray.get(a.memory.remote())["memfds"] == base["memfds"]
        )
    ), (base, ray.get(a.memory.remote()))
    assert ray.get(a.stats.remote())["exports"] == 0


def test_a_thousand_dropped_refs_leave_nothing(pair: tuple) -> None:
    from ray.experimental import internal_kv

    a, b = pair
    kv_before = set(internal_kv._internal_kv_list("", namespace="sideband"))
    out = []
    for _ in range(1000):
        # 64 KiB: above the inline limit, so each ref has a memfd block behind it.
        out.append(b.total.remote(a.full.remote(16 << 10, 1.0)))
        if len(out) >= 50:
            assert ray.get(out) == [float(16 << 10)] * len(out)
            out.clear()
    assert ray.get(out) == [float(16 << 10)] * len(out)
    del out

    def clean() -> bool:
        sa, sb = ray.get([a.stats.remote(), b.stats.remote()])
        return (
            sa["exports"] == 0
            and sa["memfds"] == sa["mappings"] == sb["memfds"] == sb["mappings"] == 0
        )

    assert _eventually(clean), ray.get([a.stats.remote(), b.stats.remote()])
    assert set(internal_kv._internal_kv_list("", namespace="sideband")) == kv_before
    # The driver maps nothing either.
    assert proc_memory()["mappings"] == 0
