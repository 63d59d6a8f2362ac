"""XGBoost in a gang: every member trains on its shard, the gang trains one model.

Run: python examples/gang_xgboost.py   (needs: pip install 'sideband[xgboost]')
"""

from __future__ import annotations

from typing import Any

import numpy as np

PARAMS = {"objective": "reg:squarederror", "tree_method": "hist", "max_depth": 4, "eta": 0.3}


def make_data(rows: int, features: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic rows; integer-valued features, so every worker's histogram bins are the same
    exact values and distributed training can match single-process training."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 16, size=(rows, features)).astype(np.float32)
    w = rng.normal(size=features).astype(np.float32)
    y = x @ w + rng.normal(scale=0.1, size=rows).astype(np.float32)
    return x, y


def train_shard(rows: int, features: int, rounds: int) -> dict[str, Any]:
    """Runs on every member: xgboost.collective is already up, so xgb.train is distributed."""
    import xgboost as xgb
    from xgboost import collective

    from sideband.gang import context

    ctx = context()
    x, y = make_data(rows, features)
    shard = slice(ctx.rank, None, ctx.world_size)
    booster = xgb.train(PARAMS, xgb.DMatrix(x[shard], label=y[shard]), num_boost_round=rounds)
    pred = booster.predict(xgb.DMatrix(x[:1000]))
    return {"rank": collective.get_rank(), "world": collective.get_world_size(), "pred": pred}


def main(
    num_workers: int = 2,
    resources_per_worker: dict[str, float] | None = None,
    rows: int = 20_000,
    features: int = 10,
    rounds: int = 20,
) -> dict[str, Any]:
    import ray
    import xgboost as xgb

    from sideband import Gang

    if not ray.is_initialized():
        ray.init()
    with Gang(num_workers, resources_per_worker=resources_per_worker, setup="xgboost") as gang:
        results = gang.run(train_shard, rows, features, rounds)
    x, y = make_data(rows, features)
    single = xgb.train(PARAMS, xgb.DMatrix(x, label=y), num_boost_round=rounds)
    expected = single.predict(xgb.DMatrix(x[:1000]))
    diff = max(float(np.max(np.abs(r["pred"] - expected))) for r in results)
    print(f"{num_workers} workers, {rounds} rounds: max |gang - single-process| = {diff:.2e}")
    return {"results": results, "single": expected, "max_abs_diff": diff}


if __name__ == "__main__":
    main()
