"""TensorFlow split steps (backends.tf_backend.distributed): MirroredStrategy over logical CPU devices and
accumulation inside each replica against the numpy oracle's serial split and against the backend's own
single-device twin (common.distributed.single_device), both reductions, the shards each replica was fed, compiled
execution, and the two tf.nn helpers the adapter does not use on a ragged step.

The runs train in one worker process (`python -m backends.worker`, which reserves the logical devices first)."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from common import record
from common.batching import Batch
from common.distributed import Layout, single_device
from tests.support import DP_CASES, ROOT, dp_spec, installed, max_rel_gap, run_in_process

pytestmark = pytest.mark.skipif(not installed("tf"), reason="needs tensorflow and keras (pip install -e '.[tf]')")

REDUCTIONS = ("global_mean", "mean_of_means")
FLOAT32 = ("r2-ragged", "k4")


def _jobs() -> dict[str, object]:
    """Every run this file compares, by key: split runs (case, dtype, reduction, execution) and twins."""
    jobs = {
        ("split", case, "float64", r, "default"): dp_spec(case, "float64", r) for case in DP_CASES for r in REDUCTIONS
    }
    jobs |= {("twin", case, "float64"): single_device(dp_spec(case)) for case in DP_CASES}
    jobs |= {("split", case, "float32", "global_mean", "default"): dp_spec(case, "float32") for case in FLOAT32}
    jobs |= {("twin", case, "float32"): single_device(dp_spec(case, "float32")) for case in FLOAT32}
    compiled = dataclasses.replace(dp_spec("r2-ragged"), execution="compiled")
    jobs[("split", "r2-ragged", "float64", "global_mean", "compiled")] = compiled
    return jobs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(record JSON, NPZ) of every job of `_jobs`, trained by one tf worker."""
    base = tmp_path_factory.mktemp("tf-dp")
    jobs = _jobs()
    folders = {key: base / "-".join(key) for key in jobs}
    listing = [{"spec": spec.to_dict(), "out": str(folders[key].resolve())} for key, spec in jobs.items()]
    (base / "jobs.json").write_text(json.dumps(listing), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "backends.worker", "tf", str(base / "jobs.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return {key: record.read(folder, "tf") for key, folder in folders.items()}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", sorted(DP_CASES))
def test_split_steps_match_the_oracle(runs, case, reduction):
    oracle = run_in_process("numpy", dp_spec(case, "float64", reduction))
    losses, params = max_rel_gap(runs[("split", case, "float64", reduction, "default")], oracle)
    assert losses <= 1e-9 and params <= 1e-9, (losses, params)


@pytest.mark.parametrize("case", sorted(DP_CASES))
def test_global_mean_matches_the_single_device_twin(runs, case):
    losses, params = max_rel_gap(
        runs[("split", case, "float64", "global_mean", "default")], runs[("twin", case, "float64")]
    )
    assert losses <= 1e-9 and params <= 1e-9, (losses, params)


@pytest.mark.parametrize("case", FLOAT32)
def test_float32_global_mean_matches_the_twin(runs, case):
    losses, params = max_rel_gap(
        runs[("split", case, "float32", "global_mean", "default")], runs[("twin", case, "float32")]
    )
    assert losses <= 1e-4 and params <= 1e-4, (losses, params)


def test_compiled_replicas_match_the_oracle(runs):
    """execution = "compiled": each replica's forward/backward passes under XLA, the all-reduce and update not."""
    oracle = run_in_process("numpy", dp_spec("r2-ragged"))
    losses, params = max_rel_gap(runs[("split", "r2-ragged", "float64", "global_mean", "compiled")], oracle)
    assert losses <= 1e-9 and params <= 1e-9, (losses, params)


def _first_ragged(case: str, rec: dict) -> int:
    """The 1-based step of the first step with fewer real rows than the layout's S."""
    rows = Layout.from_spec(dp_spec(case)).step_rows
    return next(s["step"] for s in rec["steps"] if s["batch_size"] < rows)


@pytest.mark.parametrize("case", sorted(DP_CASES))
def test_reductions_part_exactly_after_the_first_ragged_step(runs, case):
    means = runs[("split", case, "float64", "mean_of_means", "default")][0]["steps"]
    globl = runs[("split", case, "float64", "global_mean", "default")][0]["steps"]
    first = _first_ragged(case, runs[("twin", case, "float64")][0])
    if case in FLOAT32:
        assert first == 8  # 120 rows, 16 per step
    gaps = [abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(means, globl, strict=True)]
    assert max(gaps[:first]) <= 1e-12, gaps[:first]
    assert gaps[first] > 1e-6, gaps[first]


@pytest.mark.parametrize("case", FLOAT32)
def test_records_carry_the_shards_of_the_ragged_step(runs, case):
    rec = runs[("split", case, "float64", "global_mean", "default")][0]
    layout = Layout.from_spec(dp_spec(case))
    assert all(len(s["shards"]) == layout.replicas for s in rec["steps"])
    step = rec["steps"][_first_ragged(case, rec) - 1]
    shards = [ids for replica in step["shards"] for ids in replica]
    assert [] in shards and all(len(ids) in (0, layout.shard) for ids in shards), shards
    # micro-batch k, replica r: rows [kG + rc, kG + (r+1)c) of the step, real ones first
    in_row_order = [i for k in range(layout.accumulate) for replica in step["shards"] for i in replica[k]]
    assert in_row_order == step["batch_ids"]


def test_the_native_average_loss_divides_a_ragged_step_by_the_constant_batch():
    """tf.nn.compute_average_loss(global_batch_size=G) on the r2-ragged last step: replica 0 holds its 8 rows,
    replica 1 only filler. The helper divides Σ w·ℓ by G = 16 rows; the step has 8: the part scales (A = 1) give
    the single-device mean, the helper half of it. On a full step the two agree. (Its `sample_weight` also casts
    the losses to float32, tf.losses' scale_losses_by_sample_weight: the weighted losses are passed instead.)"""
    import tensorflow as tf

    layout = Layout.from_spec(dp_spec("r2-ragged"))
    losses = np.random.default_rng(0).random(layout.step_rows)
    for real in (layout.step_rows, 8):
        parts = layout.split(Batch(np.arange(real), np.ones(real)))
        weights = np.array([[part.weights for part in replica] for replica in parts])
        scales = layout.part_scales(weights.sum(axis=2), averaged=1)
        weighted = [weights[r, 0] * losses[layout.rows(r, 0)] for r in range(layout.replicas)]  # w·ℓ per row
        native = sum(float(tf.nn.compute_average_loss(wl, global_batch_size=layout.micro)) for wl in weighted)
        scaled = sum(float(wl.sum() * scales[r, 0]) for r, wl in enumerate(weighted))
        mean = float(losses[:real].sum()) / real
        assert scaled == pytest.approx(mean, rel=1e-15)
        assert native == pytest.approx(mean * real / layout.step_rows, rel=1e-15)
    assert native == pytest.approx(scaled / 2, rel=1e-15)
    as_float32 = tf.nn.compute_average_loss(losses, np.ones(layout.step_rows), global_batch_size=layout.step_rows)
    assert as_float32.dtype == tf.float64 and float(as_float32) != pytest.approx(losses.mean(), rel=1e-12)


def test_the_native_regularization_scale_is_the_one_micro_batch_case():
    """tf.nn.scale_regularization_loss divides by the replicas in sync: Layout.penalty_scale(1) with K = 1."""
    import tensorflow as tf

    assert float(tf.nn.scale_regularization_loss(tf.constant(6.0))) == 6.0 * Layout(replicas=1).penalty_scale(1)
    assert Layout(replicas=2, micro=2).penalty_scale(1) == 1 / 2
    assert Layout(replicas=2, accumulate=3, micro=2).penalty_scale(1) == 1 / 6


def test_reserving_devices_after_the_runtime_started_is_a_clear_error():
    import tensorflow as tf

    from backends.tf_backend.distributed import reserve_devices

    started = len(tf.config.list_logical_devices("CPU"))
    reserve_devices(started)  # what exists already: nothing to do
    with pytest.raises(RuntimeError, match="already started"):
        reserve_devices(started + 1)
