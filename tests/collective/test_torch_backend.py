"""backend="torch_gloo": torch.distributed's gloo under sideband's rendezvous, deadlines and errors;
and CPU torch tensors (bfloat16, fp8) on the native backend through every op."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import ray
from collective_helpers import Member, on_all, on_all_refs

import sideband
from sideband.collective.api import checks
from sideband.collective.api import table as core

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(
    not core.backend_available("torch_gloo"), reason="torch without gloo"
)


def _all_ops(_self: Any, name: str) -> dict[str, Any]:
    import numpy as np
    import torch

    import sideband

    g = sideband.get_group(name)
    r, n = g.rank, g.world_size
    out: dict[str, Any] = {"backend": g.backend, "kind": g._torch.kind}
    x = torch.full((3, 2), float(r + 1))
    assert g.allreduce(x) is x
    out["allreduce"] = x.tolist()
    x = torch.full((4,), float(r + 1), dtype=torch.bfloat16)
    g.allreduce(x, op=sideband.ReduceOp.MAX)
    out["allreduce_bf16_max"] = x.float().tolist()
    x = torch.full((4,), float(r + 1))
    g.allreduce(x, op=sideband.ReduceOp.AVG)
    out["avg"] = x.tolist()
    b = torch.tensor([r == 0, True, False])
    g.allreduce(b)  # bool SUM = logical or
    out["bool_or"] = b.tolist()
    a = np.full(5, r + 1, dtype=np.int64)  # numpy in, numpy out
    g.allreduce(a, op=sideband.ReduceOp.PRODUCT)
    out["numpy_prod"] = a.tolist()
    x = torch.full((2,), float(r + 1))
    g.reduce(x, dst=1)
    out["reduce"] = x.tolist()
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()  # non-contiguous, in place
    if r != 0:
        x.zero_()
    g.broadcast(x, src=0)
    out["broadcast_noncontig"] = x.tolist()
    out["allgather"] = g.allgather(torch.tensor([r, r * 10], dtype=torch.int32)).tolist()
    got = g.gather(torch.tensor([r], dtype=torch.int16), dst=0)
    out["gather"] = None if got is None else got.tolist()
    src = torch.arange(n * 2, dtype=torch.float64).reshape(n, 2) if r == 0 else None
    out["scatter"] = g.scatter(src, src=0).tolist()
    rs = torch.arange(n * 2, dtype=torch.float32).reshape(n, 2) + r
    out["reduce_scatter"] = g.reduce_scatter(rs).tolist()
    at = torch.tensor([[r * 10 + p] for p in range(n)], dtype=torch.int64)
    out["alltoall"] = g.alltoall(at).tolist()
    g.barrier()
    if r == 0:
        g.send(torch.tensor([7.0, 8.0], dtype=torch.bfloat16), dst=1, tag=3)
        out["p2p"] = g.recv(torch.zeros(2, dtype=torch.uint8), src=1, tag=4).tolist()
    elif r == 1:
        out["p2p"] = g.recv(torch.zeros(2, dtype=torch.bfloat16), src=0, tag=3).float().tolist()
        g.send(torch.tensor([1, 2], dtype=torch.uint8), dst=0, tag=4)
    w = g.allreduce(torch.ones(3), async_op=True)
    out["async"] = w.wait().tolist()
    f8 = (
        torch.tensor([0.5, 2.0]).to(torch.float8_e4m3fn)
        if r == 0
        else torch.zeros(2).to(torch.float8_e4m3fn)
    )
    g.broadcast(f8, src=0)
    out["fp8"] = f8.float().tolist()
    out["objects"] = g.allgather_object({"rank": r})
    return out


def test_torch_gloo_all_ops(ray_session: None) -> None:
    actors = [Member.remote() for _ in range(3)]
    h = sideband.create_group(actors, name="tg-ops", backend="torch_gloo", timeout_s=30)
    try:
        res = on_all(actors, _all_ops, "tg-ops")
    finally:
        h.destroy()
        for a in actors:
            ray.kill(a)
    n = 3
    for r, o in enumerate(res):
        assert o["backend"] == "torch_gloo" and o["kind"] == "gloo"
        assert o["allreduce"] == [[6.0, 6.0]] * 3
        assert o["allreduce_bf16_max"] == [3.0] * 4
        assert o["avg"] == [2.0] * 4
        assert o["bool_or"] == [True, True, False]
        assert o["numpy_prod"] == [6] * 5
        assert o["reduce"] == ([6.0, 6.0] if r == 1 else [float(r + 1)] * 2)
        assert o["broadcast_noncontig"] == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
        assert o["allgather"] == [[p, p * 10] for p in range(n)]
        assert o["gather"] == ([[0], [1], [2]] if r == 0 else None)
        assert o["scatter"] == [2.0 * r, 2.0 * r + 1]
        # row r of sum over ranks p of (arange + p)
        assert o["reduce_scatter"] == [3 * (2 * r) + 3, 3 * (2 * r + 1) + 3]
        assert o["alltoall"] == [[p * 10 + r] for p in range(n)]
        if r == 0:
            assert o["p2p"] == [1, 2]
        if r == 1:
            assert o["p2p"] == [7.0, 8.0]
        assert o["async"] == [3.0] * 3
        assert o["fp8"] == [0.5, 2.0]
        assert o["objects"] == [{"rank": p} for p in range(n)]


def _wrong_args(_self: Any, name: str) -> list[str]:
    import torch

    import sideband

    g = sideband.get_group(name)
    errs = []
    for fn in (
        lambda: g.allreduce(torch.ones(2), op=sideband.ReduceOp.BAND),
        lambda: g.allreduce(torch.ones(2, dtype=torch.int32), op=sideband.ReduceOp.AVG),
        lambda: g.allreduce(torch.ones(2).to(torch.float8_e4m3fn)),
        lambda: g.allgather(torch.ones(2), out=torch.ones(3)),
    ):
        try:
            fn()
            errs.append("no error")
        except sideband.InvalidArgumentError as e:
            errs.append(type(e).__name__)
    # The group is still usable after argument errors.
    errs.append(str(g.allreduce(torch.ones(1)).item()))
    return errs


def test_torch_gloo_argument_errors_keep_group_usable(ray_session: None) -> None:
    actors = [Member.remote() for _ in range(2)]
    h = sideband.create_group(actors, name="tg-args", backend="torch_gloo", timeout_s=30)
    try:
        res = on_all(actors, _wrong_args, "tg-args")
    finally:
        h.destroy()
        for a in actors:
            ray.kill(a)
    for errs in res:
        assert errs == ["InvalidArgumentError"] * 4 + ["2.0"]


def _allreduce_err(_self: Any, name: str, timeout_s: float) -> str:
    import torch

    import sideband

    g = sideband.get_group(name)
    try:
        g.allreduce(torch.ones(1024), timeout_s=timeout_s)
    except sideband.SidebandError as e:
        return f"{type(e).__name__}: {e}"
    return "ok"


def test_torch_gloo_timeout_names_op_group_rank(ray_session: None) -> None:
    actors = [Member.remote() for _ in range(2)]
    h = sideband.create_group(actors, name="tg-late", backend="torch_gloo", timeout_s=30)
    try:
        # Only rank 0 calls: it must give up at its deadline with sideband's error.
        msg = ray.get(actors[0].__ray_call__.remote(_allreduce_err, "tg-late", 1.0), timeout=60)
    finally:
        h.destroy()
        for a in actors:
            ray.kill(a)
    assert msg.startswith("CollectiveTimeoutError"), msg
    assert "rank 0" in msg and "tg-late" in msg and "allreduce" in msg


def _pid(_self: Any) -> int:
    return os.getpid()


def test_torch_gloo_dead_peer_raises_peer_lost(ray_session: None) -> None:
    actors = [Member.remote() for _ in range(3)]
    h = sideband.create_group(actors, name="tg-dead", backend="torch_gloo", timeout_s=60)
    try:
        refs = on_all_refs(actors[:2], _allreduce_err, "tg-dead", 60.0)
        ray.kill(actors[2])
        msgs = ray.get(refs, timeout=30)  # well before the 60 s deadline
    finally:
        h.destroy()
        for a in actors:
            ray.kill(a)
    for m in msgs:
        assert m.startswith("PeerLostError"), m
        assert "tg-dead" in m


def _join(_self: Any, name: str, backend: str) -> str:
    import sideband

    try:
        sideband.init_group(2, int(backend == "auto"), name=name, backend=backend, timeout_s=10)
    except sideband.SidebandError as e:
        return type(e).__name__ + ": " + str(e)
    return "joined"


def test_backend_mismatch_is_a_rendezvous_error(ray_session: None) -> None:
    actors = [Member.remote() for _ in range(2)]
    try:
        res = ray.get(
            [
                actors[0].__ray_call__.remote(_join, "tg-mix", "torch_gloo"),
                actors[1].__ray_call__.remote(_join, "tg-mix", "auto"),
            ],
            timeout=60,
        )
    finally:
        for a in actors:
            ray.kill(a)
    for m in res:
        assert m.startswith("RendezvousError") and "backend" in m, m


def test_backend_names() -> None:
    assert checks.backend("torch_gloo") == "torch_gloo"
    assert checks.backend("NCCL") == "torch_nccl"
    from sideband.collective.types import Backend

    assert checks.backend(Backend.TORCH_NCCL) == "torch_nccl"
    if not torch.cuda.is_available():
        assert not core.backend_available("torch_nccl")
        from sideband.collective.backends import torch_pg

        ok, why = torch_pg.available("nccl")
        assert not ok and why


# --- CPU torch tensors on the native backend (every op, bf16 and fp8) ------------------------


def _native_dtypes(_self: Any, name: str) -> dict[str, Any]:
    import torch

    import sideband

    g = sideband.get_group(name)
    r, n = g.rank, g.world_size
    out: dict[str, Any] = {}
    x = torch.full((2, 2), float(r + 1), dtype=torch.bfloat16)
    assert g.allreduce(x, op=sideband.ReduceOp.AVG) is x
    out["bf16_avg"] = x.float().tolist()
    x = torch.full((3,), float(r + 1), dtype=torch.bfloat16)
    g.reduce(x, dst=0, op=sideband.ReduceOp.PRODUCT)
    out["bf16_reduce"] = x.float().tolist()
    rs = torch.ones(n, 2, dtype=torch.bfloat16) * (r + 1)
    out["bf16_rs"] = g.reduce_scatter(rs).float().tolist()
    f8 = torch.tensor([0.5, 1.0, 2.0]).to(torch.float8_e4m3fn)
    if r != 0:
        f8.zero_()
    g.broadcast(f8, src=0)
    out["fp8_bcast"] = f8.float().tolist()
    ag = g.allgather(torch.tensor([float(r)]).to(torch.float8_e5m2))
    out["fp8_allgather"] = (ag.dtype == torch.float8_e5m2, ag.float().tolist())
    sc = g.scatter(
        torch.arange(n, dtype=torch.float32).to(torch.bfloat16).reshape(n, 1) if r == 0 else None
    )
    out["bf16_scatter"] = (sc.dtype == torch.bfloat16, sc.float().tolist())
    try:
        g.allreduce(torch.ones(2).to(torch.float8_e4m3fn))
        out["fp8_reduce"] = "no error"
    except sideband.InvalidArgumentError as e:
        out["fp8_reduce"] = str(e)
    return out


def test_native_torch_bf16_fp8(ray_session: None) -> None:
    actors = [Member.remote() for _ in range(2)]
    h = sideband.create_group(actors, name="nat-bf16", timeout_s=30)
    try:
        res = on_all(actors, _native_dtypes, "nat-bf16")
    finally:
        h.destroy()
        for a in actors:
            ray.kill(a)
    for r, o in enumerate(res):
        assert o["bf16_avg"] == [[1.5, 1.5]] * 2
        assert o["bf16_reduce"] == ([2.0] * 3 if r == 0 else [float(r + 1)] * 3)
        assert o["bf16_rs"] == [3.0, 3.0]
        assert o["fp8_bcast"] == [0.5, 1.0, 2.0]
        assert o["fp8_allgather"] == (True, [[0.0], [1.0]])
        assert o["bf16_scatter"] == (True, [float(r)])
        assert "fp8" in o["fp8_reduce"] and "NCCL" in o["fp8_reduce"]


def _dropin_bf16(_self: Any, name: str) -> dict[str, Any]:
    import torch

    import sideband.collective as col

    r = col.get_group_handle(name).rank
    out: dict[str, Any] = {}
    t = torch.full((2,), float(r + 1), dtype=torch.bfloat16)
    col.allreduce(t, group_name=name)
    out["allreduce"] = t.float().tolist()
    lst = [torch.zeros(2, dtype=torch.bfloat16) for _ in range(2)]
    col.allgather(lst, torch.full((2,), float(r), dtype=torch.bfloat16), group_name=name)
    out["allgather"] = [x.float().tolist() for x in lst]
    o = torch.zeros(2, dtype=torch.bfloat16)
    col.reducescatter(o, [torch.ones(2, dtype=torch.bfloat16) * (p + 1) for p in range(2)], name)
    out["reducescatter"] = o.float().tolist()
    return out


def _dropin_destroy(_self: Any, name: str) -> None:
    import sideband.collective as col

    col.destroy_collective_group(name)


@pytest.mark.parametrize("backend", ["gloo", "torch_gloo"])
def test_dropin_torch_bf16(ray_session: None, backend: str) -> None:
    import sideband.collective as col

    actors = [Member.remote() for _ in range(2)]
    name = f"di-bf16-{backend}"
    col.create_collective_group(actors, 2, [0, 1], backend=backend, group_name=name)
    try:
        res = on_all(actors, _dropin_bf16, name)
        on_all(actors, _dropin_destroy, name)
    finally:
        for a in actors:
            ray.kill(a)
    for r, o in enumerate(res):
        assert o["allreduce"] == [3.0, 3.0]
        assert o["allgather"] == [[0.0, 0.0], [1.0, 1.0]]
        assert o["reducescatter"] == [2.0 * (r + 1)] * 2


def test_gpu_paths_import_without_cuda() -> None:
    # GPU-only modules import and answer without a GPU.
    from sideband.collective.backends import cuda, ipc, torch_pg  # noqa: F401
    from sideband.collective.runtime import arrays

    assert not arrays.is_cuda(np.ones(2))
    assert not arrays.is_cuda(torch.ones(2))
    assert isinstance(ipc.usable(), bool)
    assert torch_pg.available("gloo")[0]


def test_gpu_plan_and_nccl_checks_without_gpu() -> None:
    from sideband.collective.backends import cuda, torch_pg
    from sideband.collective.runtime import reduce as red

    p = cuda.Plan(uuids=["a", "a", "b"], hosts=["h", "h", "h"], nccl=False)
    assert p.same_gpu(0, 1) and not p.same_gpu(1, 2) and not p.all_same_gpu()
    assert cuda.Plan(["a", "a"], ["h", "i"], False).same_gpu(0, 1) is False  # other host
    # One table for every backend (runtime/reduce.py), checked at the edge.
    with pytest.raises(sideband.InvalidArgumentError, match="bitwise"):
        red.check(sideband.ReduceOp.BXOR, "int32", "nccl", "t")
    with pytest.raises(sideband.InvalidArgumentError, match="bitwise"):
        red.check(sideband.ReduceOp.BXOR, "bool", "nccl", "t")
    # bool or/and become MAX/MIN on uint8, which NCCL has
    red.check(sideband.ReduceOp.SUM, "bool", "nccl", "t")
    if not torch_pg.nccl_fp8_reductions():
        with pytest.raises(sideband.InvalidArgumentError, match="2.24"):
            red.check(sideband.ReduceOp.SUM, "float8_e4m3fn", "nccl", "t", nccl_fp8=False)
    with pytest.raises(sideband.InvalidArgumentError, match="2.24"):
        red.check(sideband.ReduceOp.SUM, "float8_e4m3fn", "gloo", "t")
    with pytest.raises(sideband.InvalidArgumentError, match="2.24"):
        red.check(sideband.ReduceOp.SUM, "float8_e4m3fn", "native", "t")
