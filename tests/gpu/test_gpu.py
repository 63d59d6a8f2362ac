"""CUDA tensors in sideband groups, on a machine with (at least) one GPU.

- NCCL with world size 1 (NCCL cannot put two ranks on one GPU), auto and torch_nccl;
- CUDA IPC between 2 actors on the same GPU (send/recv, broadcast), mappings cached;
- the native fallback staged through pinned memory with 2 and 4 actors on one GPU.

Skipped cleanly without a GPU (``-m gpu`` selects them; scripts/gpu_check.sh runs them).
"""

from __future__ import annotations

from typing import Any

import pytest
import ray
from gpu_helpers import HAS_CUDA, GpuMember

import sideband

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]


def _on_all(actors: list[Any], fn: Any, *args: Any, timeout: float = 180) -> list[Any]:
    return ray.get([a.__ray_call__.remote(fn, *args) for a in actors], timeout=timeout)


def _members(n: int) -> list[Any]:
    actors = [GpuMember.remote() for _ in range(n)]
    ray.get([a.ready.remote() for a in actors], timeout=120)
    return actors


def _end(h: Any, actors: list[Any]) -> None:
    try:
        h.destroy()
    finally:
        for a in actors:
            ray.kill(a)


# --- NCCL, world size 1 ------------------------------------------------------------------------


def _nccl_ops(_self: Any, name: str) -> dict[str, Any]:
    import torch

    import sideband

    g = sideband.get_group(name)
    dev = torch.device("cuda", 0)
    out: dict[str, Any] = {}
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):  # ops follow the tensor's current stream
        x = torch.arange(6, device=dev, dtype=torch.float32).reshape(2, 3)
        assert g.allreduce(x) is x
        out["allreduce"] = x.cpu().tolist()
    out["backend_used"] = g._torch.kind if g._torch is not None else g._cuda.nccl.kind
    b = torch.full((4,), 1.5, device=dev, dtype=torch.bfloat16)
    g.allreduce(b, op=sideband.ReduceOp.MAX)
    out["bf16"] = b.float().cpu().tolist()
    a = torch.full((3,), 4.0, device=dev)
    g.allreduce(a, op=sideband.ReduceOp.AVG)
    out["avg"] = a.cpu().tolist()
    nc = torch.arange(6, device=dev, dtype=torch.float32).reshape(2, 3).t()
    g.broadcast(nc, src=0)
    out["bcast_noncontig"] = nc.cpu().tolist()
    out["allgather"] = g.allgather(torch.ones(2, device=dev)).cpu().tolist()
    out["gather"] = g.gather(torch.ones(2, device=dev, dtype=torch.int32)).cpu().tolist()
    out["scatter"] = g.scatter(torch.ones(1, 2, device=dev)).cpu().tolist()
    out["reduce_scatter"] = g.reduce_scatter(torch.ones(1, 3, device=dev)).cpu().tolist()
    out["alltoall"] = g.alltoall(torch.ones(1, 2, device=dev)).cpu().tolist()
    r = torch.full((2,), 3.0, device=dev)
    g.reduce(r, dst=0)
    out["reduce"] = r.cpu().tolist()
    f8 = torch.tensor([0.5, 2.0], device=dev).to(torch.float8_e4m3fn)
    g.broadcast(f8, src=0)
    out["fp8_bcast"] = f8.float().cpu().tolist()
    w = g.allreduce(torch.ones(8, device=dev), async_op=True)
    out["async"] = w.wait().cpu().tolist()
    try:
        g.allreduce(torch.ones(2, device=dev), op=sideband.ReduceOp.BXOR)
        out["bxor"] = "no error"
    except sideband.InvalidArgumentError as e:
        out["bxor"] = type(e).__name__
    return out


@pytest.mark.parametrize("backend", ["auto", "torch_nccl"])
def test_nccl_world_size_1(gpu_ray: None, backend: str) -> None:
    actors = _members(1)
    h = sideband.create_group(actors, name=f"nccl1-{backend}", backend=backend, timeout_s=60)
    try:
        (o,) = _on_all(actors, _nccl_ops, f"nccl1-{backend}")
    finally:
        _end(h, actors)
    print(o)
    assert o["backend_used"] == "nccl"
    assert o["allreduce"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert o["bf16"] == [1.5] * 4
    assert o["avg"] == [4.0] * 3
    assert o["bcast_noncontig"] == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    assert o["allgather"] == [[1.0, 1.0]]
    assert o["gather"] == [[1, 1]]
    assert o["scatter"] == [1.0, 1.0]
    assert o["reduce_scatter"] == [1.0, 1.0, 1.0]
    assert o["alltoall"] == [[1.0, 1.0]]
    assert o["reduce"] == [3.0, 3.0]
    assert o["fp8_bcast"] == [0.5, 2.0]
    assert o["async"] == [1.0] * 8
    assert o["bxor"] == "InvalidArgumentError"


def _fp8_sum(_self: Any, name: str) -> str:
    import torch

    import sideband
    from sideband.collective.backends import torch_pg as torch_backend

    g = sideband.get_group(name)
    x = torch.tensor([0.5, 1.0], device="cuda").to(torch.float8_e4m3fn)
    try:
        g.allreduce(x)
    except sideband.InvalidArgumentError as e:
        return f"refused (NCCL {torch_backend.nccl_version()}): {e}"
    except sideband.SidebandError as e:  # torch itself refused: sideband's checks let it through
        return f"torch refused (NCCL {torch_backend.nccl_version()}): {type(e).__name__}: {e}"
    return f"summed (NCCL {torch_backend.nccl_version()}): {x.float().cpu().tolist()}"


def test_nccl_fp8_sum_runs_or_is_refused_clearly(gpu_ray: None) -> None:
    actors = _members(1)
    h = sideband.create_group(actors, name="nccl-fp8", timeout_s=60)
    try:
        (msg,) = _on_all(actors, _fp8_sum, "nccl-fp8")
    finally:
        _end(h, actors)
    print(msg)
    # Either NCCL reduced it, or sideband refused before anything ran (a clear argument error).
    assert msg.startswith("summed") and "[0.5, 1.0]" in msg or "NCCL >= 2.24" in msg, msg


# --- CUDA IPC between 2 actors on one GPU -----------------------------------------------------


def _ipc(_self: Any, name: str) -> dict[str, Any]:
    import torch

    import sideband

    g = sideband.get_group(name)
    r = g.rank
    dev = torch.device("cuda", 0)
    out: dict[str, Any] = {}
    buf = torch.empty(1 << 20, device=dev)
    for i in range(5):  # the same buffer: the mapping is opened once
        if r == 0:
            buf.fill_(float(i))
            g.send(buf, dst=1, tag=i)
        else:
            g.recv(buf, src=0, tag=i)
            out.setdefault("recv", []).append(float(buf[-1].item()))
    nc = torch.zeros(3, 4, device=dev, dtype=torch.bfloat16).t()  # non-contiguous, bf16
    if r == 0:
        g.send(torch.arange(12, device=dev).to(torch.bfloat16).reshape(3, 4).t(), dst=1)
    else:
        g.recv(nc, src=0)
        out["noncontig"] = nc.float().cpu().tolist()
    x = torch.full((1000,), 7.0 if r == 0 else 0.0, device=dev)
    g.broadcast(x, src=0)
    out["bcast"] = float(x.sum().item())
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        y = torch.full((256,), 3.0 if r == 1 else 0.0, device=dev) * 2
        g.broadcast(y, src=1, async_op=True).wait()
    out["bcast_stream"] = float(y.sum().item())
    st = g._cuda
    out["ipc_used"] = st.ipc is not None
    out["mappings"] = len(st.ipc.mappings) if st.ipc else -1
    out["plan_nccl"] = None if st.plan is None else st.plan.nccl
    return out


def test_cuda_ipc_two_actors_same_gpu(gpu_ray: None) -> None:
    actors = _members(2)
    h = sideband.create_group(actors, name="ipc2", timeout_s=60)
    try:
        res = _on_all(actors, _ipc, "ipc2")
    finally:
        _end(h, actors)
    print(res)
    assert res[1]["recv"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert res[1]["noncontig"] == [[float(4 * i + j) for i in range(3)] for j in range(4)]
    for o in res:
        assert o["ipc_used"]
        assert o["bcast"] == 7000.0
        assert o["bcast_stream"] == 1536.0
        assert o["plan_nccl"] is False  # two ranks on one GPU: no NCCL
    assert 1 <= res[1]["mappings"] <= 3  # send buffer, the bf16 temporary, broadcast sources


# --- staged fallback (2 and 4 actors on one GPU) ----------------------------------------------


def _staged(_self: Any, name: str) -> dict[str, Any]:
    import os

    import torch

    import sideband

    g = sideband.get_group(name)
    r, n = g.rank, g.world_size
    dev = torch.device("cuda", 0)
    out: dict[str, Any] = {}
    x = torch.full((2, 3), float(r + 1), device=dev)
    assert g.allreduce(x) is x
    out["allreduce"] = x.cpu().tolist()
    b = torch.full((5,), float(r + 1), device=dev, dtype=torch.bfloat16)
    g.allreduce(b, op=sideband.ReduceOp.AVG)
    out["bf16_avg"] = b.float().cpu().tolist()
    ag = g.allgather(torch.full((2,), float(r), device=dev))
    out["allgather"] = (ag.device.type, ag.cpu().tolist())
    rs = g.reduce_scatter(torch.ones(n, 2, device=dev) * (r + 1))
    out["reduce_scatter"] = rs.cpu().tolist()
    at = g.alltoall(torch.tensor([[10.0 * r + p] for p in range(n)], device=dev))
    out["alltoall"] = at.cpu().tolist()
    ga = g.gather(torch.full((1,), float(r), device=dev), dst=n - 1)
    out["gather"] = None if ga is None else ga.cpu().tolist()
    sc_out = torch.empty(2, device=dev)
    src = torch.arange(2 * n, dtype=torch.float32, device=dev).reshape(n, 2) if r == 0 else None
    out["scatter"] = g.scatter(src, src=0, out=sc_out).cpu().tolist()
    red = torch.full((3,), float(r + 1), device=dev)
    g.reduce(red, dst=0, op=sideband.ReduceOp.MAX)
    out["reduce"] = red.cpu().tolist()
    bc = torch.full((4,), float(r), device=dev)
    g.broadcast(bc, src=n - 1)
    out["bcast"] = bc.cpu().tolist()
    if r == 0:
        g.send(torch.full((3,), 9.0, device=dev), dst=1)
    elif r == 1:
        rv = torch.zeros(3, device=dev)
        g.recv(rv, src=0)
        out["p2p"] = rv.cpu().tolist()
    # The same without CUDA IPC (every rank turns it off alike): staged send/recv and broadcast.
    os.environ["SIDEBAND_CUDA_IPC"] = "0"
    try:
        if r == 0:
            g.send(torch.full((1 << 16,), 5.0, device=dev, dtype=torch.bfloat16), dst=1, tag=1)
        elif r == 1:
            rv = torch.zeros(1 << 16, device=dev, dtype=torch.bfloat16)
            g.recv(rv, src=0, tag=1)
            out["p2p_staged"] = float(rv.float().sum().item())
        bs = torch.full((1 << 16,), float(r), device=dev).reshape(256, 256).t()
        g.broadcast(bs, src=n - 1)
        out["bcast_staged"] = float(bs.sum().item())
    finally:
        del os.environ["SIDEBAND_CUDA_IPC"]
    try:
        import cupy

        c = cupy.full((4,), r + 1, dtype=cupy.float32)
        g.allreduce(c)
        out["cupy"] = c.get().tolist()
    except ImportError:
        out["cupy"] = "no cupy"
    import sideband.collective as col

    d = torch.full((2,), float(r + 1), device=dev)
    col.allreduce(d, group_name=name)
    out["dropin"] = d.cpu().tolist()
    out["plan_nccl"] = g._cuda.plan.nccl
    out["pinned"] = len(g._cuda.pinned)
    return out


@pytest.mark.parametrize("n", [2, 4])
def test_staged_fallback_shared_gpu(gpu_ray: None, n: int) -> None:
    actors = _members(n)
    name = f"staged{n}"
    h = sideband.create_group(actors, name=name, timeout_s=90)
    try:
        res = _on_all(actors, _staged, name)
    finally:
        _end(h, actors)
    total = n * (n + 1) / 2
    for r, o in enumerate(res):
        assert o["allreduce"] == [[total] * 3] * 2
        assert o["bf16_avg"] == [total / n] * 5
        assert o["allgather"] == ("cuda", [[float(p)] * 2 for p in range(n)])
        assert o["reduce_scatter"] == [total, total]
        assert o["alltoall"] == [[10.0 * p + r] for p in range(n)]
        assert o["gather"] == ([[float(p)] for p in range(n)] if r == n - 1 else None)
        assert o["scatter"] == [2.0 * r, 2.0 * r + 1]
        assert o["reduce"] == ([float(n)] * 3 if r == 0 else [float(r + 1)] * 3)
        assert o["bcast"] == [float(n - 1)] * 4
        if r == 1:
            assert o["p2p"] == [9.0] * 3
            assert o["p2p_staged"] == 5.0 * (1 << 16)
        assert o["bcast_staged"] == float(n - 1) * (1 << 16)
        assert o["cupy"] in ("no cupy", [total] * 4)
        assert o["dropin"] == [total] * 2
        assert o["plan_nccl"] is False
        assert o["pinned"] >= 1


def _nccl_shared(_self: Any, name: str) -> str:
    import torch

    import sideband

    g = sideband.get_group(name)
    try:
        g.allreduce(torch.ones(2, device="cuda"))
    except sideband.BackendUnavailableError as e:
        return str(e)
    return "no error"


def test_torch_nccl_refuses_shared_gpu(gpu_ray: None) -> None:
    actors = _members(2)
    h = sideband.create_group(actors, name="nccl-shared", backend="torch_nccl", timeout_s=60)
    try:
        res = _on_all(actors, _nccl_shared, "nccl-shared")
    finally:
        _end(h, actors)
    for m in res:
        assert "share a GPU" in m and "backend='auto'" in m, m
