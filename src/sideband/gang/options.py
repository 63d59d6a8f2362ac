"""Gang constructor arguments: Ray Train's words accepted where they mean the same.

``use_gpu``, ``placement_strategy`` and a ``ray.train.ScalingConfig`` (read by attribute, so Ray
Train need not be installed) translate into the gang's own ``num_workers``,
``resources_per_worker`` and ``strategy``; ``actor_options`` pass through to every member.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sideband.errors import InvalidArgumentError
from sideband.gang.placement import STRATEGIES, bundle_for

# Options the gang decides itself: resources come from the bundle, placement from the group,
# restarts from max_restarts (a member Ray restarted alone would have lost its library state).
_OWNED = {
    "num_cpus",
    "num_gpus",
    "resources",
    "memory",
    "scheduling_strategy",
    "placement_group",
    "placement_group_bundle_index",
    "max_restarts",
    "max_task_retries",
    "concurrency_groups",
    "lifetime",
    "name",
    "get_if_exists",
}


@dataclass(frozen=True)
class GangOptions:
    num_workers: int
    bundle: dict[str, float]
    strategy: str
    actor_options: dict[str, Any]


def _pick(label: str, a: Any, b: Any, default: Any) -> Any:
    if a is not None and b is not None and a != b:
        raise InvalidArgumentError(f"{label} given twice with different values: {a!r} and {b!r}")
    return a if a is not None else (b if b is not None else default)


def normalise(
    num_workers: Any,
    resources_per_worker: dict[str, float] | None,
    strategy: str | None,
    env: dict[str, str] | None,
    *,
    use_gpu: bool | None = None,
    placement_strategy: str | None = None,
    scaling_config: Any = None,
    actor_options: dict[str, Any] | None = None,
) -> GangOptions:
    """Check and merge the constructor's arguments; raise InvalidArgumentError on conflicts."""
    if scaling_config is None and num_workers is not None and hasattr(num_workers, "num_workers"):
        scaling_config, num_workers = num_workers, None  # Gang(ScalingConfig(...))
    if scaling_config is not None:
        num_workers = _pick("num_workers", num_workers, scaling_config.num_workers, None)
        use_gpu = _pick("use_gpu", use_gpu, getattr(scaling_config, "use_gpu", None), None)
        resources_per_worker = _pick(
            "resources_per_worker",
            resources_per_worker,
            getattr(scaling_config, "resources_per_worker", None),
            None,
        )
        placement_strategy = _pick(
            "placement_strategy",
            placement_strategy,
            getattr(scaling_config, "placement_strategy", None),
            None,
        )
    if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
        raise InvalidArgumentError(f"num_workers must be a positive int, got {num_workers!r}")
    strategy = _pick("strategy (placement_strategy)", strategy, placement_strategy, "PACK")
    if strategy not in STRATEGIES:
        raise InvalidArgumentError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")

    resources = dict({"CPU": 1} if resources_per_worker is None else resources_per_worker)
    if use_gpu:
        if resources.get("GPU", None) == 0:
            raise InvalidArgumentError("use_gpu=True but resources_per_worker has GPU: 0")
        resources.setdefault("GPU", 1)
    bundle = bundle_for(resources)

    opts = dict(actor_options or {})
    owned = sorted(set(opts) & _OWNED)
    if owned:
        raise InvalidArgumentError(
            f"actor_options {owned} are decided by the gang (resources_per_worker, strategy, "
            "max_restarts, member names <gang>-rank<r>); pass runtime_env, max_concurrency, "
            "namespace, accelerator_type or label_selector"
        )
    if env:
        runtime_env = dict(opts.get("runtime_env") or {})
        runtime_env["env_vars"] = {
            **(runtime_env.get("env_vars") or {}),
            **{str(k): str(v) for k, v in env.items()},
        }
        opts["runtime_env"] = runtime_env
    return GangOptions(num_workers, bundle, strategy, opts)
