"""Warm workers for the next gang: idle Ray worker processes started ahead of time.

A gang member is a Ray actor, and an actor needs a worker process. When the node has an idle one,
Ray hands it over in milliseconds; otherwise it starts one (Python, ``import ray``, the core
worker: about a CPU-second each here, and at most one per core at a time). Ray keeps such idle
workers only after ``ray.init`` (one per core) and a gang's members use them up: they exit with
the gang. :func:`prestart` asks this node's raylet for more, through the same request Ray's own
prestart uses (``NodeManagerService.PrestartWorkers``), and waits until they have registered.

This talks to Ray's raylet directly (its gRPC service and generated messages are not public API),
so every Ray error becomes a :class:`~sideband.errors.GangSetupError` naming the Ray version.
"""

from __future__ import annotations

import time
from typing import Any

from sideband.errors import GangSetupError, InvalidArgumentError

_NIL_ACTOR = b"\xff" * 16
_NIL_JOB = b"\xff" * 4  # Ray's own prestart after ray.init: workers not yet bound to a job
_WORKER = 0  # ray.rpc.WorkerType.WORKER: a task or actor worker, not a driver or spill worker


def prestart(num_workers: int, *, keep_alive_s: float = 300.0, timeout_s: float = 60.0) -> int:
    """Start ``num_workers`` idle Ray workers on this node; return how many idle ones it holds.

    Call it before forming a gang, while the program does something else (loading data,
    building a model), or after a gang ended to make the next one start fast: the members of a
    gang formed on this node then skip Ray's worker start. Returns once the new workers have
    registered, or raises :class:`GangSetupError` after ``timeout_s``. Idle workers already
    there do not count towards ``num_workers`` (one may carry another runtime env). Ray keeps
    workers started this way for ``keep_alive_s`` even when idle, then lets its usual idle limit
    (one per CPU) reap them.

    The workers carry this job's runtime env: they serve members created without ``env`` or
    ``actor_options={"runtime_env": ...}`` (members with a runtime env of their own need a process
    started with it, and Ray starts those itself).
    """
    if num_workers < 0 or keep_alive_s < 0 or timeout_s <= 0:
        raise InvalidArgumentError(
            f"prestart needs num_workers >= 0, keep_alive_s >= 0 and timeout_s > 0; got "
            f"{num_workers}, {keep_alive_s}, {timeout_s}"
        )
    import ray

    if not ray.is_initialized():
        ray.init()
    raylet = _Raylet()
    deadline = time.monotonic() + timeout_s
    have = base = raylet.idle()
    want = base + num_workers
    while have < want:
        # The raylet starts at most its startup concurrency (one per core) per request and drops
        # the rest, so ask again once those registered.
        raylet.start(want - have, keep_alive_s)
        if not raylet.wait_more(have, deadline):
            raise GangSetupError(
                f"prestart: {have - base} of {num_workers} new idle Ray workers "
                f"after {timeout_s:g}s on this "
                f"node (Ray {ray.__version__}); raise timeout_s, or form the gang without them "
                "(Ray then starts its members' workers itself)"
            )
        have = raylet.idle()
    return have


class _Raylet:
    """This node's raylet, over its gRPC service."""

    def __init__(self) -> None:
        import ray

        try:
            from ray._private.grpc_utils import init_grpc_channel
            from ray.core.generated import (
                common_pb2,
                node_manager_pb2,
                node_manager_pb2_grpc,
                runtime_environment_pb2,
            )

            # Generated messages and Ray's worker internals have no type stubs.
            worker: Any = ray._private.worker.global_worker
            common: Any = common_pb2
            renv: Any = runtime_environment_pb2
            node = worker.node
            channel = init_grpc_channel(f"{node.node_ip_address}:{node.node_manager_port}")
            self._stub = node_manager_pb2_grpc.NodeManagerServiceStub(channel)
            self._pb: Any = node_manager_pb2
            self._lang = common.PYTHON
            self._env = renv.RuntimeEnvInfo(
                serialized_runtime_env=worker.core_worker.get_current_runtime_env() or "{}"
            )
            self._job = worker.current_job_id.binary()
        except Exception as e:
            raise _unsupported(e) from e

    def start(self, n: int, keep_alive_s: float) -> None:
        req = self._pb.PrestartWorkersRequest(
            language=self._lang,
            job_id=self._job,
            runtime_env_info=self._env,
            keep_alive_duration_secs=int(keep_alive_s),
            num_workers=n,
        )
        self._call(self._stub.PrestartWorkers, req)

    def idle(self) -> int:
        """Idle task/actor workers of this node: no actor, nothing running or queued."""
        reply = self._call(
            self._stub.GetNodeStats, self._pb.GetNodeStatsRequest(include_memory_info=False)
        )
        return sum(
            1
            for s in reply.core_workers_stats
            if s.worker_type == _WORKER
            and s.actor_id == _NIL_ACTOR
            and s.job_id in (self._job, _NIL_JOB)
            and s.num_running_tasks == 0
            and s.num_pending_tasks == 0
        )

    def wait_more(self, have: int, deadline: float) -> bool:
        """Until more than ``have`` workers are idle, or the deadline."""
        while time.monotonic() < deadline:
            if self.idle() > have:
                return True
            time.sleep(0.05)
        return False

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=10.0)
        except Exception as e:
            raise _unsupported(e) from e


def _unsupported(e: BaseException) -> GangSetupError:
    import ray

    try:  # a gRPC error's own str() is a multi-line dump
        why = f"{e.code().name}: {e.details()}"  # type: ignore[attr-defined]
    except Exception:
        why = f"{type(e).__name__}: {e}"
    return GangSetupError(
        f"prestart: this node's raylet refused the request ({why}); it uses "
        f"Ray's internal raylet service, checked against Ray 2.60 (this is Ray {ray.__version__}). "
        "Form the gang without prestart: Ray starts its members' workers itself"
    )
