"""TensorFlow split steps (backends.tf_backend.distributed): MirroredStrategy over logical CPU devices and
accumulation inside each replica against the numpy oracle's serial split and against the backend's own
single-device twin (common.distributed.single_device), both reductions, the shards each replica was fed, compiled
execution, and the two tf.nn helpers exact mode does not use on a ragged step. Native mode (common.native
SPLIT_IDIOMS["tf"]): tf.data's global batches rebatched by tf.distribute, measured from the records, and the port's
`compute_average_loss(global_batch_size=G) / K` in the replica's code path. batch_norm under split steps: the
evaluation reads replica 0's moving statistics, and compiled execution refuses a synchronised batch_norm over
replicas.

The runs train in one worker process (`python -m backends.worker`, which reserves the logical devices first)."""

import dataclasses

import numpy as np
import pytest

from common.batching import Batch
from common.datasets import load_dataset
from common.distributed import Layout
from common.driver import model_layers
from common.native import SPLIT_IDIOMS
from tests.dp_acceptance import *  # noqa: F403  (the shared acceptance tests, collected on this module's `runs`)
from tests.support import (
    BN_CASES,
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

pytestmark = pytest.mark.skipif(not installed("tf"), reason="needs tensorflow and keras (pip install -e '.[tf]')")

# Native mode on 105 training rows (iris, 30 % test), R = 2, G = 8, K = 3: 13 global batches of 8 and one of 1 row
# per epoch ("drop": the 13 full ones), i.e. steps of 3, 3, 3, 3 and 2 (drop: 1) micro-batches.
ODD = {"rows": 105, "replicas": 2, "micro": 8, "accumulate": 3}


def _odd_spec(last_batch: str):
    return make_spec(
        dtype="float64",
        mode="native",
        name=f"native-odd-{last_batch}",
        data={"test_fraction": 0.3},
        distributed={"replicas": ODD["replicas"]},
        batching={"batch_size": ODD["micro"], "accumulate": ODD["accumulate"], "last_batch": last_batch},
        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
        regularization={"dropout": 0.3, "weight_decay": 0.001},
        train={"epochs": 2},
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(record JSON, NPZ) of every acceptance run (tests.support.dp_jobs), r2-ragged compiled (exact and native) and
    the native odd runs, trained by one tf worker."""
    jobs = dp_jobs()
    compiled = dataclasses.replace(dp_spec("r2-ragged"), execution="compiled")
    jobs[("split", "r2-ragged", "float64", "global_mean", "compiled")] = compiled
    jobs |= {("native", f"odd-{last}"): _odd_spec(last) for last in ("keep", "drop")}
    jobs[("native", "r2-ragged", "compiled")] = dataclasses.replace(compiled, mode="native")
    return worker_records("tf", jobs, tmp_path_factory.mktemp("tf-dp"))


def test_compiled_replicas_match_the_oracle(runs):
    """execution = "compiled": each replica's forward/backward passes under XLA, the all-reduce and update not."""
    oracle = run_in_process("numpy", dp_spec("r2-ragged"))
    losses, params = max_rel_gap(runs[("split", "r2-ragged", "float64", "global_mean", "compiled")], oracle)
    assert losses <= 1e-9 and params <= 1e-9, (losses, params)


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


NATIVE = [*sorted(DP_CASES), "odd-keep", "odd-drop"]


@pytest.mark.parametrize("key", [("native", name) for name in NATIVE] + [("native", "r2-ragged", "compiled")])
def test_native_split_runs_record_the_idiom_and_the_rows_each_replica_got(runs, key):
    rec = runs[key][0]
    assert rec["split"] == SPLIT_IDIOMS["tf"]
    replicas = rec["spec"]["distributed"]["replicas"]
    for step in rec["steps"]:
        assert len(step["shards"]) == replicas
        fed = [i for replica in step["shards"] for ids in replica for i in ids]
        assert sorted(fed) == sorted(step["batch_ids"]) and step["batch_size"] == len(fed)


def _rebatched(rows: int, replicas: int) -> list[int]:
    """tf.distribute's rebatching of a global batch of `rows` (no static batch size): R consecutive pieces of
    ⌈rows/R⌉ rows, the last ones short or empty."""
    piece = -(-rows // replicas)
    return [max(0, min(piece, rows - r * piece)) for r in range(replicas)]


@pytest.mark.parametrize("last", ["keep", "drop"])
def test_native_global_batches_are_cut_over_the_replicas_by_tf_distribute(runs, last):
    """Measured from the record: per epoch the global batches of G rows (keep: 13 of 8 and one of 1; drop: the
    13 full ones), K = 3 per step and the epoch's rest in a last step, each cut over the replicas by
    tf.distribute, the first replicas first: 8 rows → 4 + 4, the ragged 1 row → 1 + 0 (replica 1 empty); every
    row once per epoch (drop: all but one), in a new order in epoch 2."""
    rec = runs[("native", f"odd-{last}")][0]
    rows, g, k, r = ODD["rows"], ODD["micro"], ODD["accumulate"], ODD["replicas"]
    micro = [g] * (rows // g) + ([rows % g] if last == "keep" else [])  # 13 × 8 (+ 1)
    want = [[_rebatched(n, r) for n in micro[i : i + k]] for i in range(0, len(micro), k)]  # [step][micro][replica]
    assert [len(step) for step in want] == ([3, 3, 3, 3, 2] if last == "keep" else [3, 3, 3, 3, 1])
    orders = []
    for epoch in (1, 2):
        steps = [s for s in rec["steps"] if s["epoch"] == epoch]
        got = [[[len(s["shards"][i][j]) for i in range(r)] for j in range(len(s["shards"][0]))] for s in steps]
        assert got == want
        order = [i for s in steps for i in s["batch_ids"]]
        assert len(set(order)) == len(order) == (rows if last == "keep" else rows - rows % g)
        orders.append(order)
    if last == "keep":
        assert want[-1][-1] == [1, 0]
        assert sorted(orders[0]) == sorted(orders[1]) == list(range(rows))
    assert orders[0] != orders[1]  # reshuffle_each_iteration


def test_native_replica_loss_divides_by_the_global_batch_and_k():
    """The port's loss of one replica's micro-batch: 8 rows of loss 1 with G = 16, K = 4 give 0.5 / 4 (not the
    rows' mean 1 / 4); a penalty 3 adds 3 / (R·K) = 3 / 4 (one replica here)."""
    import tensorflow as tf

    from backends.tf_backend.distributed import native_loss

    ones = tf.ones(8, tf.float64)
    assert float(native_loss(ones, [], global_batch=16, accumulate=4)) == 0.5 / 4
    assert float(native_loss(ones, [tf.constant(3.0, tf.float64)], global_batch=16, accumulate=4)) == 0.5 / 4 + 3 / 4


def test_native_replica_gradients_divide_a_ragged_micro_batch_by_g_times_k():
    """In the runner's own code path (k4: G = 4, K = 4, one replica; no dropout): the gradients of a ragged
    micro-batch of 2 rows are ∇Σℓ / (G·K) = ∇Σℓ / 16 plus the Keras L2 penalties' ∇ / K, not ∇Σℓ / (2·K)."""
    import keras
    import tensorflow as tf

    spec = dataclasses.replace(dp_spec("k4"), mode="native")
    spec = dataclasses.replace(spec, regularization=dataclasses.replace(spec.regularization, dropout=0.0))
    adapter, data = prepared_adapter("tf", spec)
    runner, model = adapter.runner, adapter.model
    part = {
        "x": tf.constant(data.train_x[:2], tf.float64),
        "y": tf.constant(data.train_y[:2], tf.int64),
        "ids": tf.constant([0, 1], tf.int64),
    }
    grads, loss_sum, rows = runner.gradients([part])
    with tf.GradientTape(persistent=True) as tape:
        ce = tf.reduce_sum(
            keras.losses.sparse_categorical_crossentropy(part["y"], model(part["x"], training=True), from_logits=True)
        )
        penalty = tf.add_n(model.losses)
    assert model.losses and float(rows) == 2 and float(loss_sum) == pytest.approx(float(ce), rel=1e-12)
    variables = model.trainable_variables
    penalties = tape.gradient(penalty, variables)  # None for the biases: no penalty
    for got, g_ce, g_penalty in zip(grads, tape.gradient(ce, variables), penalties, strict=True):
        want = g_ce / 16 + (0.0 if g_penalty is None else g_penalty / 4)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("case", sorted(BN_CASES))
def test_batch_norm_evaluation_reads_the_first_replicas_statistics(runs, case):
    """Each epoch's evaluation (train and test losses, with the moving statistics) matches the oracle's ≤ 1e-9: a
    cross-replica read of a moving statistic gives replica 0's copy, the canonical first replica's chain (under
    sync = false the replicas' copies differ)."""
    got, want = runs[("bn", case, "float64")][0]["epochs"], run_in_process("numpy", bn_spec(case))[0]["epochs"]
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        for key in ("train_loss", "test_loss"):
            assert abs(a[key] - b[key]) <= 1e-9 * abs(b[key]), (case, a["epoch"], key, a[key], b[key])


def test_compiled_refuses_a_synchronised_batch_norm_over_replicas():
    """Its all-reduce would sit in each replica's XLA function: refused for R > 1; eager, one replica, or
    per-replica statistics run."""
    from backends.tf_backend.distributed import check_compiled

    def layers(case):
        spec = bn_spec(case)
        return model_layers(spec, load_dataset(spec))

    r2 = Layout.from_spec(bn_spec("bn-r2-sync"))
    with pytest.raises(ValueError, match=r"batch_norm bn0 \(model.layers\[1\], sync = true\).*execution = 'eager'"):
        check_compiled(r2, layers("bn-r2-sync"), "compiled")
    check_compiled(r2, layers("bn-r2-sync"), "eager")
    check_compiled(Layout(accumulate=2, micro=8), layers("bn-r2-sync"), "compiled")
    check_compiled(r2, layers("bn-r2"), "compiled")
