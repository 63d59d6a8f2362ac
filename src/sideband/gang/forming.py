"""Forming a gang: placement group, members, ranks, MASTER_PORT, library setup.

A mixin of :class:`sideband.gang.Gang` (one job: getting from nothing to a ready gang, or to a
clear error with nothing left behind); it uses the gang's options and its failure watch.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from sideband.errors import GangError, GangSetupError
from sideband.gang import checkpoint as _checkpoint
from sideband.gang.contract import GangContext
from sideband.gang.failures import FailureWatch
from sideband.gang.member import WATCH_GROUP, GangMember
from sideband.gang.placement import _ip_key, actor_options, check_feasible, order_members
from sideband.gang.progress import Progress
from sideband.gang.resources import Resources
from sideband.gang.setup import GangPlan, Setup, is_addr_in_use, leads

log = logging.getLogger(__name__)

_RENDEZVOUS_TRIES = 3


def _predicted_ranks(pg: Any, n: int) -> list[int]:
    """Rank of each bundle, predicted from the node each bundle landed on (the member's GPU ids,
    the other key of the rank order, are only known once it runs)."""
    import ray
    from ray.util.placement_group import placement_group_table

    try:
        where = placement_group_table(pg)["bundles_to_node_id"]
        ips = {nd["NodeID"]: nd["NodeManagerAddress"] for nd in ray.nodes()}
        order = sorted(range(n), key=lambda i: (_ip_key(ips.get(where[i], "")), where[i], i))
    except Exception:  # the table's shape is Ray's; fall back to bundle order
        order = list(range(n))
    ranks = [0] * n
    for rank, bundle in enumerate(order):
        ranks[bundle] = rank
    return ranks


class Former(FailureWatch):
    """Mixin: ``_ensure_formed``, ``_form`` (with the EADDRINUSE retry) and ``_form_once``;
    ``_gather`` and the watch come from :class:`FailureWatch`."""

    # Set by Gang.__init__ (the gang state forming reads and writes beyond FailureWatch's).
    num_workers: int
    strategy: str
    _res: Resources
    _bundle: dict[str, float]
    _setup_cls: type[Setup]
    _setup_options: dict[str, Any]
    _actor_options: dict[str, Any]
    _fail_fast: bool
    _progress: Any
    _ctxs: list[GangContext]

    if TYPE_CHECKING:  # provided by Gang

        def _set_state(self, state: str, **extra: Any) -> None: ...

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

    def _wait_placed(self, placed: Any, deadline: float) -> None:
        import ray

        ready, _ = ray.wait([placed], timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            n = self.num_workers
            raise GangSetupError(
                f"gang {self.name}: placement group of {n} x {self._bundle} ({self.strategy}) "
                f"not ready after {self.timeout_s:g}s (the members wait for it); available "
                f"now: {ray.available_resources()}. Free those resources, lower "
                "resources_per_worker, or raise timeout_s"
            )

    def _create_members(self, pg: Any, one_node: bool) -> tuple[list[Any], list[str]]:
        """The member actors, in bundle order, and their dashboard names."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        n = self.num_workers
        cls = ray.remote(concurrency_groups={WATCH_GROUP: 1})(GangMember)  # type: ignore[call-overload]
        opts: dict[str, Any] = {
            **self._actor_options,
            **actor_options(self._bundle),
            "max_restarts": 0,
        }
        suffix = f"-{self._generation - 1}" if self._generation > 1 else ""
        ranks = list(range(n)) if one_node else _predicted_ranks(pg, n)
        labels = [f"{self.name}-rank{r}{suffix}" for r in ranks]
        members: list[Any] = []
        for i in range(n):
            where = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
            try:
                m = cls.options(**opts, name=labels[i], scheduling_strategy=where)
                members.append(m.remote(labels[i], self._setup_cls.preload))
            except ValueError:  # the name is still held by a member Ray is killing
                m = cls.options(**opts, scheduling_strategy=where)
                members.append(m.remote(labels[i], self._setup_cls.preload))
            self._res.members = members
        return members, labels

    def _form_once(self) -> None:
        import ray
        from ray.util.placement_group import placement_group

        deadline = time.monotonic() + self.timeout_s
        n = self.num_workers
        self._generation += 1
        self._infos, self._ctxs = [], []
        self._failure, self._watch_root = None, None
        self._set_state("forming")
        progress = Progress(self.name, self._progress)
        self.formation_times = progress.times
        driver_setup = self._setup_cls()
        self._res.driver_setup = driver_setup
        with progress.step(f"placement of {n} x {self._bundle} ({self.strategy})"):
            nodes = [nd for nd in ray.nodes() if nd.get("Alive")]
            if self._fail_fast:
                check_feasible(self.name, n, self._bundle, self.strategy, nodes)
            driver_setup.warm_up(dict(self._setup_options))  # e.g. a driver JVM, beside placement
            pg = placement_group([dict(self._bundle) for _ in range(n)], strategy=self.strategy)
            self._res.pg = pg
            placed = pg.ready()
            # On one node the ranks are the bundle order: create the members now, and Ray
            # starts them the moment the group is placed (no round trip in between). Across
            # nodes their names follow where the bundles landed, so the group comes first.
            one_node = len(nodes) == 1 and self._fail_fast  # else nodes may join
            if not one_node:
                self._wait_placed(placed, deadline)
            members, labels = self._create_members(pg, one_node)
            asked = [m.info.remote() for m in members]
            if one_node:
                self._wait_placed(placed, deadline)

        with progress.step(f"start {n} members"):
            infos = self._gather(asked, list(range(n)), deadline, "start", ranked=False)
            for info, label in zip(infos, labels):
                info["name"] = label

        order = order_members(infos)
        members = [members[i] for i in order]
        infos = [infos[i] for i in order]
        self._res.members, self._infos = members, infos
        here = ray.get_runtime_context().get_node_id()
        self._res.local_pids = [i["pid"] for i in infos if i["node_id"] == here]
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
            bundle=dict(self._bundle),
            options=dict(self._setup_options),
        )
        options = {**driver_setup.prepare(plan), **self._setup_options}
        ckpt = _checkpoint.load(self.name) if self._attempt > 0 else None
        ctxs: list[GangContext] = []
        for rank, info in enumerate(infos):
            same_node = [j for j, o in enumerate(infos) if o["node_id"] == info["node_id"]]
            ctxs.append(
                GangContext(
                    rank=rank,
                    world_size=n,
                    local_rank=same_node.index(rank),
                    local_world_size=len(same_node),
                    node_rank=node_ids.index(info["node_id"]),
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
        what = f"{self._setup_cls.name} setup"
        with progress.step(what):
            refs, ranks, on_result = [], list(range(n)), None
            lead = leads(self._setup_cls)
            if lead:
                # Rank 0 leads (e.g. starts a server); the driver hears of it at once, while
                # the other members' setups already run.
                refs.append(members[0].lead.remote(ctxs[0], self._setup_cls, options))
                ranks.insert(0, 0)

                def on_result(i: int, result: Any) -> None:
                    if i == 0:
                        driver_setup.led(result)

            refs += [
                m.setup.remote(ctx, self._setup_cls, options, lead and ctx.rank == 0)
                for m, ctx in zip(members, ctxs)
            ]
            results = self._gather(refs, ranks, deadline, what, on_result=on_result)
            if lead:
                results = results[1:]
            try:
                driver_setup.ready([r["result"] for r in results])
            except GangError:
                raise
            except Exception as e:
                raise GangSetupError(
                    f"gang {self.name}: the driver side of {what} failed: {type(e).__name__}: {e}"
                ) from e
        self._start_watch(members)
        self._set_state("ready")
