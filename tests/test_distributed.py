"""Split steps (common.distributed): the layout, the split of a ragged step, the part scales of each reduction, the
oracle's serial split against its single-device twin, the recorded shards, the driver's shard check and the
mean-of-means cause line. Numpy only."""

import numpy as np
import pytest

from backends.numpy_backend import data as pipeline
from backends.numpy_backend.adapter import NumpyOracle
from benchmarks.report import against_single_lines
from benchmarks.single import against_single
from common.batching import Batch
from common.datasets import load_dataset
from common.distributed import Layout, ragged_steps, single_device
from common.driver import EpochRun, canonical_init, check_plan, train
from common.tolerance import tolerance_for
from tests.support import BN_SYNC, bn_spec, dp_spec, make_spec, max_rel_gap, run_in_process

pytestmark = pytest.mark.framework_free  # no ML framework: runs once, in the torch env (tox.ini)


def test_layout_global_and_per_replica_batches():
    glob = Layout.from_spec(make_spec(distributed={"replicas": 2}, batching={"batch_size": 16, "accumulate": 3}))
    assert (glob.micro, glob.shard, glob.step_rows, glob.parts) == (16, 8, 48, 6)
    per = Layout.from_spec(
        make_spec(distributed={"replicas": 2, "batch": "per_replica"}, batching={"batch_size": 16, "accumulate": 3})
    )
    assert (per.micro, per.shard, per.step_rows, per.parts) == (32, 16, 96, 6)
    assert not Layout.from_spec(make_spec()).is_split


def test_a_ragged_step_fills_micro_batches_and_replicas_in_order():
    layout = Layout(replicas=2, accumulate=2, micro=8)  # c = 4, S = 16
    parts = layout.split(Batch(np.arange(10, 20), np.ones(10)))  # 10 real rows
    ids = [[p.ids.tolist() for p in replica] for replica in parts]
    weights = [[p.weights.tolist() for p in replica] for replica in parts]
    # micro 0: replica 0 rows 0-3, replica 1 rows 4-7; micro 1: replica 0 rows 8, 9 + filler, replica 1 filler;
    # the filler cycles the step's ids (10, 11, ...)
    assert ids == [[[10, 11, 12, 13], [18, 19, 10, 11]], [[14, 15, 16, 17], [12, 13, 14, 15]]]
    assert weights == [[[1, 1, 1, 1], [1, 1, 0, 0]], [[1, 1, 1, 1], [0, 0, 0, 0]]]
    assert (layout.rows(1, 0), layout.rows(0, 1)) == (slice(4, 8), slice(8, 12))


def test_a_pad_step_keeps_its_filler_weight_zero():
    layout = Layout(replicas=2, micro=4)
    parts = layout.split(Batch(np.array([5, 6, 7, 5]), np.array([1.0, 1.0, 1.0, 0.0])))
    assert [p.weights.tolist() for replica in parts for p in replica] == [[1, 1], [1, 0]]


def test_part_scales_give_each_reduction():
    weights = np.array([[4.0, 2.0], [4.0, 0.0]])  # R = 2 replicas × K = 2 micro-batches, 10 real rows
    glob = Layout(replicas=2, accumulate=2, micro=8, reduction="global_mean")
    means = Layout(replicas=2, accumulate=2, micro=8, reduction="mean_of_means")
    # an engine dividing by A = 2 (DDP over 2 replicas): global mean 2/10 everywhere
    np.testing.assert_array_equal(glob.part_scales(weights, averaged=2), np.full((2, 2), 0.2))
    # mean of the 4 part means: A / (P · max(n, 1)) = 2 / (4 · n); the empty part's Σ w·ℓ is 0 whatever its scale
    np.testing.assert_array_equal(means.part_scales(weights, averaged=2), [[0.125, 0.25], [0.125, 0.5]])
    assert glob.penalty_scale(averaged=2) == 0.5 and glob.penalty_scale(averaged=4) == 1.0


def test_the_single_device_twin_takes_a_whole_step_as_one_batch():
    spec = dp_spec("r2-k2")
    twin = single_device(spec)
    assert (twin.batching.batch_size, twin.batching.accumulate, twin.distributed.replicas) == (28, 1, 1)
    assert twin.batching.reduction == spec.batching.reduction and twin.optimizer == spec.optimizer


@pytest.mark.parametrize("case", ["r2-ragged", "k4", "r2-k2"])
def test_the_oracle_split_equals_its_single_device_twin(case):
    spec = dp_spec(case)
    loss, params = max_rel_gap(run_in_process("numpy", spec), run_in_process("numpy", single_device(spec)))
    assert loss <= 1e-12 and params <= 1e-12, (loss, params)


@pytest.mark.parametrize(("case", "replicas_seen"), [("bn-r2", [0]), (BN_SYNC, [0, 1])])
def test_the_running_statistics_are_the_first_replicas_or_the_synchronised_ones(case, replicas_seen):
    """After one split step from the init (bn0 right after the bias-free dense layer0, momentum 0.9): mean =
    0.1·μ and var = 0.9 + 0.1·σ²_b of h = x·W over the rows of replica 0 (sync = false) or of both (sync = true)."""
    spec = bn_spec(case)
    data = load_dataset(spec)
    plan, layers = check_plan(spec, data)
    oracle = NumpyOracle(spec)
    oracle.prepare(spec, data, plan, layers, canonical_init(spec, data))
    weight = oracle.params["layer0.weight"].copy()
    batch = plan.batches(0)[0]
    parts = oracle.layout.split(batch)
    h = np.concatenate([pipeline.rows(spec, data, "train", parts[r][0]).x for r in replicas_seen]) @ weight
    oracle._split_step(1, batch)
    assert np.allclose(oracle.params["bn0.mean"], 0.1 * h.mean(axis=0), rtol=1e-12, atol=0)
    assert np.allclose(oracle.params["bn0.var"], 0.9 + 0.1 * h.var(axis=0), rtol=1e-12, atol=0)


def test_synchronised_batch_norm_equals_the_twin_and_per_replica_does_not():
    sync = max_rel_gap(
        run_in_process("numpy", bn_spec(BN_SYNC)), run_in_process("numpy", single_device(bn_spec(BN_SYNC)))
    )
    assert max(sync) <= 1e-12, sync
    apart = max_rel_gap(
        run_in_process("numpy", bn_spec("bn-r2")), run_in_process("numpy", single_device(bn_spec("bn-r2")))
    )
    assert apart[0] > 1e-6 and apart[1] > 1e-6, apart  # statistics over 8 rows, not 16


def test_mean_of_means_differs_right_after_each_ragged_step():
    glob, _ = run_in_process("numpy", dp_spec("r2-ragged"))
    means, _ = run_in_process("numpy", dp_spec("r2-ragged", reduction="mean_of_means"))
    assert ragged_steps(glob["steps"]) == [8, 16]  # 120 rows = 7 × 16 + 8: replica 1 holds no row
    assert glob["steps"][7]["shards"][1] == [[]] and len(glob["steps"][7]["shards"][0][0]) == 8
    a, b = (np.array([s["loss"] for s in r["steps"]]) for r in (glob, means))
    rel = np.abs(a - b) / np.abs(a)
    assert rel[:8].max() <= 1e-15  # steps 1-8: every earlier part was full, the same gradient
    assert rel[8] > 1e-4  # step 9 sees the update of ragged step 8: 8 rows weighed as half the step


def test_the_driver_refuses_shards_other_than_the_plan():
    class Swapped(NumpyOracle):
        def run_epoch(self, epoch, first_step):
            run = super().run_epoch(epoch, first_step)
            run.shards[0][0], run.shards[0][1] = run.shards[0][1], run.shards[0][0]
            return EpochRun(run.ids, run.lengths, run.losses, run.shards)

    spec = dp_spec("r2-ragged")
    with pytest.raises(RuntimeError, match="fed step 1 of epoch 1 the shards"):
        train(Swapped(spec), spec, load_dataset(spec))


def test_against_single_names_mean_of_means():
    spec = dp_spec("k4", reduction="mean_of_means")
    result = against_single(
        {"numpy": run_in_process("numpy", spec)},
        {"numpy": run_in_process("numpy", single_device(spec))},
        tolerance_for(spec.dtype, spec.mode),
    )
    assert not result["equivalent"]
    assert [c["trap"] for c in result["causes"]] == ["mean-of-means"]
    text = "\n".join(against_single_lines(result))
    assert "first differ at step 9, right after ragged step 8" in text and "DIFFERENT" in text
