"""The split-step acceptance tests (docs/design.md, "Data parallelism and accumulation"), run by every backend's
tests/backends/test_<fw>_distributed.py on its own worker's records: each of those modules imports these functions
(pytest collects them there) and defines the `runs` fixture, `{key: (record, npz)}` over `dp_jobs()`'s keys.

Float64: every DP case and both reductions match the oracle ≤ 1e-9 (steps and final parameters), global_mean
matches the backend's own single-device twin ≤ 1e-9, the reductions agree through the first ragged step and part
right after it, and the ragged step records an empty part; float32: global_mean against the twin ≤ 1e-4.
batch_norm under split steps (common.layers.norm): every BN case matches the oracle ≤ 1e-9 (per-replica and
synchronised statistics, the running statistics among the final parameters); synchronised statistics at K = 1 match
the single-device twin ≤ 1e-9 (float32 ≤ 1e-4); native mode trains to finite losses."""

import math

import pytest

from tests.support import (
    BN_CASES,
    BN_SYNC,
    DP_CASES,
    DP_FLOAT32,
    DP_REDUCTIONS,
    assert_reductions_part_after_the_first_ragged_step,
    assert_the_ragged_step_has_an_empty_part,
    bn_spec,
    dp_spec,
    max_rel_gap,
    run_in_process,
)

__all__ = [  # what each backend's module imports, so pytest collects them there
    "test_batch_norm_split_steps_match_the_oracle",
    "test_float32_global_mean_matches_the_twin",
    "test_global_mean_matches_the_single_device_twin",
    "test_native_batch_norm_split_steps_train",
    "test_records_carry_the_shards_of_the_ragged_step",
    "test_reductions_agree_through_the_first_ragged_step_and_part_right_after",
    "test_split_steps_match_the_oracle",
    "test_synchronised_batch_norm_matches_the_twin",
]


@pytest.mark.parametrize("reduction", DP_REDUCTIONS)
@pytest.mark.parametrize("case", sorted(DP_CASES))
def test_split_steps_match_the_oracle(runs, case, reduction):
    oracle = run_in_process("numpy", dp_spec(case, "float64", reduction))
    losses, params = max_rel_gap(runs[("split", case, "float64", reduction)], oracle)
    assert losses <= 1e-9 and params <= 1e-9, (losses, params)


@pytest.mark.parametrize("case", sorted(DP_CASES))
def test_global_mean_matches_the_single_device_twin(runs, case):
    losses, params = max_rel_gap(runs[("split", case, "float64", "global_mean")], runs[("twin", case, "float64")])
    assert losses <= 1e-9 and params <= 1e-9, (losses, params)


@pytest.mark.parametrize("case", DP_FLOAT32)
def test_float32_global_mean_matches_the_twin(runs, case):
    losses, params = max_rel_gap(runs[("split", case, "float32", "global_mean")], runs[("twin", case, "float32")])
    assert losses <= 1e-4 and params <= 1e-4, (losses, params)


@pytest.mark.parametrize("case", sorted(DP_CASES))
def test_reductions_agree_through_the_first_ragged_step_and_part_right_after(runs, case):
    means = runs[("split", case, "float64", "mean_of_means")][0]["steps"]
    global_ = runs[("split", case, "float64", "global_mean")][0]["steps"]
    assert_reductions_part_after_the_first_ragged_step(case, means, global_)


@pytest.mark.parametrize("case", DP_FLOAT32)
def test_records_carry_the_shards_of_the_ragged_step(runs, case):
    assert_the_ragged_step_has_an_empty_part(case, runs[("split", case, "float64", "global_mean")][0]["steps"])


@pytest.mark.parametrize("case", sorted(BN_CASES))
def test_batch_norm_split_steps_match_the_oracle(runs, case):
    losses, params = max_rel_gap(runs[("bn", case, "float64")], run_in_process("numpy", bn_spec(case)))
    assert losses <= 1e-9 and params <= 1e-9, (losses, params)


@pytest.mark.parametrize(("dtype", "tolerance"), [("float64", 1e-9), ("float32", 1e-4)])
def test_synchronised_batch_norm_matches_the_twin(runs, dtype, tolerance):
    losses, params = max_rel_gap(runs[("bn", BN_SYNC, dtype)], runs[("bn-twin", BN_SYNC, dtype)])
    assert losses <= tolerance and params <= tolerance, (losses, params)


@pytest.mark.parametrize("case", sorted(BN_CASES))
def test_native_batch_norm_split_steps_train(runs, case):
    steps = runs[("bn-native", case)][0]["steps"]
    assert steps and all(math.isfinite(s["loss"]) for s in steps)
