"""Drop-in and torch parity: read-only inputs, cloudpickled objects, sendrecv / isend / irecv,
Work's torch names, and the warning for blocking ops on a running event loop.

Two ranks on a real local Ray (actors with num_cpus=0): one pair of sync actors holds a native
group and a drop-in group for the whole module, one pair of async actors a group of their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import ray

import sideband
import sideband.collective as col
from sideband.collective.runtime import work as work_mod

BIG = 3 << 20  # float32 elements: 12 MiB, three times the shared-memory ring


@ray.remote(num_cpus=0)
class Member:
    """A plain sync actor: tests run code in it through ``__ray_call__``."""


def _in_actor(name: str, fn: Any, *args: Any) -> Any:
    """Run ``fn(group, *args)`` in the actor, with every warning recorded: (result, warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(sideband.get_group(name), *args)
    return out, [(str(w.message), w.filename) for w in caught]


@pytest.fixture(scope="module")
def pair(ray_session: None) -> Iterator[tuple[list[Any], str]]:
    """Two sync actors in the native group "parity" (also joined to the drop-in's "parity-col")."""
    actors = [Member.remote() for _ in range(2)]
    handle = sideband.create_group(actors, name="parity", timeout_s=30)

    def join_dropin(_self: Any, rank: int) -> None:
        col.init_collective_group(2, rank, "gloo", "parity-col", gloo_timeout=30000)

    ray.get([a.__ray_call__.remote(join_dropin, r) for r, a in enumerate(actors)], timeout=60)
    yield actors, "parity"
    ray.get(
        [
            a.__ray_call__.remote(lambda s: col.destroy_collective_group("parity-col"))
            for a in actors
        ],
        timeout=30,
    )
    handle.destroy()
    for a in actors:
        ray.kill(a)


def on_pair(pair: tuple[list[Any], str], fn: Any, *args: Any) -> list[Any]:
    """``fn(group, *args)`` on both ranks at once; per rank: (result, warnings)."""
    actors, name = pair
    refs = [a.__ray_call__.remote(lambda s, *a: _in_actor(name, fn, *a), *args) for a in actors]
    return ray.get(refs, timeout=60)


# --- 1. read-only inputs ---------------------------------------------------------------------


def _readonly_core(g: Any, ray_arg: np.ndarray) -> dict[str, Any]:
    """Every writing op refuses the read-only array Ray handed in, then writes on opt-in."""
    assert not ray_arg.flags.writeable  # as Ray hands numpy arguments out
    errors = {}
    calls = {
        "allreduce": lambda: g.allreduce(ray_arg),
        "broadcast": lambda: g.broadcast(ray_arg, src=1 - g.rank) if g.rank == 0 else None,
        "reduce": lambda: g.reduce(ray_arg, dst=g.rank),
        "recv": lambda: g.recv(ray_arg, src=1 - g.rank),
    }
    for label, call in calls.items():
        try:
            call()
        except sideband.InvalidArgumentError as e:
            errors[label] = str(e)
    # Nothing moved: the group is usable, and the opt-in writes through (flags unchanged).
    got = g.allreduce(ray_arg, write_readonly=True).tolist()
    return {"errors": errors, "sum": got, "still_readonly": not ray_arg.flags.writeable}


def _readonly_allgather_out(g: Any) -> str:
    out = np.zeros((2, 4))
    out.setflags(write=False)
    try:
        g.allgather(np.ones(4), out=out)
    except sideband.InvalidArgumentError as e:
        return str(e)
    return "no error"


def test_read_only_inputs_refused_unless_opted_in(pair: Any) -> None:
    arg = np.ones(4)
    for rank, (res, _) in enumerate(on_pair(pair, _readonly_core, arg)):
        errs = res["errors"]
        assert set(errs) >= {"allreduce", "reduce", "recv"} and (rank != 0 or "broadcast" in errs)
        for msg in errs.values():
            assert f"rank {rank} of group 'parity'" in msg and "read-only" in msg
            assert "x.copy()" in msg and "write_readonly=True" in msg
        assert res["sum"] == [2.0] * 4 and res["still_readonly"]
    for msg, _ in on_pair(pair, _readonly_allgather_out):
        assert "allgather" in msg and "(out)" in msg and "read-only" in msg


def _readonly_dropin(_g: Any, ray_arg: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, call in {
        "allreduce": lambda: col.allreduce(ray_arg, "parity-col"),
        "allgather": lambda: col.allgather([ray_arg, ray_arg], np.ones(4), "parity-col"),
    }.items():
        try:
            call()
            out[label] = "no error"
        except col.CollectiveUsageError as e:
            out[label] = (isinstance(e, ValueError) and isinstance(e, RuntimeError), str(e))
    col.allreduce(ray_arg, "parity-col", write_readonly=True)
    lst = [np.frombuffer(np.zeros(4).tobytes()) for _ in range(2)]
    col.allgather(lst, np.full(4, 5.0), "parity-col", write_readonly=True)
    out["written"] = (ray_arg.tolist(), [t.tolist() for t in lst])
    return out


def test_dropin_refuses_read_only_like_ray_objects_and_opts_in(pair: Any) -> None:
    for res, _ in on_pair(pair, _readonly_dropin, np.ones(4)):
        for label in ("allreduce", "allgather"):
            both, msg = res[label]
            assert both and "read-only" in msg and "write_readonly=True" in msg
        assert res["written"] == ([2.0] * 4, [[5.0] * 4] * 2)


def test_write_readonly_refuses_memory_mapped_read_only(tmp_path: Any) -> None:
    """The opt-in writes through an alias (non-contiguous too), but a read-only mapping, where a
    write would crash the process (SIGSEGV), is refused instead."""
    from sideband.collective.runtime.buffers import as_buffer

    frozen = np.frombuffer(np.arange(8.0).tobytes())[::2]  # read-only and non-contiguous
    buf = as_buffer(frozen, "allreduce", writable=True, write_readonly=True)
    buf.arr[:] = -1.0
    buf.finish()
    assert frozen.tolist() == [-1.0] * 4 and not frozen.flags.writeable
    np.save(tmp_path / "x.npy", np.arange(4.0))
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    with pytest.raises(sideband.InvalidArgumentError, match="mapped read-only"):
        as_buffer(mapped, "allreduce", writable=True, write_readonly=True)
    assert mapped.tolist() == [0.0, 1.0, 2.0, 3.0]
    del mapped


# --- 2. objects through ray.cloudpickle, the guard as strict ----------------------------------


def _cloudpickled(g: Any) -> dict[str, Any]:
    offset = 10

    class Local:  # a class local to this function: plain pickle refuses it
        def __init__(self, v: int) -> None:
            self.v = v

    fn = g.broadcast_object((lambda v: v + offset) if g.rank == 0 else None, src=0)
    if g.rank == 0:
        g.send_object(Local(7), dst=1, tag=3)
        local = None
    else:
        got = g.recv_object(src=0, tag=3)
        local = (type(got).__name__, got.v)
    return {"lambda": fn(1), "local": local}


def test_object_ops_carry_lambdas_and_local_classes(pair: Any) -> None:
    (r0, _), (r1, _) = on_pair(pair, _cloudpickled)
    assert r0["lambda"] == r1["lambda"] == 11
    assert r1["local"] == ("Local", 7)


def _nested_refs(g: Any) -> dict[str, Any]:
    ref = ray.put(123)

    class Holder:
        held = ref  # a class attribute: reached only by pickling the class by value

    out: dict[str, Any] = {}
    for key, call in {
        "lambda": lambda: g.broadcast_object((lambda: ref) if g.rank == 0 else None, src=0),
        "class": lambda: g.allgather_object(Holder),  # every rank's own object is refused
        # Rank 1 posts no receive: only the sender's refusal is checked here.
        "send": lambda: g.send_object([Holder], dst=1, tag=99) if g.rank == 0 else None,
    }.items():
        try:
            call()
            out[key] = "no error"
        except sideband.SidebandError as e:
            out[key] = (type(e).__name__, str(e))
    out["after"] = g.allgather_object(g.rank)  # the group is still usable
    return out


def test_guard_refuses_object_refs_nested_in_lambdas_and_classes(pair: Any) -> None:
    (r0, _), (r1, _) = on_pair(pair, _nested_refs)
    for key in ("lambda", "class", "send"):
        kind, msg = r0[key]
        assert kind == "OutOfBandRefError" and "ObjectRef" in msg
    assert r1["class"][0] == "OutOfBandRefError" and r1["send"] == "no error"
    kind, msg = r1["lambda"]  # the receiving rank hears why, and nothing was unpickled
    assert kind == "PeerOpError" and "OutOfBandRefError" in msg
    assert r0["after"] == r1["after"] == [0, 1]


# --- 3. sendrecv, isend / irecv, Work ----------------------------------------------------------


def _exchange(g: Any) -> dict[str, Any]:
    peer, me = 1 - g.rank, g.rank
    big = np.full(BIG, me, dtype=np.float32)
    # Both ranks send 12 MiB first: with send-then-recv both would wait for each other.
    got = g.sendrecv(big, peer, np.empty_like(big), peer)
    # Different dtypes each way, and out=x (sent, then replaced).
    mixed = np.full(5, me, dtype=np.int64 if me == 0 else np.float32)
    back = g.sendrecv(mixed, peer, np.empty(5, np.float32 if me == 0 else np.int64), peer, tag=1)
    same = np.full(3, me + 1.0)
    g.sendrecv(same, peer, same, peer, tag=2)
    # Paired with a peer's plain send and recv.
    if me == 0:
        solo = g.sendrecv(np.full(2, 7.0), 1, np.empty(2), 1, tag=5).tolist()
    else:
        solo = g.recv(np.empty(2), 0, tag=5).tolist()
        g.send(np.full(2, 8.0), 0, tag=5)
    # isend / irecv: Works with torch's names.
    w_send = g.isend(np.full(4, me, dtype=np.int32), peer, tag=6)
    w_recv = g.irecv(np.empty(4, np.int32), peer, tag=6)
    fut = w_recv.get_future()
    res = fut.result(timeout=30)
    w_send.wait()
    rejected = None
    try:
        g.sendrecv(big, me, big, peer)
    except sideband.InvalidArgumentError as e:
        rejected = str(e)
    return {
        "big": bool((got == peer).all()),
        "mixed": back.tolist(),
        "same": same.tolist(),
        "solo": solo,
        "irecv": res.tolist(),
        "same_future": w_recv.get_future() is fut,
        "completed": (w_send.is_completed(), w_recv.is_completed()),
        "exception": (w_send.exception(), w_recv.exception()),
        "cancel": fut.cancel(),
        "rejected": rejected,
    }


def test_sendrecv_isend_irecv_and_work(pair: Any) -> None:
    (r0, _), (r1, _) = on_pair(pair, _exchange)
    assert r0["big"] and r1["big"]
    assert r0["mixed"] == [1.0] * 5 and r1["mixed"] == [0] * 5
    assert r0["same"] == [2.0] * 3 and r1["same"] == [1.0] * 3
    assert r0["solo"] == [8.0, 8.0] and r1["solo"] == [7.0, 7.0]
    assert r0["irecv"] == [1] * 4 and r1["irecv"] == [0] * 4
    for r in (r0, r1):
        assert r["same_future"] and r["completed"] == (True, True)
        assert r["exception"] == (None, None) and r["cancel"] is False
        assert "dst is this rank itself" in r["rejected"]


def _failing_work(g: Any) -> dict[str, Any]:
    if g.rank == 1:
        return {}  # never sends: rank 0's irecv runs into its deadline
    w = g.irecv(np.empty(2), 1, timeout_s=0.5)
    fut = w.get_future()
    running = (w.is_completed(), w.exception(), fut.cancel())
    concurrent.futures.wait([fut], timeout=30)
    return {
        "running": running,
        "exception": type(w.exception()).__name__,
        "future": type(fut.exception()).__name__,
        "completed": w.is_completed(),
    }


def test_work_reports_a_failed_op(ray_session: None) -> None:
    actors = [Member.remote() for _ in range(2)]
    handle = sideband.create_group(actors, name="parity-fail", timeout_s=30)
    try:
        res, _ = on_pair((actors, "parity-fail"), _failing_work)[0]
        assert res["running"] == (False, None, False)
        assert res["exception"] == res["future"] == "CollectiveTimeoutError"
        assert res["completed"]
    finally:
        handle.destroy()
        for a in actors:
            ray.kill(a)


# --- 4. blocking ops on a running event loop warn once ----------------------------------------


def _plain_asyncio(g: Any) -> list[str]:
    work_mod._warned.clear()  # once per process: start this check from a clean slate

    async def main() -> None:
        for _ in range(3):
            g.allreduce(np.ones(2))  # blocks the loop: warned the first time only
        await g.allreduce(np.ones(2), async_op=True)  # the awaitable form: no warning
        await asyncio.to_thread(g.barrier)  # off the loop's thread: no warning

    asyncio.run(main())
    g.barrier()  # no loop running here any more
    return []


def test_blocking_op_in_plain_asyncio_warns_once(pair: Any) -> None:
    for _, caught in on_pair(pair, _plain_asyncio):
        assert len(caught) == 1, caught
        msg, filename = caught[0]
        assert "allreduce on rank" in msg and "asyncio event loop" in msg
        assert "await group.allreduce(..., async_op=True)" in msg
        assert filename == __file__  # points at the user's line, not at sideband's


@ray.remote(num_cpus=0)
class AsyncMember:
    """An async actor: its methods run on its event loop."""

    async def run(self, name: str) -> list[tuple[str, str]]:
        g = sideband.get_group(name)
        peer = 1 - g.rank
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            g.barrier()
            g.barrier()  # the same op: no second warning
            await g.barrier(async_op=True)
            await asyncio.wrap_future(g.barrier(async_op=True).get_future())
            if g.rank == 0:
                w = g.irecv(np.empty(3), peer)  # the peer sends in 0.3 s
                w.wait()  # blocks the loop: warned, naming `await work`
                w.wait()  # already done: does not block
            else:
                await asyncio.sleep(0.3)
                await g.isend(np.ones(3), peer)
        return [(str(w.message), w.filename) for w in caught]


def test_blocking_op_in_async_actor_warns_once(ray_session: None) -> None:
    actors = [AsyncMember.remote() for _ in range(2)]
    handle = sideband.create_group(actors, name="parity-async", timeout_s=30)
    try:
        r0, r1 = ray.get([a.run.remote("parity-async") for a in actors], timeout=60)
        for caught, waited in ((r0, True), (r1, False)):
            msgs = [m for m, _ in caught]
            assert sum("barrier on rank" in m for m in msgs) == 1, msgs
            assert all(f == __file__ for _, f in caught)
            barrier = next(m for m in msgs if "barrier on rank" in m)
            assert "await group.barrier(..., async_op=True)" in barrier
            assert sum("Work.wait()" in m and "await work" in m for m in msgs) == int(waited)
            assert len(msgs) == 1 + int(waited)
    finally:
        handle.destroy()
        for a in actors:
            ray.kill(a)


def test_no_warning_without_a_running_loop() -> None:
    assert not work_mod.first_on_loop("never-on-a-loop")
    assert "never-on-a-loop" not in work_mod._warned  # nothing counted as warned either
