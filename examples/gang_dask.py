"""Dask in a gang: a scheduler in rank 0, a worker in every member, a Client on the driver.

Run: python examples/gang_dask.py   (needs: pip install 'sideband[dask]')
"""

from __future__ import annotations

from typing import Any


def main(num_workers: int = 2, resources_per_worker: dict[str, float] | None = None) -> Any:
    import ray

    from sideband import Gang
    from sideband.gang import dask as gang_dask

    def square(x: int) -> int:  # local, so Dask pickles it by value for the members
        return x * x

    if not ray.is_initialized():
        ray.init()
    with Gang(num_workers, resources_per_worker=resources_per_worker, setup="dask") as gang:
        client = gang_dask.client(gang)
        total = client.submit(sum, client.map(square, range(100))).result()
        workers = sorted(w["name"] for w in client.scheduler_info()["workers"].values())
    print(f"sum of squares below 100 = {total}, computed by workers {workers}")
    return {"total": total, "workers": workers}


if __name__ == "__main__":
    main()
