"""JAX split steps (backends.jax_backend.distributed): a Mesh of host devices, the micro-batch sharded over it (jit
for global_mean, shard_map + pmean for mean_of_means) and optax.MultiSteps accumulation, against the numpy oracle's
serial split and against the backend's own single-device twin (common.distributed.single_device), both reductions,
eager and compiled, the shards of a ragged step, one compile per micro-batch shape, and the device reservation;
batch_norm (global_mean on the shard_map, the gradients psum-ed) also under mean_of_means and accumulated on one
device (R = 1, K = 2).
Native mode (common.native.SPLIT_IDIOMS, jax): sharded global micro-batches into optax.MultiSteps with its defaults,
its steps counted by hand: updates every K-th micro-batch across epochs, the float32 accumulator.

The runs train in one worker process (`python -m backends.worker`, which reserves the host devices first)."""

import dataclasses
from collections import Counter

import numpy as np
import pytest

from common.batching import Batch
from common.distributed import Layout
from common.native import SPLIT_IDIOMS
from tests.dp_acceptance import *  # noqa: F403  (the shared acceptance tests, collected on this module's `runs`)
from tests.support import (
    DP_CASES,
    bn_spec,
    dp_jobs,
    dp_spec,
    installed,
    make_spec,
    max_rel_gap,
    prepared_adapter,
    run_in_process,
    worker_records,
)

pytestmark = pytest.mark.skipif(not installed("jax"), reason="needs jax, flax and optax (pip install -e '.[jax]')")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(record JSON, NPZ) of every acceptance run (tests.support.dp_jobs), r2-ragged eager and bn-r2-k2 under
    mean_of_means, one jax worker."""
    jobs = dp_jobs()
    jobs[("split", "r2-ragged", "float64", "global_mean", "eager")] = dataclasses.replace(
        dp_spec("r2-ragged"), execution="eager"
    )
    jobs[("bn", "bn-r2-k2", "float64", "mean_of_means")] = bn_of_means()
    return worker_records("jax", jobs, tmp_path_factory.mktemp("jax-dp"))


def bn_of_means():
    """bn-r2-k2 under mean_of_means."""
    spec = bn_spec("bn-r2-k2")
    return dataclasses.replace(spec, batching=dataclasses.replace(spec.batching, reduction="mean_of_means"))


def test_eager_replicas_match_the_compiled_ones(runs):
    """execution = "eager": the same step dispatched op by op on the sharded arrays."""
    eager = runs[("split", "r2-ragged", "float64", "global_mean", "eager")]
    losses, params = max_rel_gap(eager, runs[("split", "r2-ragged", "float64", "global_mean")])
    assert losses <= 1e-9 and params <= 1e-9, (losses, params)


def test_one_compile_and_the_devices_own_shards_on_a_one_device_mesh():
    """k4 (R = 1, K = 4): the same engine on a one-device mesh; every micro-batch has one shape (one compile), and
    the shards read back from the device are the plan's split, filler included."""
    spec = dp_spec("k4")
    adapter, _ = prepared_adapter("jax", spec)
    run = adapter.run_epoch(0, 1)
    assert adapter.compile_count == 1
    layout = Layout.from_spec(spec)
    for got, batch in zip(run.shards, adapter.plan.batches(0), strict=True):
        assert [[ids.tolist() for ids in replica] for replica in got] == [
            [part.ids.tolist() for part in replica] for replica in layout.split(batch)
        ]


def test_batch_norm_under_mean_of_means_matches_the_oracle(runs):
    """bn-r2-k2 with mean_of_means: the shard_map's pmean-ed gradients (A = R) with per-replica and synchronised
    statistics; every part is full, so the update is global_mean's."""
    losses, params = max_rel_gap(
        runs[("bn", "bn-r2-k2", "float64", "mean_of_means")], run_in_process("numpy", bn_of_means())
    )
    assert losses <= 1e-9 and params <= 1e-9, (losses, params)


def test_batch_norm_accumulated_on_one_device_matches_the_oracle():
    """R = 1, K = 2 (bn-r2-k2 on one replica): the jit path, batch_stats updated by each micro-batch and carried
    into the next while MultiSteps sums the gradients."""
    spec = bn_spec("bn-r2-k2")
    spec = dataclasses.replace(spec, distributed=dataclasses.replace(spec.distributed, replicas=1))
    losses, params = max_rel_gap(run_in_process("jax", spec), run_in_process("numpy", spec))
    assert losses <= 1e-9 and params <= 1e-9, (losses, params)


def test_reserving_devices_after_the_backend_started_is_a_clear_error():
    import jax

    from backends.jax_backend.distributed import reserve_devices

    started = len(jax.devices("cpu"))
    reserve_devices(started)  # what exists already: nothing to do
    with pytest.raises(RuntimeError, match="already started"):
        reserve_devices(started + 1)


# Native split steps counted by hand (iris: 120 training rows, 2 epochs): per case the epoch of every optimizer step
# (a MultiSteps update) and, for chosen 1-based steps, the real rows per [replica][micro-batch] of its shards.
NATIVE_STEPS = {
    # G = 16 (c = 8), K = 1: 7 full micro-batches and a ragged one of 8 rows per epoch, all on replica 0 (replica 1
    # holds weight-0 filler only)
    "r2-ragged": ([1] * 8 + [2] * 8, {8: [[8], [0]], 16: [[8], [0]]}),
    # G = 4, K = 4: 30 micro-batches per epoch, ⌊30/4⌋ = 7 updates; the 2 left over open epoch 2's first update,
    # which then makes ⌊(2 + 30)/4⌋ = 8
    "k4": ([1] * 7 + [2] * 8, {8: [[4, 4, 4, 4]]}),
    # per_replica: G = 2·7 = 14 (c = 7), K = 2: 8 full micro-batches and one of 8 rows (7 + 1) per epoch: 4 updates,
    # the 9th micro-batch carried into step 5 (its micro-batch 0), then ⌊(1 + 9)/2⌋ = 5 updates in epoch 2
    "r2-k2": ([1] * 4 + [2] * 5, {5: [[7, 7], [1, 7]], 9: [[7, 7], [7, 1]]}),
}


@pytest.mark.parametrize("case", sorted(DP_CASES))
def test_native_split_steps_record_the_idiom_and_what_each_part_was_fed(runs, case):
    rec = runs[("native", case)][0]
    assert rec["split"] == SPLIT_IDIOMS["jax"]
    epochs, sizes = NATIVE_STEPS[case]
    assert [s["epoch"] for s in rec["steps"]] == epochs
    layout = Layout.from_spec(dp_spec(case))
    for s in rec["steps"]:
        assert len(s["shards"]) == layout.replicas and all(len(r) == layout.accumulate for r in s["shards"])
        fed = [i for replica in s["shards"] for ids in replica for i in ids]
        assert Counter(fed) == Counter(s["batch_ids"]) and len(fed) == s["batch_size"]
        assert all(len(ids) <= layout.shard for replica in s["shards"] for ids in replica)
    for step, want in sizes.items():
        assert [[len(ids) for ids in r] for r in rec["steps"][step - 1]["shards"]] == want


def test_native_multisteps_carries_the_epochs_last_micro_batches_into_the_next_update(runs):
    """k4: MultiSteps counts its K = 4 calls over the whole run: epoch 2's first update (step 8) averages the two
    micro-batches epoch 1 left over, the 8 rows steps 1–7 did not feed, then epoch 2's first two."""
    steps = runs[("native", "k4")][0]["steps"]
    first = [i for s in steps[:7] for i in s["batch_ids"]]
    assert len(set(first)) == 112 == len(first)
    carried = steps[7]["shards"][0][0] + steps[7]["shards"][0][1]
    assert sorted(carried) == sorted(set(range(120)) - set(first))
    second = steps[7]["shards"][0][2] + steps[7]["shards"][0][3] + [i for s in steps[8:] for i in s["batch_ids"]]
    assert sorted(second) == list(range(120))  # epoch 2: one permutation, fed whole


def test_native_accumulator_is_multisteps_default_float32_under_a_float64_spec():
    """The idiom as constructed: optax.MultiSteps(tx, every_k_schedule=4) with its defaults keeps the running mean
    in float32 while the parameters are float64 (trap accumulator_dtype)."""
    import jax
    import optax

    adapter, _ = prepared_adapter("jax", dataclasses.replace(dp_spec("k4", "float64"), mode="native"))
    assert isinstance(adapter.tx, optax.MultiSteps)
    assert {leaf.dtype for leaf in jax.tree.leaves(adapter.opt_state.acc_grads)} == {np.dtype("float32")}
    assert {leaf.dtype for leaf in jax.tree.leaves(adapter.params)} == {np.dtype("float64")}


def test_native_update_is_the_mean_of_the_micro_batch_means():
    """The idiom in the code path (the adapter's step and MultiSteps, K = 2, plain SGD): a micro-batch of 4 real rows,
    then one of 1 real row and 3 weight-0 filler rows. The first call leaves the parameters alone; the second moves
    them by −lr·(∇mean₁ + ∇mean₂)/2, the mean of the micro-batch means (to float32: the accumulator's), not the global
    mean's −lr·∇(Σ₅ ℓ)/5."""
    import jax
    import optax

    spec = make_spec(
        dtype="float64",
        mode="native",
        batching={"batch_size": 4, "accumulate": 2},
        optimizer={"lr": 0.1, "momentum": 0.0},
    )
    adapter, data = prepared_adapter("jax", spec)
    start = adapter.params
    micro = [Batch(np.arange(4), np.ones(4)), Batch(np.array([4, 0, 1, 2]), np.array([1.0, 0.0, 0.0, 0.0]))]
    moved = []
    for t, batch in enumerate(micro, 1):
        rows, _ = adapter.engine.sharded(adapter.pipeline, batch)
        adapter.params, adapter.opt_state, _ = adapter.run.step(
            adapter.params, adapter.opt_state, rows.x, rows.y, rows.weights, None, t
        )
        moved.append(adapter.params)

    def grad_of_sum(ids):
        def loss(variables):
            logits = adapter.model.apply(variables, data.train_x[ids])
            return optax.softmax_cross_entropy_with_integer_labels(logits, data.train_y[ids]).sum()

        return jax.grad(loss)(start)

    first, second = grad_of_sum(np.arange(4)), grad_of_sum(np.array([4]))
    means = jax.tree.map(lambda w, a, b: w - 0.1 * (a / 4 + b / 1) / 2, start, first, second)
    global_ = jax.tree.map(lambda w, a, b: w - 0.1 * (a + b) / 5, start, first, second)

    def gap(a, b):
        return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))

    assert gap(moved[0], start) == 0.0
    assert 0.0 < gap(moved[1], means) <= 1e-7  # the first gradient went through the float32 accumulator
    assert gap(moved[1], global_) > 1e-4
