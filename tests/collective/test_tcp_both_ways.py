"""Over TCP, ranks that send to each other at once, more than a reader holds, finish.

Each connection's reader takes in at most SIDEBAND_PEER_BUFFER_BYTES unconsumed; past that TCP
holds the sender. A rank whose op both sends and receives must keep consuming while its own send
is held, or two such ranks wait on each other until the deadline (a 64 MiB allreduce between 2
ranks did, with the default bound). Here the bound is 1 MiB and every message is larger.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import ray
from collective_helpers import Member, on_all

import sideband

BOUND = 1 << 20
# float32 elements. Loopback's kernel buffers hold up to ~36 MiB a direction (tcp_wmem 4 MiB,
# tcp_rmem autotuned to 32 MiB), so a message must be larger than that and the bound together:
# 64 MiB each way for sendrecv; 128 MiB for the rings (segments of 43-64 MiB at 3 and 2 ranks).
SENDRECV = 16 << 20
SIZE = 32 << 20


def _set_bound(self, value: str | None) -> None:
    if value is None:
        os.environ.pop("SIDEBAND_PEER_BUFFER_BYTES", None)
    else:
        os.environ["SIDEBAND_PEER_BUFFER_BYTES"] = value


@pytest.fixture(scope="module")
def actors(ray_session):
    pool = [Member.remote() for _ in range(3)]
    on_all(pool, _set_bound, str(BOUND))
    yield pool
    on_all(pool, _set_bound, None)
    for a in pool:
        ray.kill(a)


def _sendrecv(self, name: str, rank: int) -> bool:
    g = sideband.get_group(name)
    peer = 1 - rank
    x = np.full(SENDRECV, rank + 1, np.float32)
    out = np.empty_like(x)
    g.sendrecv(x, peer, out, peer, timeout_s=30)
    return bool((out == peer + 1).all())


def _allreduce(self, name: str, rank: int, n: int) -> bool:
    g = sideband.get_group(name)
    base = (np.arange(SIZE) % 7).astype(np.float32)  # small integers: exact sums in float32
    x = base + rank
    g.allreduce(x, timeout_s=30)
    want = n * base + sum(range(n))
    return bool(np.array_equal(x, want))


def _allgather(self, name: str, rank: int, n: int) -> bool:
    g = sideband.get_group(name)
    x = np.full(SIZE, rank, np.float32)
    out = np.empty((n, SIZE), np.float32)
    g.allgather(x, out=out, timeout_s=30)
    return all((out[p] == p).all() for p in range(n))


def test_sendrecv_both_ways_past_the_bound(actors):
    h = sideband.create_group(actors[:2], name="tcp-both-sr", backend="tcp")
    try:
        refs = [
            a.__ray_call__.remote(_sendrecv, "tcp-both-sr", r) for r, a in enumerate(actors[:2])
        ]
        assert ray.get(refs, timeout=60) == [True, True]
    finally:
        h.destroy()


@pytest.mark.parametrize("n", [2, 3])
def test_ring_ops_past_the_bound(actors, n):
    name = f"tcp-both-ring-{n}"
    h = sideband.create_group(actors[:n], name=name, backend="tcp")
    try:
        for fn in (_allreduce, _allgather):
            refs = [a.__ray_call__.remote(fn, name, r, n) for r, a in enumerate(actors[:n])]
            assert ray.get(refs, timeout=60) == [True] * n, fn.__name__
    finally:
        h.destroy()
