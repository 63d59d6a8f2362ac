"""Gang: N Ray actors placed together, ranked, set up for one library, and watched as one."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sideband.errors import GangError, GangMemberError, GangSetupError, InvalidArgumentError
from sideband.gang import checkpoint as _checkpoint
from sideband.gang import registry
from sideband.gang.contract import GangContext
from sideband.gang.member import GangMember
from sideband.gang.placement import (
    STRATEGIES,
    actor_options,
    bundle_for,
    check_feasible,
    order_members,
)
from sideband.gang.setup import GangPlan, Setup, is_addr_in_use, resolve_setup

log = logging.getLogger(__name__)

# After the first failure, how long to keep collecting the others: a dead rank usually makes its
# peers raise "connection closed" a moment later, and the report should name the root cause.
_FAILURE_GRACE_S = 0.5
_RENDEZVOUS_TRIES = 3
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class _Failure:
    rank: int
    node: str
    message: str
    died: bool
    remote_traceback: str | None = None


@dataclass
class _Resources:
    """Everything a gang can leave behind; released by shutdown, a failure, or garbage collection."""

    members: list[Any] = field(default_factory=list)
    pg: Any = None
    driver_setup: Setup | None = None

    def release(self) -> None:
        import ray

        members, self.members = self.members, []
        pg, self.pg = self.pg, None
        driver_setup, self.driver_setup = self.driver_setup, None
        if ray.is_initialized():
            for m in members:
                try:
                    ray.kill(m, no_restart=True)
                except Exception:  # already dead
                    pass
            if pg is not None:
                try:
                    from ray.util.placement_group import remove_placement_group

                    remove_placement_group(pg)
                except Exception:
                    pass
        if driver_setup is not None:
            driver_setup.release()


def _finalize(res: _Resources, name: str) -> None:
    import ray

    res.release()
    if ray.is_initialized():
        try:
            registry.remove(name)
            _checkpoint.delete(name)
        except Exception:
            pass


class Gang:
    """``num_workers`` Ray actors in one placement group, ranked, with a library set up.

    ``gang.run(fn)`` runs ``fn`` on every member and returns the results in rank order; if any
    member dies or raises, it raises :class:`sideband.GangError` naming the rank, the node and
    the remote traceback, and stops the other members. Use it as a context manager, or call
    :meth:`shutdown`.

    Args:
        num_workers: number of members.
        resources_per_worker: Ray resources of each member's bundle; default ``{"CPU": 1}``.
            All-zero (e.g. ``{"CPU": 0}``) reserves a token 0.0001 CPU (Ray refuses empty bundles).
        strategy: placement group strategy: PACK, SPREAD, STRICT_PACK or STRICT_SPREAD.
        setup: "torch", "mpi", "jax", "env" (the default: env contract only), a registered name,
            or a :class:`sideband.gang.Setup` subclass.
        env: extra environment variables for every member, set before its process starts.
        timeout_s: deadline for placement, member start and library setup.
        max_restarts: how many times ``run`` re-forms the whole gang (new placement group, fresh
            rendezvous) and reruns ``fn`` after a failure. ``fn`` finds the attempt number and the
            last :func:`sideband.gang.save_checkpoint` value in :func:`sideband.gang.context`.
        name: the name in ``sideband status``; default a random "gang-xxxxxxxx".
        setup_options: extra options for the setup (e.g. ``{"backend": "gloo"}`` for torch).
        teardown_timeout_s: how long shutdown waits for the library teardown before killing.
        fail_fast: refuse at once a gang no alive node could hold (turn off on autoscaling clusters).
    """

    def __init__(
        self,
        num_workers: int,
        resources_per_worker: dict[str, float] | None = None,
        strategy: str = "PACK",
        setup: str | type[Setup] | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = 120.0,
        *,
        max_restarts: int = 0,
        name: str | None = None,
        setup_options: dict[str, Any] | None = None,
        teardown_timeout_s: float = 10.0,
        fail_fast: bool = True,
    ) -> None:
        if not isinstance(num_workers, int) or num_workers < 1:
            raise InvalidArgumentError(f"num_workers must be a positive int, got {num_workers!r}")
        if strategy not in STRATEGIES:
            raise InvalidArgumentError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if max_restarts < 0:
            raise InvalidArgumentError(f"max_restarts must be >= 0, got {max_restarts}")
        self.name = name or f"gang-{uuid.uuid4().hex[:8]}"
        self.num_workers = num_workers
        self.strategy = strategy
        self.timeout_s = float(timeout_s)
        self.max_restarts = max_restarts
        self.teardown_timeout_s = float(teardown_timeout_s)
        self._setup_cls = resolve_setup(setup)
        self._setup_options = dict(setup_options or {})
        self._bundle = bundle_for(
            {"CPU": 1} if resources_per_worker is None else resources_per_worker
        )
        self._env = {str(k): str(v) for k, v in (env or {}).items()}
        self._fail_fast = fail_fast
        self._state = "new"
        self._attempt = 0
        self._infos: list[dict[str, Any]] = []
        self._ctxs: list[GangContext] = []
        self._created_at = time.time()
        self._lock = threading.RLock()
        self._res = _Resources()
        # A gang dropped without shutdown() still frees its actors and placement group.
        self._finalizer = weakref.finalize(self, _finalize, self._res, self.name)

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
        """Rank, node (address), node id, pid, actor id and GPU ids of every member, by rank."""
        return [{"rank": r, "node": i["node_ip"], **i} for r, i in enumerate(self._infos)]

    @property
    def contexts(self) -> list[GangContext]:
        """Every member's context, in rank order."""
        return list(self._ctxs)

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
            members = list(self._res.members)
            if members and self._state in ("ready", "running") and ray.is_initialized():
                refs = [m.teardown.remote(self.teardown_timeout_s) for m in members]
                # Every member tears down at once (MPI_Finalize is collective); never wait longer.
                ray.wait(refs, num_returns=len(refs), timeout=self.teardown_timeout_s + 2.0)
            self._state = "shutdown"
            self._finalizer()

    def __enter__(self) -> Gang:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"Gang({self.name!r}, {self.num_workers} x {self._setup_cls.name}, {self._state})"

    # --- formation -----------------------------------------------------------------------------

    def _ensure_formed(self) -> None:
        with self._lock:
            if self._state == "shutdown":
                raise GangError(f"gang {self.name} was shut down; create a new Gang")
            if self._state == "failed" or not self._res.members:
                self._attempt += 1
                self._form()

    def _form(self) -> None:
        for attempt in range(_RENDEZVOUS_TRIES):
            try:
                self._form_once()
                return
            except BaseException as e:
                self._res.release()
                self._set_state("failed")
                if (
                    isinstance(e, GangError)
                    and is_addr_in_use(e)
                    and attempt + 1 < _RENDEZVOUS_TRIES
                ):
                    log.warning("gang %s: port taken during rendezvous, retrying: %s", self.name, e)
                    continue
                raise

    def _form_once(self) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        deadline = time.monotonic() + self.timeout_s
        n = self.num_workers
        self._infos, self._ctxs = [], []
        self._set_state("forming")
        if self._fail_fast:
            check_feasible(self.name, n, self._bundle, self.strategy)
        pg = placement_group([dict(self._bundle) for _ in range(n)], strategy=self.strategy)
        self._res.pg = pg
        ready, _ = ray.wait([pg.ready()], timeout=self.timeout_s)
        if not ready:
            raise GangSetupError(
                f"gang {self.name}: placement group of {n} x {self._bundle} ({self.strategy}) not "
                f"ready after {self.timeout_s:g}s; available now: {ray.available_resources()}. "
                "Free those resources, lower resources_per_worker, or raise timeout_s"
            )

        cls = ray.remote(GangMember)
        opts: dict[str, Any] = dict(actor_options(self._bundle), max_restarts=0)
        if self._env:
            opts["runtime_env"] = {"env_vars": self._env}
        members = [
            cls.options(
                **opts,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    pg, placement_group_bundle_index=i
                ),
            ).remote()
            for i in range(n)
        ]
        self._res.members = members
        infos = self._gather(
            [m.info.remote() for m in members], list(range(n)), deadline, "start", ranked=False
        )

        order = order_members(infos)
        members = [members[i] for i in order]
        infos = [infos[i] for i in order]
        self._res.members, self._infos = members, infos
        node_ids: list[str] = []
        for info in infos:
            if info["node_id"] not in node_ids:
                node_ids.append(info["node_id"])
        node_sizes = tuple(sum(1 for i in infos if i["node_id"] == nid) for nid in node_ids)
        single_node = len(node_ids) == 1
        # One node: loopback, which every process there can reach and nothing outside can.
        master_addr = "127.0.0.1" if single_node else infos[0]["node_ip"]
        [master_port] = self._gather(
            [members[0].reserve_port.remote(master_addr, self._setup_cls.listen_master)],
            [0],
            deadline,
            "reserve MASTER_PORT",
        )
        plan = GangPlan(
            name=self.name,
            world_size=n,
            master_addr=master_addr,
            master_port=master_port,
            node_ips=tuple(i["node_ip"] for i in infos),
            node_sizes=node_sizes,
            timeout_s=max(1.0, deadline - time.monotonic()),
        )
        driver_setup = self._setup_cls()
        self._res.driver_setup = driver_setup
        options = {**driver_setup.prepare(plan), **self._setup_options}
        ckpt = _checkpoint.load(self.name) if self._attempt > 0 else None
        ctxs: list[GangContext] = []
        for rank, info in enumerate(infos):
            node_rank = node_ids.index(info["node_id"])
            same_node = [j for j, o in enumerate(infos) if o["node_id"] == info["node_id"]]
            ctxs.append(
                GangContext(
                    rank=rank,
                    world_size=n,
                    local_rank=same_node.index(rank),
                    local_world_size=len(same_node),
                    node_rank=node_rank,
                    master_addr=master_addr,
                    master_port=master_port,
                    gang_name=self.name,
                    attempt=self._attempt,
                    node_id=info["node_id"],
                    checkpoint=ckpt,
                )
            )
        self._ctxs = ctxs
        self._set_state("forming", master=f"{master_addr}:{master_port}")
        self._gather(
            [m.setup.remote(ctx, self._setup_cls, options) for m, ctx in zip(members, ctxs)],
            list(range(n)),
            deadline,
            f"{self._setup_cls.name} setup",
        )
        self._set_state("ready")

    def _abort(self) -> None:
        """Stop every member now (a hung collective cannot be interrupted more gently)."""
        with self._lock:
            self._res.release()
            self._set_state("failed")

    # --- the failure watch ---------------------------------------------------------------------

    def _gather(
        self,
        refs: list[Any],
        ranks: list[int],
        deadline: float | None,
        what: str,
        ranked: bool = True,
    ) -> list[Any]:
        """ray.get on ``refs``, failing as soon as one member fails (no polling: ray.wait blocks
        until a result or a member death arrives)."""
        import ray

        index = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        failures: list[_Failure] = []
        while pending and not failures:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, pending = ray.wait(pending, num_returns=1, timeout=timeout)
            if not done:
                raise self._timeout_error(what, [ranks[index[r]] for r in pending], ranked)
            for ref in done:
                self._collect(ref, ranks[index[ref]], results, index[ref], failures, ranked)
        if failures and pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=_FAILURE_GRACE_S)
            for ref in done:
                self._collect(ref, ranks[index[ref]], results, index[ref], failures, ranked)
        if failures:
            raise self._failure_error(what, failures)
        return results

    def _collect(
        self,
        ref: Any,
        rank: int,
        results: list[Any],
        i: int,
        failures: list[_Failure],
        ranked: bool,
    ) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        info = self._infos[rank] if ranked and rank < len(self._infos) else {}
        node = info.get("node_ip", "?")
        try:
            results[i] = ray.get(ref)
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, GangMemberError):
                failures.append(
                    _Failure(rank, cause.node or node, str(cause), False, cause.remote_traceback)
                )
            else:
                text = _ANSI.sub("", str(e))
                failures.append(_Failure(rank, node, f"rank {rank} failed: {text}", False, None))
        except RayActorError as e:
            label = f"rank {rank}" if ranked else f"member {rank}"
            pid = info.get("pid", "?")
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            failures.append(
                _Failure(rank, node, f"{label} (node {node}, pid {pid}) died: {reason}", True)
            )
        except Exception as e:  # e.g. a result that cannot be deserialised
            failures.append(_Failure(rank, node, f"rank {rank}: {type(e).__name__}: {e}", False))

    def _failure_error(self, what: str, failures: list[_Failure]) -> GangError:
        # Name the root cause first: a death, else the lowest rank that raised.
        failures.sort(key=lambda f: (not f.died, f.rank))
        first = failures[0]
        lines = [f"gang {self.name} (attempt {self._attempt}): {what}: {first.message}"]
        if first.remote_traceback:
            lines.append(f"--- remote traceback of rank {first.rank} ---")
            lines.append(first.remote_traceback.rstrip())
        for f in failures[1:]:
            lines.append(f"also: {f.message.splitlines()[0]}")
        lines.append(
            "The other members were stopped. Calling run() again re-forms the gang; "
            "Gang(max_restarts=k) does it automatically."
        )
        cls = GangSetupError if what != "fn" else GangMemberError
        err = cls("\n".join(lines))
        err.rank = first.rank  # type: ignore[attr-defined]
        err.node = first.node  # type: ignore[attr-defined]
        err.remote_traceback = first.remote_traceback  # type: ignore[attr-defined]
        err.died = first.died  # type: ignore[attr-defined]
        return err

    def _timeout_error(self, what: str, ranks: list[int], ranked: bool) -> GangSetupError:
        label = "ranks" if ranked else "members"
        return GangSetupError(
            f"gang {self.name}: {what} did not finish within timeout_s={self.timeout_s:g} on "
            f"{label} {ranks}; the members were stopped. Raise timeout_s, or look at those "
            "members' logs for the step they are stuck in"
        )

    # --- registry ------------------------------------------------------------------------------

    def _set_state(self, state: str, **extra: Any) -> None:
        self._state = state
        import ray

        if not ray.is_initialized():
            return
        try:
            rc = ray.get_runtime_context()
            entry: dict[str, Any] = {
                "name": self.name,
                "state": state,
                "setup": self._setup_cls.name,
                "world_size": self.num_workers,
                "strategy": self.strategy,
                "attempt": self._attempt,
                "job_id": rc.get_job_id(),
                "driver_pid": os.getpid(),
                "created_at": self._created_at,
                "members": [
                    {
                        "rank": r,
                        "actor_id": info["actor_id"],
                        "node": info["node_ip"],
                        "node_id": info["node_id"],
                        "pid": info["pid"],
                    }
                    for r, info in enumerate(self._infos)
                ]
                if self._res.members
                else [],
            }
            if self._ctxs:
                entry["master"] = f"{self._ctxs[0].master_addr}:{self._ctxs[0].master_port}"
            entry.update(extra)
            registry.publish(entry)
        except Exception as e:  # the registry is for humans; never fail a gang over it
            log.debug("gang %s: registry update failed: %s", self.name, e)
