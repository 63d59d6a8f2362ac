"""Failures end fetches with clear errors within seconds, never hangs."""

from __future__ import annotations

import time

import pytest
import ray
from rdt_helpers import Consumer, Producer

pytestmark = pytest.mark.timeout(180)

MIB = 1 << 20


def test_producer_killed_before_the_fetch(ray_session: None) -> None:
    a, b = Producer.remote(), Consumer.remote()
    try:
        ref = a.full.remote(4 * MIB)
        ray.wait([ref], fetch_local=False)
        a_pid = ray.get(a.pid.remote())
        ray.kill(a)
        _wait_gone(a_pid)
        t0 = time.monotonic()
        with pytest.raises(Exception) as info:
            ray.get(b.total.remote(ref), timeout=30)
        assert time.monotonic() - t0 < 10
        text = str(info.value)
        assert "PeerLostError" in text and f"pid {a_pid}) exited" in text, text
        # The consumer is alive and still works.
        c = Producer.remote()
        assert ray.get(b.total.remote(c.full.remote(MIB))) == float(MIB)
        ray.kill(c)
    finally:
        ray.kill(b)


def test_producer_killed_while_consumers_fetch(ray_session: None) -> None:
    """Killed in the middle: each fetch either completes (the mapping outlives its producer)
    or fails with an error, all within seconds."""
    a, b = Producer.remote(), Consumer.remote()
    try:
        refs = [a.full.remote(64 * MIB // 4, 1.0) for _ in range(3)]
        ray.wait(refs, num_returns=len(refs), fetch_local=False)
        outs = [b.total.remote(r) for r in refs]
        a.die.remote()
        t0 = time.monotonic()
        for out in outs:
            try:
                assert ray.get(out, timeout=30) == 64 * MIB // 4
            except ray.exceptions.RayError as e:
                assert "PeerLostError" in str(e) or "ActorDiedError" in str(e), str(e)
        assert time.monotonic() - t0 < 20
    finally:
        ray.kill(b)


def _wait_gone(pid: int, timeout_s: float = 10.0) -> None:
    import os

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
