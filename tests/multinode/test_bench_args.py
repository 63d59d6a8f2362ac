"""`sideband bench multinode`'s options and arithmetic (no test bed needed)."""

from __future__ import annotations

import pytest

from sideband.bench import multinode


def test_unknown_impl_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown impls"):
        multinode.main(["--impls", "hierarchical,mpi"])


def test_ratios_pair_each_variant_with_its_baselines() -> None:
    recs = [
        {"impl": "hierarchical", "nbytes": 8, "median_s": 1.0},
        {"impl": "flat", "nbytes": 8, "median_s": 2.0},
        {"impl": "torch_gloo", "nbytes": 8, "median_s": 4.0},
        {"impl": "flat", "nbytes": 16, "median_s": 1.0},
    ]
    got = {(x["nbytes"], x["impl"], x["baseline"]): x["ratio"] for x in multinode.ratios(recs)}
    assert got == {
        (8, "hierarchical", "flat"): 0.5,
        (8, "hierarchical", "torch_gloo"): 0.25,
        (8, "flat", "torch_gloo"): 0.5,
    }
