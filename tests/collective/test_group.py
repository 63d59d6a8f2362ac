"""Group lifecycle, errors, mismatches, async handles, torch tensors and the guard."""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import numpy as np
import pytest
import ray
from collective_helpers import Member, on_all, on_all_refs

import sideband
from sideband import ReduceOp


@pytest.fixture
def actors(ray_session):
    made: list = []

    def make(n: int) -> list:
        new = [Member.remote() for _ in range(n)]
        made.extend(new)
        return new

    yield make
    for a in made:
        ray.kill(a)


def _init(self, world, rank, name, backend="auto"):
    g = sideband.init_group(world, rank, name=name, backend=backend)
    x = np.full(3, rank + 1.0)
    return g.allreduce(x).tolist()


def _destroy(self, name):
    sideband.destroy_group(name)
    return sideband.is_group_initialized(name)


def test_init_group_inside_actors_and_reuse_name(actors):
    ws = actors(3)
    for _ in range(3):  # destroy, then the same name again, at once
        refs = [w.__ray_call__.remote(_init, 3, r, "declarative") for r, w in enumerate(ws)]
        assert ray.get(refs, timeout=60) == [[6.0] * 3] * 3
        assert on_all(ws, _destroy, "declarative") == [False] * 3


def test_create_group_lists_and_destroys(actors):
    ws = actors(2)
    h = sideband.create_group(ws, name="listed")
    groups = {g["name"]: g for g in sideband.list_groups()}
    assert groups["listed"]["world_size"] == 2
    assert [m["actor_id"] for m in groups["listed"]["members"]] == [w._actor_id.hex() for w in ws]
    h.destroy()
    assert "listed" not in {g["name"] for g in sideband.list_groups()}
    # ... and the name can be used again at once, with the ranks swapped.
    h = sideband.create_group(ws[::-1], name="listed")
    assert on_all(ws, lambda s: sideband.get_group("listed").rank) == [1, 0]
    h.destroy()


def _overlap(self, names):
    out = []
    for name in names:
        g = sideband.get_group(name)
        out.append(g.allreduce(np.array([g.rank + 1])).item())
    return out


def test_several_groups_with_overlapping_members(actors):
    ws = actors(4)
    ha = sideband.create_group(ws[:3], name="ga")
    hb = sideband.create_group(ws[1:], name="gb")
    hc = sideband.create_group(ws, name="gc", backend="tcp")
    got = ray.get(
        [ws[0].__ray_call__.remote(_overlap, ["ga", "gc"])]
        + [w.__ray_call__.remote(_overlap, ["ga", "gb", "gc"]) for w in ws[1:3]]
        + [ws[3].__ray_call__.remote(_overlap, ["gb", "gc"])],
        timeout=60,
    )
    assert got == [[6, 10], [6, 6, 10], [6, 6, 10], [6, 10]]
    for h in (ha, hb, hc):
        h.destroy()


def test_create_group_with_dead_actor_names_it(actors):
    ws = actors(3)
    ray.get([w.pid.remote() for w in ws])
    ray.kill(ws[1])
    t = time.monotonic()
    with pytest.raises(sideband.RendezvousError, match=ws[1]._actor_id.hex()):
        sideband.create_group(ws, name="with-dead", timeout_s=20)
    assert time.monotonic() - t < 15
    # The survivors are not left half-joined.
    assert (
        on_all([ws[0], ws[2]], lambda s: sideband.is_group_initialized("with-dead")) == [False] * 2
    )


def _bad_calls(self, name):
    g = sideband.get_group(name)
    errors = {}
    calls = {
        "rank": lambda: g.broadcast(np.zeros(3), src=5),
        "negative rank": lambda: g.reduce(np.zeros(3), dst=-1),
        "readonly": lambda: g.allreduce(np.frombuffer(b"\0" * 16, dtype=np.float32)),
        "complex": lambda: g.allreduce(np.zeros(3, np.complex64)),
        "type": lambda: g.allreduce([1, 2, 3]),
        "avg int": lambda: g.allreduce(np.zeros(3, np.int32), ReduceOp.AVG),
        "band float": lambda: g.allreduce(np.zeros(3, np.float32), ReduceOp.BAND),
        "bad op": lambda: g.allreduce(np.zeros(3), "median"),
        "out shape": lambda: g.allgather(np.zeros(3), out=np.zeros((2, 4))),
        "send self": lambda: g.send(np.zeros(3), dst=g.rank),
        "tag": lambda: g.send(np.zeros(3), dst=1 - g.rank, tag=-1),
        "rows": lambda: g.reduce_scatter(np.zeros(3)),
    }
    for label, call in calls.items():
        try:
            call()
            errors[label] = None
        except sideband.SidebandError as e:
            errors[label] = (type(e).__name__, isinstance(e, ValueError), str(e))
    # After all of that, the group still works.
    errors["after"] = g.allreduce(np.ones(2)).tolist()
    return errors


def test_bad_arguments_raise_on_the_caller_and_keep_the_group(actors):
    ws = actors(2)
    h = sideband.create_group(ws, name="bad-args")
    for errors in on_all(ws, _bad_calls, "bad-args"):
        assert errors.pop("after") == [2.0, 2.0]
        for label, err in errors.items():
            assert err is not None, f"{label} did not raise"
            assert err[0] == "InvalidArgumentError" and err[1], (label, err)
        assert "out of range" in errors["rank"][2] and "0..1" in errors["rank"][2]
        assert "read-only" in errors["readonly"][2]
    h.destroy()


def test_async_actors_join_from_inside(ray_session):
    ws = [AsyncWorker.remote() for _ in range(2)]
    try:
        ray.get([w.join.remote(2, r, "awaited-inside") for r, w in enumerate(ws)], timeout=60)
        got = ray.get([w.allreduce.remote("awaited-inside", 0.0) for w in ws], timeout=60)
        assert got == [[3.0] * 8] * 2
        ray.get(
            [w.__ray_call__.remote(lambda s: sideband.destroy_group("awaited-inside")) for w in ws]
        )
    finally:
        for w in ws:
            ray.kill(w)


def test_invalid_group_arguments(ray_session):
    with pytest.raises(sideband.InvalidArgumentError, match="actor handles"):
        sideband.create_group([object()], name="not-actors")
    with pytest.raises(ValueError):
        sideband.init_group(2, 5, name="x")
    with pytest.raises(sideband.InvalidArgumentError):
        sideband.init_group(2, 0, name=7)
    with pytest.raises(sideband.InvalidArgumentError):
        sideband.init_group(0, 0, name="x")
    with pytest.raises(sideband.InvalidArgumentError):
        sideband.init_group(1, 0, name="x", backend="carrier-pigeon")
    with pytest.raises(sideband.GroupNotFoundError):
        sideband.get_group("never-created")


def _mismatch(self, name, case):
    g = sideband.get_group(name)
    r = g.rank
    try:
        if case == "size":
            g.allreduce(np.ones(10 + r, np.float32))
        elif case == "large size":
            g.allreduce(np.ones(100_000 + r, np.float32))
        elif case == "dtype":
            g.allreduce(np.ones(10, np.float32 if r else np.int32))
        elif case == "op":
            g.allreduce(np.ones(10), ReduceOp.SUM if r else ReduceOp.MAX)
        elif case == "root":
            g.broadcast(np.ones(10), src=r % 2)
        elif case == "different ops":
            g.allreduce(np.ones(10)) if r else g.allgather(np.ones(10))
        elif case == "allgather size":
            g.allgather(np.ones(5 + (r == 2)))
        elif case == "straddle":  # one rank small enough for the shared slots, the others not
            g.allreduce(np.ones(1000 if r == 0 else 3000, np.float32))
        elif case == "straddle broadcast":
            g.broadcast(np.ones(1000 if r == 1 else 100_000, np.float32), src=0)
        return "no error"
    except sideband.MismatchError as e:
        first = ("MismatchError", str(e))
    try:
        g.barrier()
        return "usable after mismatch"
    except sideband.SidebandError as e:
        return first, type(e).__name__


@pytest.fixture(scope="module")
def trio(ray_session):
    ws = [Member.remote() for _ in range(3)]
    yield ws
    for w in ws:
        ray.kill(w)


@pytest.mark.parametrize("backend", ["shm", "tcp"])
@pytest.mark.parametrize(
    "case",
    [
        "size",
        "large size",
        "dtype",
        "op",
        "root",
        "different ops",
        "allgather size",
        "straddle",
        "straddle broadcast",
    ],
)
def test_mismatch_raises_on_every_rank(trio, backend, case):
    ws = trio
    name = f"mm-{backend}-{case.replace(' ', '-')}"
    h = sideband.create_group(ws, name=name, backend=backend, timeout_s=20)
    results = on_all(ws, _mismatch, name, case, timeout=60)
    for r in results:
        assert isinstance(r, tuple), results
        (kind, msg), later = r
        assert kind == "MismatchError" and later == "MismatchError", r
    h.destroy()
    # The name is usable again at once.
    h = sideband.create_group(ws, name=name, backend=backend)
    assert (
        on_all(ws, lambda s, n: sideband.get_group(n).allreduce(np.ones(1)).item(), name)
        == [3.0] * 3
    )
    h.destroy()


def _async_ops(self, name):
    g = sideband.get_group(name)
    xs = [np.full(100_000, g.rank + i, np.float64) for i in range(4)]
    works = [g.allreduce(x, async_op=True) for x in xs]
    b = np.full(5, g.rank, np.int64)
    g.broadcast(b, src=1)  # a blocking op after async ones runs after them
    results = [w.wait(timeout=30) for w in works]
    assert all(w.done() for w in works)
    return [float(x[0]) for x in results], b.tolist()


def test_async_handles_run_in_order(actors):
    ws = actors(2)
    h = sideband.create_group(ws, name="async")
    for sums, b in on_all(ws, _async_ops, "async"):
        assert sums == [1.0, 3.0, 5.0, 7.0]
        assert b == [1] * 5
    h.destroy()


@ray.remote(num_cpus=0)
class AsyncWorker:
    async def join(self, world, rank, name):
        import asyncio

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sideband.init_group, world, rank, name)

    async def allreduce(self, name, delay):
        import asyncio

        g = sideband.get_group(name)
        await asyncio.sleep(delay)
        x = np.full(8, g.rank + 1.0)
        await g.allreduce(x, async_op=True)
        return x.tolist()

    async def ping(self):
        return "pong"


def test_awaiting_an_op_keeps_the_event_loop_free(ray_session):
    ws = [AsyncWorker.remote() for _ in range(2)]
    try:
        # Async actors are grouped from the driver like any other actor.
        h = sideband.create_group(ws, name="awaited")
        slow = ws[1].allreduce.remote("awaited", 2.0)
        waiting = ws[0].allreduce.remote("awaited", 0.0)
        # While rank 0 awaits its peer, its event loop still serves other calls.
        assert ray.get(ws[0].ping.remote(), timeout=1.5) == "pong"
        assert ray.get([waiting, slow], timeout=60) == [[3.0] * 8] * 2
        h.destroy()
    finally:
        for w in ws:
            ray.kill(w)


def _torch_ops(self, name):
    import torch

    g = sideband.get_group(name)
    r = g.rank
    out = {}
    t = torch.full((4, 3), float(r + 1))
    ptr = t.data_ptr()
    g.allreduce(t)
    out["allreduce"] = (t.tolist(), t.data_ptr() == ptr)
    bf = torch.full((5,), r + 1.0, dtype=torch.bfloat16)
    g.allreduce(bf)
    out["bf16"] = bf.float().tolist()
    i = torch.arange(6, dtype=torch.int32) * (r + 1)
    g.allreduce(i, ReduceOp.MAX)
    out["int"] = i.tolist()
    out["allgather"] = g.allgather(torch.tensor([r, r])).tolist()
    b = torch.zeros(3) if r else torch.tensor([1.0, 2.0, 3.0])
    g.broadcast(b, src=0)
    out["bcast"] = b.tolist()
    nc = torch.zeros(4, 4)[:, 1]  # non-contiguous view
    nc += r + 1
    g.allreduce(nc)
    out["noncontig"] = nc.tolist()
    mixed = np.ones(3, np.float32) if r else torch.ones(3)  # numpy on one rank, torch on another
    g.allreduce(mixed)
    out["mixed"] = [float(v) for v in mixed]
    return out


def test_torch_cpu_tensors(actors):
    pytest.importorskip("torch")
    ws = actors(2)
    h = sideband.create_group(ws, name="torch")
    for o in on_all(ws, _torch_ops, "torch"):
        assert o["allreduce"] == ([[3.0] * 3] * 4, True)
        assert o["bf16"] == [3.0] * 5
        assert o["int"] == [v * 2 for v in range(6)]
        assert o["allgather"] == [[0, 0], [1, 1]]
        assert o["bcast"] == [1.0, 2.0, 3.0]
        assert o["noncontig"] == [3.0] * 4
        assert o["mixed"] == [2.0] * 3
    h.destroy()


def _lonely_allreduce(self, name, timeout_s):
    g = sideband.get_group(name)
    t = time.monotonic()
    try:
        g.allreduce(np.ones(4), timeout_s=timeout_s)
    except sideband.CollectiveTimeoutError as e:
        return time.monotonic() - t, str(e)
    return None


def test_timeout_instead_of_hang(actors):
    ws = actors(2)
    h = sideband.create_group(ws, name="timeout")
    elapsed, msg = ray.get(ws[0].__ray_call__.remote(_lonely_allreduce, "timeout", 1.0), timeout=30)
    assert 0.9 < elapsed < 10 and "allreduce" in msg
    h.destroy()


def _wait_in_allreduce(self, name):
    g = sideband.get_group(name)
    try:
        g.allreduce(np.ones(4))
    except sideband.PeerLostError as e:
        return "PeerLostError", str(e)
    return "no error"


@pytest.mark.parametrize("backend", ["shm", "tcp"])
def test_dead_peer_raises_peer_lost(actors, backend):
    ws = actors(2)
    h = sideband.create_group(ws, name=f"lost-{backend}", backend=backend)
    pid = ray.get(ws[1].pid.remote())
    ref = ws[0].__ray_call__.remote(_wait_in_allreduce, f"lost-{backend}")
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    kind, msg = ray.get(ref, timeout=30)
    assert kind == "PeerLostError" and "rank 1" in msg
    h.destroy()


@dataclasses.dataclass
class Holder:
    payload: object


def _send_ref(self, name):
    g = sideband.get_group(name)
    ref = ray.put(1)
    msgs = []
    for obj in ({"nested": [ref]}, Holder(payload=(1, ref))):
        try:
            g.allgather_object(obj)
        except sideband.OutOfBandRefError as e:
            msgs.append(str(e))
    try:
        g.send_object(Holder(ref), dst=1 - g.rank)
    except sideband.OutOfBandRefError as e:
        msgs.append(str(e))
    # The documented opt-out lets a ref through for users who keep it alive themselves.
    with sideband.guard.allow_object_refs():
        refs = g.allgather_object(ref)
    return msgs, g.allgather_object(g.rank), len(refs)


def test_guard_refuses_object_refs_and_keeps_group(actors):
    ws = actors(2)
    h = sideband.create_group(ws, name="guard")
    for msgs, after, nrefs in on_all(ws, _send_ref, "guard"):
        assert len(msgs) == 3
        assert all("ObjectRef" in m and "ray.get" in m for m in msgs)
        assert after == [0, 1] and nrefs == 2
    h.destroy()


def test_no_shared_memory_left_behind(actors):
    ws = actors(3)
    h = sideband.create_group(ws, name="shm-clean")
    on_all(ws, lambda s: sideband.get_group("shm-clean").allreduce(np.ones(10)))
    assert not [f for f in os.listdir("/dev/shm") if f.startswith("sideband-")]
    h.destroy()
    assert not [f for f in os.listdir("/dev/shm") if f.startswith("sideband-")]


def test_declare_group_joins_lazily(actors):
    from sideband.collective.api.driver import declare_group

    ws = actors(3)
    declare_group(ws, 3, [2, 0, 1], name="declared")
    refs = on_all_refs(ws, lambda s: sideband.get_group("declared").allreduce(np.ones(2)).tolist())
    assert ray.get(refs, timeout=60) == [[3.0, 3.0]] * 3
    assert on_all(ws, lambda s: sideband.get_group("declared").rank) == [2, 0, 1]
    on_all(ws, _destroy, "declared")


def _solo(self, name):
    sideband.init_group(1, 0, name=name)


def _late_init(self, world, rank, name, delay):
    time.sleep(delay)
    g = sideband.init_group(world, rank, name=name, timeout_s=30)
    out = g.allreduce(np.ones(2)).tolist()
    sideband.destroy_group(name)
    return out


def test_name_reused_by_a_larger_group_after_a_crash(actors):
    # A 1-rank group whose actor dies without destroying it leaves its session in the store;
    # a 2-rank group of the same name must wait for its own rank 0, not trip over the old one.
    (old,) = actors(1)
    ray.get(old.__ray_call__.remote(_solo, "reused-bigger"))
    ray.kill(old)
    ws = actors(2)
    refs = [
        ws[1].__ray_call__.remote(_late_init, 2, 1, "reused-bigger", 0.0),
        ws[0].__ray_call__.remote(_late_init, 2, 0, "reused-bigger", 1.0),
    ]
    assert ray.get(refs, timeout=60) == [[2.0, 2.0]] * 2
