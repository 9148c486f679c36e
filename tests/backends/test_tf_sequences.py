"""TensorFlow / Keras sequence models (seq_pool, rnn): the tf.data pipelines reproduce common.padding.pad_batch for
the plan's batches, exact mode agrees with the numpy oracle, all-padded rows and batches stay finite, and the
graph step is traced once for every batch size and padded length."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from backends.tf_backend import model as tf_model  # noqa: E402
from backends.tf_backend.adapter import make_adapter  # noqa: E402
from backends.tf_backend.data import Tokens  # noqa: E402
from common.batching import BatchPlan, eval_batches  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.driver import canonical_init, model_layers, train  # noqa: E402
from common.padding import loss_weights, pad_batch  # noqa: E402
from tests.support import compare_with_oracle, divergences, run_in_process, seq_spec, worst_tolerance_used  # noqa: E402

RNN = {"kind": "rnn", "hidden": [5]}


# --- the native pipelines against common.padding.pad_batch ----------------------------------------------------

PIPELINES = [
    # (sequence section, last_batch): padded_batch, pad_sequences (+ truncation), bucket_by_sequence_length
    ({"pad": "post"}, "keep"),
    ({"pad": "pre"}, "pad"),
    ({"pad": "pre", "truncate": "pre", "max_len": 6}, "keep"),
    ({"pad": "post", "truncate": "pre", "max_len": 6}, "drop"),
    ({"pad": "pre", "truncate": "post", "max_len": 6}, "pad"),
    ({"pad": "post", "buckets": [4, 10]}, "keep"),
    ({"pad": "pre", "truncate": "pre", "buckets": [3, 6]}, "pad"),
    ({"pad": "post", "truncate": "post", "buckets": [3, 6], "loss_norm": "per_token"}, "drop"),
    ({"pad": "pre", "truncate": "post", "buckets": [3, 6], "loss_norm": "per_token"}, "keep"),
]


@pytest.mark.parametrize("seq,last", PIPELINES, ids=[f"{s}-{last}" for s, last in PIPELINES])
def test_pipeline_batches_are_pad_batch_of_the_plan(seq, last):
    spec = seq_spec(sequence=seq, batching={"last_batch": last})
    data = load_dataset(spec)
    plan = BatchPlan.from_spec(spec, data.train_x.shape[0], data.train_lengths)
    sides = (spec.sequence.pad, spec.sequence.truncate)
    pipeline = Tokens(spec, data, plan)
    cap = seq.get("max_len") or seq.get("buckets", [0])[-1]
    if cap and cap < 10:  # a truncating case must actually cut rows
        assert data.train_lengths.max() > cap
    for epoch in range(2):
        planned = plan.batches(epoch)
        delivered = list(pipeline.epoch(epoch))
        assert len(delivered) == len(planned)
        for got, batch in zip(delivered, planned, strict=True):
            assert np.array_equal(got.ids, batch.ids)
            tokens, _, kept = pad_batch(data.sequences("train", batch.ids), *sides, batch.length)
            assert got.x.shape == (batch.rows, batch.length) and got.length == batch.length
            assert np.array_equal(got.x.numpy(), tokens)
            assert np.array_equal(got.lengths.numpy(), kept)
            assert np.array_equal(
                got.weights.numpy(), loss_weights(batch.weights, kept, seq.get("loss_norm", "per_sequence"))
            )
            assert np.array_equal(got.y.numpy(), data.train_y[batch.ids])


@pytest.mark.parametrize("sides", [("pre", "pre"), ("post", "post"), ("pre", "post")])
def test_eval_batches_are_pad_batch(sides):
    spec = seq_spec(
        sequence={"buckets": [3, 6], "pad": sides[0], "truncate": sides[1]}, batching={"eval_batch_size": 5}
    )
    data = load_dataset(spec)
    pipeline = Tokens(spec, data, BatchPlan.from_spec(spec, data.train_x.shape[0], data.train_lengths))
    for batch in eval_batches(data.test_x.shape[0], 5, data.test_lengths, 0, [3, 6]):
        want, _, kept = pad_batch(data.sequences("test", batch.ids), *sides, batch.length)
        rows = pipeline.eval_rows("test", batch)
        assert np.array_equal(rows.x.numpy(), want) and np.array_equal(rows.lengths, kept)


# --- exact mode against the numpy oracle -------------------------------------------------------------------------

CASES = {
    "pool-post": {},
    "pool-pre": {"sequence": {"pad": "pre"}},
    "rnn-post": {"model": RNN},
    "rnn-pre": {"model": RNN, "sequence": {"pad": "pre"}},
    "rnn-maxlen-truncate-pre-post-pad": {"model": RNN, "sequence": {"max_len": 6, "truncate": "pre"}},
    "pool-maxlen-truncate-post-pre-pad": {"sequence": {"max_len": 6, "truncate": "post", "pad": "pre"}},
    "rnn-buckets-keep": {"model": RNN, "sequence": {"buckets": [4, 10], "pad": "pre"}},
    "pool-buckets-pad-per-token": {
        "sequence": {"buckets": [4, 10], "loss_norm": "per_token"},
        "batching": {"last_batch": "pad"},
    },
    "rnn-per-token-truncating-buckets": {
        "model": RNN,
        "sequence": {"buckets": [3, 6], "loss_norm": "per_token", "truncate": "pre"},
    },
    "rnn-dropout-l2-momentum": {
        "model": RNN,
        "regularization": {"dropout": 0.3, "l2": 1e-3},
        "optimizer": {"momentum": 0.9},
    },
    "pool-dropout-tanh-two-hidden": {
        "model": {"hidden": [6, 5], "activation": "tanh"},
        "regularization": {"dropout": 0.3},
    },
    "pool-adam-l1-coupled-wd-bias": {
        "optimizer": {"name": "adam", "lr": 0.01},
        "regularization": {"l1": 1e-3, "weight_decay": 1e-3, "regularize_bias": True},
    },
    "rnn-adamw-decoupled-l1sum": {
        "model": RNN,
        "optimizer": {"name": "adamw", "lr": 0.01},
        "regularization": {"weight_decay": 1e-2, "decay": "decoupled", "l1": 1e-4, "l1_reduction": "sum"},
    },
    # Adam / AdamW with no penalty on the embedding: its gradient stays sparse (IndexedSlices) up to the optimizer
    "pool-adam-sparse-embedding": {"optimizer": {"name": "adam", "lr": 0.01}},
    "rnn-adamw-decoupled-bias-drop-glorot": {
        "model": {**RNN, "init": "glorot_uniform"},
        "sequence": {"pad": "pre", "truncate": "post", "max_len": 6},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "regularization": {"weight_decay": 1e-2, "decay": "decoupled", "regularize_bias": True, "dropout": 0.3},
    },
    "rnn-unmasked-pre": {"model": RNN, "sequence": {"mask": False, "pad": "pre"}},
    "pool-unmasked-post-buckets": {"sequence": {"mask": False, "buckets": [4, 10]}},
    "rnn-xla-pre-buckets": {
        "model": RNN,
        "execution": "compiled",
        "sequence": {"pad": "pre", "buckets": [4, 10]},
        "regularization": {"dropout": 0.3},
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_float64_exact_mode_agrees_with_oracle(case):
    cmp = compare_with_oracle("tf", seq_spec(**CASES[case]))
    assert divergences(cmp) == []
    assert cmp["tolerance"]["rtol"] == 1e-9
    assert worst_tolerance_used(cmp) < 0.5


@pytest.mark.parametrize(
    "case", ["rnn-dropout-l2-momentum", "pool-buckets-pad-per-token", "rnn-adamw-decoupled-bias-drop-glorot"]
)
def test_float32_exact_mode_agrees_with_oracle(case):
    cmp = compare_with_oracle("tf", seq_spec("float32", **CASES[case]))
    assert cmp["tolerance"]["rtol"] == 1e-4
    assert divergences(cmp) == []


def test_keras_adam_squares_sparse_embedding_gradients_per_occurrence():
    """The trap execution.step_body(dense_gradients=True) converts: a token seen twice in a batch gives the
    Embedding an IndexedSlices gradient with two slices; Keras Adam's `ops.square` squares them one by one, so its
    second moment v gets (1−β2)·(g1² + g2²) instead of (1−β2)·(g1 + g2)²."""
    grad = tf.IndexedSlices(tf.constant([[1.0], [2.0]], tf.float64), tf.constant([0, 0]), tf.constant([2, 1]))
    for densify, expected in ((False, 1.0 + 4.0), (True, 3.0**2)):
        var = keras.Variable(np.zeros((2, 1)), dtype="float64")
        opt = keras.optimizers.Adam(0.1)
        opt.build([var])
        opt.apply_gradients([(tf.convert_to_tensor(grad) if densify else grad, var)])
        assert np.isclose(opt._velocities[0].numpy()[0, 0], (1 - 0.999) * expected, rtol=1e-12)


def test_records_carry_the_plans_ids_lengths_and_tf_sides():
    spec = seq_spec(
        model=RNN, sequence={"pad": "native", "truncate": "native", "buckets": [3, 6]}, batching={"last_batch": "pad"}
    )
    rec, _ = run_in_process("tf", spec)
    data = load_dataset(spec)
    plan = BatchPlan.from_spec(spec, data.train_x.shape[0], data.train_lengths)
    planned = plan.batches(0) + plan.batches(1)
    assert [s["padded_length"] for s in rec["steps"]] == [b.length for b in planned]
    assert [s["batch_ids"] for s in rec["steps"]] == [b.real_ids.tolist() for b in planned]
    assert rec["padding"] == {"pad": "pre", "truncate": "pre"}  # Keras pad_sequences defaults


def test_graph_step_traces_once_for_every_batch_shape():
    """The input signature has None for B and T: ragged last batches and every bucket reuse one graph."""
    spec = seq_spec(model=RNN, sequence={"buckets": [3, 6, 10]})
    data = load_dataset(spec)
    adapter = make_adapter(spec)
    body = train(adapter, spec, data)
    assert len({s["padded_length"] for s in body["steps"]}) == 3
    assert len({s["batch_size"] for s in body["steps"]}) > 1
    assert adapter.runner.step.experimental_get_tracing_count() == 1
    assert adapter._forward.experimental_get_tracing_count() == 1


# --- all-padded rows and batches ------------------------------------------------------------------------------


def _model_and_batch(kind: str, side: str):
    spec = seq_spec(model=RNN if kind == "rnn" else {}, sequence={"pad": side})
    data = load_dataset(spec)
    model = tf_model.build(model_layers(spec, data), spec)
    tf_model.load_canonical(model, canonical_init(spec, data))
    seqs = [np.array([3, 5, 2]), np.array([], dtype=np.int64), np.array([7])]
    tokens, _, _ = pad_batch(seqs, side, "post", 4)
    return model, tokens, np.array([0, 1, 2])


def _loss_and_grads(model, tokens, labels, weights):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight", dtype="float64"
    )
    with tf.GradientTape() as tape:
        loss = loss_fn(labels, model(tokens, training=True), sample_weight=weights)
    return loss, tape.gradient(loss, model.trainable_variables)


@pytest.mark.parametrize("kind", ["seq_pool", "rnn"])
@pytest.mark.parametrize("side", ["post", "pre"])
def test_all_padded_row_and_batch_are_finite(kind, side):
    model, tokens, labels = _model_and_batch(kind, side)
    assert not tokens[1].any()
    # the all-padded row's summary is the zero vector (pooled mean with max(Σm, 1); the untouched RNN state); the
    # Embedding's mask reaches the next layer through Keras itself
    embed, summarize = model.stack[:2]
    summary = summarize(embed(tokens))
    assert np.all(np.isfinite(summary.numpy())) and not summary.numpy()[1].any()
    loss, grads = _loss_and_grads(model, tokens, labels, np.array([1.0, 0.0, 1.0]))
    assert np.isfinite(loss.numpy()) and loss.numpy() > 0
    assert all(np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in grads)
    # a batch with no real row (Σm = 0): loss 0 (Keras's divide_no_nan = Σmℓ / max(Σm, 1)), zero gradients
    empty = np.zeros_like(tokens)
    loss, grads = _loss_and_grads(model, empty, labels, np.zeros(3))
    assert loss.numpy() == 0.0
    assert all(np.all(tf.convert_to_tensor(g).numpy() == 0.0) for g in grads if g is not None)


# --- native mode -----------------------------------------------------------------------------------------------


def test_native_mode_runs_with_keras_defaults():
    spec = seq_spec(
        mode="native",
        model=RNN,
        sequence={"pad": "native", "truncate": "native", "max_len": 6},
        regularization={"dropout": 0.3, "l2": 1e-3},
    )
    rec, _ = run_in_process("tf", spec)
    assert rec["padding"] == {"pad": "pre", "truncate": "pre"}
    assert all(np.isfinite(s["loss"]) and s["padded_length"] == 6 for s in rec["steps"])
    assert sorted(i for s in rec["steps"][:11] for i in s["batch_ids"]) == list(range(72))
