"""Group.empty: arrays in memory that same-host peers map, and the ops that read them in place."""

from __future__ import annotations

import gc
import os
from typing import Any

import numpy as np
import pytest
import ray
from collective_helpers import Member, on_all

import sideband
from sideband.collective.transports import memfd as shared
from sideband.errors import InvalidArgumentError

N = 300_000  # 1.2 MB of float32: above the sizes that take the small-message paths


@pytest.fixture(scope="module")
def group4(ray_session: None) -> Any:
    actors = [Member.remote() for _ in range(4)]
    handle = sideband.create_group(actors, name="shared4")
    yield actors
    handle.destroy()
    for a in actors:
        ray.kill(a)


def _send_then_overwrite(_self: Any, n: int) -> Any:
    """Rank 0 sends from a shared array and overwrites it at once; rank 1 must see the old data."""
    g = sideband.get_group("shared4")
    if g.rank == 0:
        x = g.empty(n, np.float32)
        x[:] = 7
        g.send(x, 1, tag=3)
        x[:] = -1  # send returned: the receiver has its copy
        y = g.empty((2, n // 2), np.float32)
        y[:] = 9
        g.send(y[1], 2)  # a slice of a shared block: sent by reference too
        g.send(np.full(n, 5, np.float32), 3)  # an ordinary array: sent as bytes
        return None
    if g.rank == 1:
        out = np.zeros(n, np.float32)
        g.recv(out, 0, tag=3)
        return float(out.min()), float(out.max())
    if g.rank == 2:
        out = g.empty(n // 2, np.float32)
        g.recv(out, 0)
        return float(out.min()), float(out.max())
    out = g.empty(n, np.float32)
    g.recv(out, 0)
    return float(out.min()), float(out.max())


def test_send_from_shared_array_is_safe_to_overwrite(group4: list[Any]) -> None:
    # Larger than a ring (4 MiB): smaller sends keep returning before the receiver arrives.
    got = on_all(group4, _send_then_overwrite, 2_400_000)
    assert got[1:] == [(7.0, 7.0), (9.0, 9.0), (5.0, 5.0)]
    assert on_all(group4, _ref_sends)[0] == 2  # both shared sends went by reference


def _ref_sends(_self: Any) -> int:
    return sideband.get_group("shared4")._comm.refs.sends


def _both_send_first(_self: Any, n: int) -> float:
    """Ranks 0 and 1 both send before they receive: fine below the ring size, as without empty."""
    g = sideband.get_group("shared4")
    if g.rank > 1:
        return 0.0
    x = g.empty(n, np.float32)
    x[:] = g.rank + 1
    out = np.zeros(n, np.float32)
    g.send(x, 1 - g.rank)
    g.recv(out, 1 - g.rank)
    return float(out.mean())


def test_small_shared_sends_stay_eager(group4: list[Any]) -> None:
    assert on_all(group4, _both_send_first, 200_000)[:2] == [2.0, 1.0]


def _collectives(_self: Any, n: int, shared_ranks: list[int]) -> dict[str, Any]:
    g = sideband.get_group("shared4")
    r, w = g.rank, g.world_size

    def arr(shape: Any) -> np.ndarray:
        return g.empty(shape, np.float64) if r in shared_ranks else np.empty(shape, np.float64)

    base = np.arange(n, dtype=np.float64) % 101
    out: dict[str, Any] = {}
    x = arr(n)
    x[:] = base + r
    g.allreduce(x)
    out["allreduce"] = x.copy()
    b = arr(n)
    b[:] = base if r == 1 else 0
    g.broadcast(b, src=1)
    out["broadcast"] = b.copy()
    a = arr(n)
    a[:] = base * r
    out["allgather"] = g.allgather(a)
    rows = arr((w, n // w))
    rows[:] = r + np.arange(w)[:, None]
    out["reduce_scatter"] = g.reduce_scatter(rows)
    import torch

    t = torch.from_numpy(arr(n))
    t.fill_(r)
    g.allreduce(t, op="max")
    out["torch"] = t.numpy().copy()
    return out


@pytest.mark.parametrize("shared_ranks", [[0, 1, 2, 3], [1, 3]], ids=["all", "some"])
def test_collectives_on_shared_arrays(group4: list[Any], shared_ranks: list[int]) -> None:
    pytest.importorskip("torch")
    res = on_all(group4, _collectives, N, shared_ranks)
    base = np.arange(N, dtype=np.float64) % 101
    for r, got in enumerate(res):
        np.testing.assert_array_equal(got["allreduce"], base * 4 + 6)
        np.testing.assert_array_equal(got["broadcast"], base)
        np.testing.assert_array_equal(got["allgather"], np.stack([base * p for p in range(4)]))
        np.testing.assert_array_equal(got["reduce_scatter"], np.full(N // 4, 6 + 4 * r))
        np.testing.assert_array_equal(got["torch"], np.full(N, 3.0))
    assert all(g["allreduce"].tobytes() == res[0]["allreduce"].tobytes() for g in res)


def test_empty_validates_and_frees() -> None:
    with pytest.raises(InvalidArgumentError):
        shared.empty((2, -1), np.float32)
    with pytest.raises(InvalidArgumentError):
        shared.empty(3, object)
    x = shared.empty((3, 5), "int16")
    assert x.shape == (3, 5) and x.dtype == np.int16 and x.flags.writeable
    assert shared.ref(x) != shared.NO_REF
    assert shared.ref(x[1:]) != shared.NO_REF
    assert shared.ref(np.zeros(4)) == shared.NO_REF
    fd = shared.REF.unpack(shared.ref(x))[1]
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:sideband")
    v = x[1]
    del x
    gc.collect()
    assert shared.ref(v) != shared.NO_REF  # a view keeps its block
    del v
    gc.collect()
    # The block's fd closed with its last array (its number may since be reused by another file).
    link = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
    assert not link.startswith("/memfd:sideband")
    assert shared.empty(0, np.float32).size == 0


def test_message_kinds_are_distinct() -> None:
    from sideband.collective.comm import framing

    kinds = {k: v for k, v in vars(framing).items() if k.startswith("KIND_")}
    assert len(set(kinds.values())) == len(kinds), kinds
    assert sorted(framing.KINDS.values()) == sorted(kinds.values())
