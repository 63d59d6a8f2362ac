"""Spark in a gang: a standalone master and workers inside the gang's actors, a SparkSession on
the driver (what RayDP's ``init_spark`` gives, without its pins).

Run: python examples/gang_spark.py   (needs: pip install 'sideband[spark]' and Java 17+)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def main(
    num_workers: int = 2,
    resources_per_worker: dict[str, float] | None = None,
    rows: int = 100_000,
    probe: Callable[[Any, Any], None] | None = None,
) -> dict[str, Any]:
    """``probe(gang, spark)``, if given, runs while the gang is up (the test lists JVMs)."""
    import ray

    from sideband import Gang
    from sideband.gang import spark as gang_spark

    if not ray.is_initialized():
        ray.init()
    with Gang(num_workers, resources_per_worker=resources_per_worker, setup="spark") as gang:
        spark = gang_spark.session(gang)
        total = spark.range(rows).selectExpr("sum(id) AS s").collect()[0]["s"]
        executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
        members = gang.members
        if probe is not None:
            probe(gang, spark)
    print(f"sum(id) over {rows} rows = {total} on {executors} executors")
    return {"total": total, "executors": executors, "members": members}


if __name__ == "__main__":
    main()
