"""Placement: one placement group per gang, an early feasibility check, deterministic ranks."""

from __future__ import annotations

import ipaddress
import math
from typing import Any

from sideband.errors import GangSetupError

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
# Ray refuses bundles whose resources are all zero; a zero-resource gang reserves this much CPU
# per member instead (Ray's resource granularity is 1e-4).
_MIN_CPU = 0.0001


def bundle_for(resources: dict[str, float]) -> dict[str, float]:
    bundle = {k: float(v) for k, v in resources.items() if v}
    if any(v < 0 for v in bundle.values()):
        raise GangSetupError(f"resources_per_worker has a negative amount: {resources}")
    return bundle or {"CPU": _MIN_CPU}


def actor_options(bundle: dict[str, float]) -> dict[str, Any]:
    """Ray actor options asking for exactly one bundle's resources."""
    opts: dict[str, Any] = {"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0)}
    if "memory" in bundle:
        opts["memory"] = bundle["memory"]
    custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU", "memory")}
    if custom:
        opts["resources"] = custom
    return opts


def check_feasible(
    name: str,
    n: int,
    bundle: dict[str, float],
    strategy: str,
    alive: list[dict[str, Any]] | None = None,
) -> None:
    """Fail at once when no cluster state could ever hold the gang (Ray would wait forever).

    Only the nodes alive now count (``alive``: ``ray.nodes()`` entries, else asked for): on an
    autoscaling cluster, pass fail_fast=False to Gang.
    """
    import ray

    if alive is None:
        alive = [nd for nd in ray.nodes() if nd.get("Alive")]
    nodes = [nd["Resources"] for nd in alive]
    for key, amount in bundle.items():
        largest = max((nd.get(key, 0.0) for nd in nodes), default=0.0)
        if largest < amount:
            raise GangSetupError(
                f"gang {name}: infeasible: each worker asks for {amount:g} {key}, but the largest "
                f"node has {largest:g} {key} (cluster total {sum(nd.get(key, 0.0) for nd in nodes):g}); "
                f"lower resources_per_worker[{key!r}] or add nodes that have {key}"
            )

    def fits(nd: dict[str, float]) -> int:
        return min(math.floor(nd.get(k, 0.0) / v + 1e-9) for k, v in bundle.items())

    per_node = [fits(nd) for nd in nodes]
    if strategy == "STRICT_PACK":
        ok, where = max(per_node, default=0) >= n, "one node"
    elif strategy == "STRICT_SPREAD":
        ok, where = sum(1 for c in per_node if c >= 1) >= n, f"{n} distinct nodes"
    else:
        ok, where = sum(per_node) >= n, "the cluster"
    if not ok:
        worst = min(bundle, key=lambda k: sum(nd.get(k, 0.0) for nd in nodes) / (bundle[k] * n))
        raise GangSetupError(
            f"gang {name}: infeasible: {n} workers x {bundle} ({strategy}) do not fit on {where}; "
            f"the scarcest resource is {worst} ({n * bundle[worst]:g} needed, "
            f"{sum(nd.get(worst, 0.0) for nd in nodes):g} in the cluster)"
        )


def _ip_key(ip: str) -> tuple[int, Any]:
    try:
        return (0, ipaddress.ip_address(ip))
    except ValueError:
        return (1, ip)


def order_members(infos: list[dict[str, Any]]) -> list[int]:
    """Indices of ``infos`` in rank order: by node (address, then id), then accelerator id,
    then placement bundle index, so local ranks follow GPU order (ray#40803)."""

    def key(i: int) -> tuple[Any, ...]:
        info = infos[i]
        gpus = sorted(int(g) for g in info["gpu_ids"] if str(g).isdigit())
        return (_ip_key(info["node_ip"]), info["node_id"], gpus[0] if gpus else math.inf, i)

    return sorted(range(len(infos)), key=key)
