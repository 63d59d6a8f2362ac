"""Gang: N Ray actors placed together, ranked, set up for one library, and watched as one."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from sideband.errors import GangError, InvalidArgumentError
from sideband.gang import registry
from sideband.gang.contract import GangContext
from sideband.gang.failures import Failure
from sideband.gang.forming import Former
from sideband.gang.options import normalise
from sideband.gang.resources import Resources, finalize
from sideband.gang.setup import Setup, resolve_setup

log = logging.getLogger(__name__)


class Gang(Former):
    """``num_workers`` Ray actors in one placement group, ranked, with a library set up.

    ``gang.run(fn)`` runs ``fn`` on every member and returns the results in rank order; if any
    member dies or raises, it raises :class:`sideband.GangError` naming the rank, the node and
    the remote traceback, and stops the other members. Use it as a context manager, or call
    :meth:`shutdown`.

    Args:
        num_workers: number of members (or a ``ray.train.ScalingConfig``).
        resources_per_worker: Ray resources of each member's bundle; default ``{"CPU": 1}``.
            All-zero (e.g. ``{"CPU": 0}``) reserves a token 0.0001 CPU (Ray refuses empty bundles).
        strategy: placement group strategy: PACK, SPREAD, STRICT_PACK or STRICT_SPREAD.
        setup: "torch", "mpi", "jax", "spark", "xgboost", "dask", "horovod", "env" (the default:
            env contract only), a registered name, or a :class:`sideband.gang.Setup` subclass.
        env: extra environment variables for every member, set before its process starts.
        timeout_s: deadline for placement, member start and library setup.
        max_restarts: how many times ``run`` re-forms the whole gang (new placement group, fresh
            rendezvous) and reruns ``fn`` after a failure. ``fn`` finds the attempt number and the
            last :func:`sideband.gang.save_checkpoint` value in :func:`sideband.gang.context`.
        name: the name in ``sideband status``; members are named ``<name>-rank<r>`` in Ray's
            dashboard and log prefixes. Default a random "gang-xxxxxxxx".
        setup_options: extra options for the setup (e.g. ``{"backend": "gloo"}`` for torch).
        teardown_timeout_s: how long shutdown waits for the library teardown before killing.
        fail_fast: refuse at once a gang no alive node could hold (turn off on autoscaling clusters).
        use_gpu, placement_strategy, scaling_config: Ray Train's words (``use_gpu`` adds one GPU
            per member, ``placement_strategy`` is ``strategy``, a ``ScalingConfig`` gives all).
        actor_options: passed to every member (``runtime_env``, ``max_concurrency``, ...).
        progress: print each forming step and its duration (default: when stderr is a terminal).
    """

    def __init__(
        self,
        num_workers: Any = None,
        resources_per_worker: dict[str, float] | None = None,
        strategy: str | None = None,
        setup: str | type[Setup] | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = 120.0,
        *,
        max_restarts: int = 0,
        name: str | None = None,
        setup_options: dict[str, Any] | None = None,
        teardown_timeout_s: float = 10.0,
        fail_fast: bool = True,
        use_gpu: bool | None = None,
        placement_strategy: str | None = None,
        scaling_config: Any = None,
        actor_options: dict[str, Any] | None = None,
        progress: bool | None = None,
    ) -> None:
        opts = normalise(
            num_workers,
            resources_per_worker,
            strategy,
            env,
            use_gpu=use_gpu,
            placement_strategy=placement_strategy,
            scaling_config=scaling_config,
            actor_options=actor_options,
        )
        if max_restarts < 0:
            raise InvalidArgumentError(f"max_restarts must be >= 0, got {max_restarts}")
        self.name = name or f"gang-{uuid.uuid4().hex[:8]}"
        self.num_workers = opts.num_workers
        self.strategy = opts.strategy
        self.timeout_s = float(timeout_s)
        self.max_restarts = max_restarts
        self.teardown_timeout_s = float(teardown_timeout_s)
        self._setup_cls = resolve_setup(setup)
        self._setup_options = dict(setup_options or {})
        self._bundle = opts.bundle
        self._actor_options = opts.actor_options
        self._fail_fast = fail_fast
        self._progress = progress
        self._state = "new"
        self._attempt = 0
        self._generation = 0
        self._infos: list[dict[str, Any]] = []
        self._ctxs: list[GangContext] = []
        self._failure: GangError | None = None
        self._watch_root: Failure | None = None
        #: seconds each step of the last formation took (placement, start, setup).
        self.formation_times: dict[str, float] = {}
        self._created_at = time.time()
        self._lock = threading.RLock()
        self._res = Resources()
        # A gang dropped without shutdown() still frees its actors and placement group.
        self._finalizer = weakref.finalize(self, finalize, self._res, self.name)

        import ray

        if not ray.is_initialized():
            ray.init()
        try:
            self._form()
        except BaseException:
            # No Gang object reaches the caller: leave nothing behind, not even a registry entry.
            self._finalizer()
            self._state = "shutdown"
            raise

    # --- public API ----------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """new, forming, ready, running, failed or shutdown."""
        return self._state

    @property
    def world_size(self) -> int:
        return self.num_workers

    @property
    def actors(self) -> list[Any]:
        """Member actor handles in rank order (empty once shut down or failed)."""
        return list(self._res.members)

    @property
    def members(self) -> list[dict[str, Any]]:
        """Rank, node (address), node id, pid, actor id, name and GPU ids of every member."""
        return [{"rank": r, "node": i["node_ip"], **i} for r, i in enumerate(self._infos)]

    @property
    def contexts(self) -> list[GangContext]:
        """Every member's context, in rank order."""
        return list(self._ctxs)

    @property
    def failure(self) -> GangError | None:
        """The error that failed the gang last (also one seen between runs), else None."""
        return self._failure

    @property
    def client(self) -> Any:
        """The library's driver-side handle (Spark: a SparkSession, Dask: a Client), else None.

        Raises the gang's failure if it failed since it formed."""
        with self._lock:
            if self._state == "failed" and self._failure is not None:
                raise self._failure
            setup = self._res.driver_setup
            return setup.client() if setup is not None else None

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Run ``fn(*args, **kwargs)`` on every member; results in rank order.

        Raises GangError (naming rank, node and remote traceback) as soon as a member dies or
        raises; the other members are stopped. With ``max_restarts``, re-forms and reruns first.
        """
        restarts = 0
        while True:
            refs = self.run_async(fn, *args, **kwargs)
            self._set_state("running")
            try:
                results = self._gather(refs, list(range(self.num_workers)), None, "fn")
            except KeyboardInterrupt:
                self._abort()  # an interrupted driver must not leave members in a collective
                raise
            except GangError as err:
                self._abort()
                if restarts >= self.max_restarts:
                    raise
                restarts += 1
                log.warning(
                    "gang %s: restarting (%d of %d) after: %s",
                    self.name,
                    restarts,
                    self.max_restarts,
                    str(err).splitlines()[0],
                )
                continue
            self._set_state("ready")
            return results

    def run_async(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Start ``fn`` on every member; ObjectRefs in rank order (no failure watch: use run)."""
        self._ensure_formed()
        return [m.run.remote(fn, args, kwargs) for m in self._res.members]

    def execute_single(self, rank: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on one member and return its result.

        If the member dies the gang is stopped (it re-forms on the next call); if ``fn`` raises,
        GangError is raised and the gang stays up.
        """
        if not 0 <= rank < self.num_workers:
            raise InvalidArgumentError(f"rank must be in [0, {self.num_workers}), got {rank}")
        self._ensure_formed()
        ref = self._res.members[rank].run.remote(fn, args, kwargs)
        try:
            return self._gather([ref], [rank], None, "fn")[0]
        except GangError as err:
            if getattr(err, "died", False):
                self._abort()
            raise

    def shutdown(self) -> None:
        """Tear the library down (bounded by teardown_timeout_s), then kill the members."""
        import ray

        with self._lock:
            if self._state == "shutdown":
                return
            was = self._state
            self._state = "shutdown"  # the watch ignores what the teardown ends
            members = list(self._res.members)
            setup = self._res.driver_setup
            if setup is not None:
                try:
                    setup.stop()  # the driver-side client first, while its servers still run
                except Exception as e:
                    log.warning("gang %s: driver-side stop failed: %s", self.name, e)
            if members and was in ("ready", "running") and ray.is_initialized():
                refs = [m.teardown.remote(self.teardown_timeout_s) for m in members]
                # Every member tears down at once (MPI_Finalize is collective); never wait longer.
                ray.wait(refs, num_returns=len(refs), timeout=self.teardown_timeout_s + 2.0)
            self._finalizer()

    def __enter__(self) -> Gang:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"Gang({self.name!r}, {self.num_workers} x {self._setup_cls.name}, {self._state})"

    # --- internals -----------------------------------------------------------------------------

    def _abort(self) -> None:
        """Stop every member now (a hung collective cannot be interrupted more gently)."""
        with self._lock:
            self._res.release()
            if self._state != "shutdown":
                self._set_state("failed")

    def _set_state(self, state: str, **extra: Any) -> None:
        self._state = state
        import ray

        if not ray.is_initialized():
            return
        try:
            entry: dict[str, Any] = {
                "name": self.name,
                "state": state,
                "setup": self._setup_cls.name,
                "world_size": self.num_workers,
                "strategy": self.strategy,
                "attempt": self._attempt,
                "job_id": ray.get_runtime_context().get_job_id(),
                "driver_pid": os.getpid(),
                "created_at": self._created_at,
                "members": registry.member_entries(self._infos) if self._res.members else [],
            }
            if self._ctxs:
                entry["master"] = f"{self._ctxs[0].master_addr}:{self._ctxs[0].master_port}"
            entry.update(extra)
            registry.publish(entry)
        except Exception as e:  # the registry is for humans; never fail a gang over it
            log.debug("gang %s: registry update failed: %s", self.name, e)
