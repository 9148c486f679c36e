"""JAX sequence models (flax linen seq_pool / rnn, manual padding to the plan's static shapes): agreement with the
numpy oracle (float64 to the exact tolerance, float32 to rtol 1e-4; batch ids and padded lengths equal to the
plan), one train-step compile per (B, T) shape (buckets bound the count, no buckets show more), the pipeline's
padding against common.padding.pad_batch, pre-padded masked RNN equal to post-padded, unmasked pre ≠ post,
finite loss/gradients on all-padded rows and batches, the canonical ⇄ flax mapping, and native mode.

Compile time dominates (~1 s per RNN shape on CPU), so the specs mostly fix T (max_len or buckets) and use
last_batch "pad" (one batch shape)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from backends.jax_backend import data as pipelines  # noqa: E402
from backends.jax_backend import model as flax_model  # noqa: E402
from backends.jax_backend.adapter import make_adapter  # noqa: E402
from common import record  # noqa: E402
from common.compare import compare  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.driver import _plans, canonical_init, model_layers, train  # noqa: E402
from common.padding import pad_batch, resolve_sides  # noqa: E402
from common.spec import Spec  # noqa: E402
from common.tolerance import tolerance_for  # noqa: E402
from tests.support import divergences, prepared_adapter, run_in_process, seq_spec, worst_tolerance_used  # noqa: E402

RNN = {"kind": "rnn", "hidden": [5]}
PAD = {"last_batch": "pad"}


def _run_jax(spec: Spec):
    """(adapter, (record, arrays)) of a jax run in this process (the adapter, for its compile counter)."""
    data = load_dataset(spec)
    adapter = make_adapter(spec)
    body = train(adapter, spec, data)
    rec = record.build("jax", adapter.versions(), adapter.device(), spec, body)
    return adapter, (rec, record.arrays(body, data))


def _against_oracle(spec: Spec):
    adapter, jax_run = _run_jax(spec)
    cmp = compare(
        {"numpy": run_in_process("numpy", spec), "jax": jax_run}, "numpy", tolerance_for(spec.dtype, spec.mode)
    )
    assert not divergences(cmp), divergences(cmp)
    assert worst_tolerance_used(cmp) <= 1.0
    metrics = {p["metric"] for p in cmp["pairs"]}
    assert {"batch_ids", "padded_length"} <= metrics
    return adapter, jax_run[0], cmp


EXACT = {
    # id: sections (on tests.support.SEQ_BASE: 72 train rows of 2..10 tokens, batch 7, 2 epochs, seq_pool E=4 [6])
    "pool-post-trunc-post-pad-momentum": dict(sequence={"max_len": 8}, batching=PAD, optimizer={"momentum": 0.9}),
    "pool-pre-trunc-pre-keep-dropout-l2": dict(
        sequence={"pad": "pre", "truncate": "pre", "max_len": 6},
        regularization={"dropout": 0.3, "l2": 1e-3},
        batching={"eval_batch_size": 18},
    ),
    "pool-unmasked-pre-adamw-l1-bias": dict(
        sequence={"pad": "pre", "max_len": 8, "mask": False},
        batching=PAD,
        optimizer={"name": "adamw", "lr": 0.01},
        regularization={"weight_decay": 1e-2, "decay": "decoupled", "l1": 1e-3, "regularize_bias": True},
    ),
    "rnn-post-trunc-post-pertoken-dropout-wd": dict(
        model=RNN,
        sequence={"max_len": 7, "loss_norm": "per_token"},
        batching=PAD,
        regularization={"dropout": 0.3, "weight_decay": 1e-3},
    ),
    "rnn-pre-trunc-pre-adam-l1": dict(
        model=RNN,
        sequence={"pad": "pre", "truncate": "pre", "max_len": 7},
        batching=PAD,
        optimizer={"name": "adam", "lr": 0.01},
        regularization={"l1": 1e-3},
    ),
    "rnn-unmasked-pre-glorot": dict(
        model={**RNN, "init": "glorot_uniform"}, sequence={"pad": "pre", "max_len": 8, "mask": False}, batching=PAD
    ),
    "rnn-unmasked-post-l2-bias": dict(
        model=RNN,
        sequence={"max_len": 8, "mask": False},
        batching=PAD,
        regularization={"l2": 1e-3, "regularize_bias": True},
    ),
    "rnn-buckets-keep-pre-lecun": dict(
        model={**RNN, "init": "lecun_normal"},
        sequence={"pad": "pre", "buckets": [4, 10]},
        batching={"eval_batch_size": 18},
    ),
}


@pytest.mark.parametrize("case", sorted(EXACT))
def test_float64_matches_oracle(case):
    _against_oracle(seq_spec("float64", **EXACT[case]))


@pytest.mark.parametrize(
    "sections",
    [
        dict(
            sequence={"max_len": 8},
            batching=PAD,
            optimizer={"name": "adam", "lr": 0.01},
            regularization={"dropout": 0.3},
        ),
        dict(model=RNN, sequence={"pad": "pre", "buckets": [4, 10], "loss_norm": "per_token"}, batching=PAD),
    ],
    ids=["pool-adam-dropout", "rnn-pre-buckets-pertoken"],
)
def test_float32_matches_oracle(sections):
    spec = seq_spec("float32", **sections)
    adapter, _, _ = _against_oracle(spec)
    assert all(np.asarray(leaf).dtype == np.float32 for leaf in jax.tree.leaves(adapter.params))


@pytest.mark.parametrize("kind,buckets", [("rnn", [4, 10]), ("seq_pool", [3, 6, 10])])
def test_buckets_with_pad_compile_at_most_once_per_bucket(kind, buckets):
    model = RNN if kind == "rnn" else {"kind": kind}
    adapter, rec, _ = _against_oracle(seq_spec(model=model, sequence={"buckets": buckets}, batching=PAD))
    lengths = {s["padded_length"] for s in rec["steps"]}
    assert lengths <= set(buckets)
    assert all(s["batch_size"] <= 7 for s in rec["steps"])
    assert 1 <= adapter.compile_count <= len(buckets), adapter.compile_count
    assert adapter.compile_count == len(lengths)  # exactly one per (7, T) shape the plan used


def test_without_buckets_compiles_once_per_distinct_batch_length():
    """max_len 0, no buckets: T is each batch's longest row, so the step recompiles for every new T. Counted."""
    spec = seq_spec(batching=PAD)
    adapter, rec, _ = _against_oracle(spec)
    plan, _ = _plans(spec, load_dataset(spec))
    planned = {b.length for e in range(spec.train.epochs) for b in plan.batches(e)}
    assert {s["padded_length"] for s in rec["steps"]} == planned
    assert adapter.compile_count == len(planned)
    assert adapter.compile_count > 2  # more than the two buckets [4, 10] would need (here: several lengths)


def test_eager_execution_matches_oracle_without_compiling():
    adapter, _, _ = _against_oracle(
        seq_spec(execution="eager", sequence={"max_len": 6}, batching=PAD, train={"epochs": 1})
    )
    assert adapter.compile_count == 0


def test_pipeline_pads_like_pad_batch_to_the_plan_length():
    spec = seq_spec(sequence={"pad": "pre", "truncate": "pre", "buckets": [4, 10]}, batching=PAD)
    data = load_dataset(spec)
    plan, _ = _plans(spec, data)
    pipe = pipelines.pipeline(spec, data, plan)
    for planned, got in zip(plan.batches(0), pipe.epoch(0), strict=True):
        tokens, mask, kept = pad_batch(data.sequences("train", planned.ids), "pre", "pre", planned.length)
        assert np.array_equal(got.ids, planned.ids) and got.length == planned.length
        assert np.array_equal(np.asarray(got.x), tokens) and np.array_equal(got.lengths, kept)
        assert np.array_equal(np.asarray(got.x) != 0, mask)  # the model's token mask: token 0 is the pad
        assert np.array_equal(np.asarray(got.weights), planned.weights)  # per_sequence: m = w (filler 0)


def test_native_sides_are_post_post():
    assert resolve_sides(seq_spec(sequence={"pad": "native", "truncate": "native"}), "jax") == ("post", "post")


# ---- model level ---------------------------------------------------------------------------------------------


def _model(kind: str, masked: bool = True):
    spec = seq_spec(model=RNN if kind == "rnn" else {"kind": kind}, sequence={"mask": masked})
    data = load_dataset(spec)
    params = canonical_init(spec, data)
    model = flax_model.build(model_layers(spec, data), spec)
    return model, flax_model.load_canonical(model, params), params


def _padded(side: str, lengths=(3, 6, 0, 2), t: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, 16, n) for n in lengths]
    tokens, mask, _ = pad_batch(seqs, side, "post", t)
    return jnp.asarray(tokens, jnp.int32), mask


@pytest.mark.parametrize("kind", ["seq_pool", "rnn"])
def test_masked_pre_padding_equals_post_padding(kind):
    model, params, _ = _model(kind)
    post, pre = model.apply(params, _padded("post")[0]), model.apply(params, _padded("pre")[0])
    np.testing.assert_allclose(np.asarray(pre), np.asarray(post), rtol=1e-13, atol=1e-15)


def test_unmasked_rnn_reads_the_pads():
    model, params, _ = _model("rnn", masked=False)
    post, pre = model.apply(params, _padded("post")[0]), model.apply(params, _padded("pre")[0])
    assert not np.allclose(np.asarray(pre), np.asarray(post))


def test_masked_rnn_is_the_state_after_the_last_real_token():
    model, params, p = _model("rnn")
    tokens, mask = _padded("pre")
    logits = np.asarray(model.apply(params, tokens))
    for i in range(tokens.shape[0]):
        h = np.zeros(5)
        for tok, on in zip(np.asarray(tokens[i]), np.asarray(mask[i]), strict=True):
            if on:
                h = np.tanh(
                    p["embed.weight"][tok] @ p["rnn.input.weight"] + h @ p["rnn.recurrent.weight"] + p["rnn.bias"]
                )
        np.testing.assert_allclose(logits[i], h @ p["layer0.weight"] + p["layer0.bias"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["seq_pool", "rnn"])
@pytest.mark.parametrize("masked", [True, False])
def test_all_padded_rows_and_batches_give_finite_loss_and_gradients(kind, masked):
    model, params, _ = _model(kind, masked)
    y = jnp.asarray([0, 1, 2, 1], jnp.int32)

    def loss(p, tokens, m):
        ce = optax.softmax_cross_entropy_with_integer_labels(model.apply(p, tokens), y)
        return jnp.sum(m * ce) / jnp.maximum(jnp.sum(m), 1.0)

    grad = jax.value_and_grad(loss)
    # one all-padded row (length 0, weight 0) inside a batch
    value, g = grad(params, _padded("pre")[0], jnp.asarray([1.0, 1.0, 0.0, 1.0]))
    assert np.isfinite(float(value)) and all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(g))
    # an all-padded batch: Σm = 0 → loss 0, zero (finite) gradients
    tokens = jnp.zeros((4, 5), jnp.int32)
    value, g = grad(params, tokens, jnp.zeros(4))
    assert float(value) == 0.0
    assert all(np.all(np.asarray(a) == 0.0) for a in jax.tree.leaves(g))
    if masked:  # an all-padded row pools / recurs to the zero vector: logits = the head's bias
        logits = np.asarray(model.apply(params, tokens))
        assert np.all(np.isfinite(logits))
        if kind == "rnn":
            np.testing.assert_array_equal(
                logits, np.broadcast_to(np.asarray(params["params"]["layer0"]["bias"]), logits.shape)
            )


@pytest.mark.parametrize("kind", ["seq_pool", "rnn"])
def test_canonical_mapping_round_trips(kind):
    _, params, canonical = _model(kind)
    back = flax_model.to_canonical(params)
    assert set(back) == set(canonical)
    assert all(np.array_equal(back[k], canonical[k]) for k in canonical)
    if kind == "rnn":
        cell = params["params"]["rnn"]
        assert set(cell) == {"i", "h"} and set(cell["h"]) == {"kernel"}  # SimpleCell: one bias (i)


def test_native_mode_trains_with_flax_defaults():
    spec = seq_spec(
        mode="native",
        model=RNN,
        sequence={"buckets": [4, 10]},
        batching=PAD,
        regularization={"dropout": 0.3, "l1": 1e-3},
    )
    adapter, (rec, arrays) = _run_jax(spec)
    losses = [s["loss"] for s in rec["steps"]]
    assert np.all(np.isfinite(losses))
    assert {k.split("/")[1] for k in arrays if k.startswith("init/")} == set(canonical_init(spec, load_dataset(spec)))
    assert adapter.compile_count <= 2


def test_fused_execution_on_token_data_is_a_clear_error():
    """Spec validation refuses `execution = "fused"` for token models; the adapter refuses token data itself too."""
    spec = replace(seq_spec(), execution="fused")
    data = load_dataset(spec)
    adapter = make_adapter(spec)
    plan, _ = _plans(spec, data)
    with pytest.raises(ValueError, match="execution 'fused' scans whole epochs of one static shape"):
        adapter.prepare(spec, data, plan, model_layers(spec, data), canonical_init(spec, data))


def test_training_inputs_are_the_plan_batches_padded_on_the_device():
    """The training loop's inputs (`epoch_inputs`, tokens): per plan batch, in order, the training split padded to
    its T whose rows `ids` are `pad_batch` of the batch, labels, the masked-loss weights w·L (per_token, L from
    pad_batch), its global step; one stack per batch size (keep: full batches and each bucket's tail)."""
    spec = seq_spec(
        sequence={"pad": "pre", "truncate": "pre", "buckets": [4, 10], "loss_norm": "per_token"},
        batching={"last_batch": "keep"},
    )
    adapter, data = prepared_adapter("jax", spec)
    batches = _plans(spec, data)[0].batches(1)
    inputs = adapter.epoch_inputs(1, 12)
    for t, (((x, y), (ids, w, masks, steps), i, batch), planned) in enumerate(
        zip(inputs, batches, strict=True), start=12
    ):
        tokens, _, kept = pad_batch(data.sequences("train", planned.ids), "pre", "pre", planned.length)
        assert np.array_equal(batch.ids, planned.ids) and batch.length == planned.length
        assert np.array_equal(np.asarray(ids[i]), planned.ids)
        assert np.array_equal(np.asarray(x)[planned.ids], tokens)
        assert np.array_equal(np.asarray(y)[planned.ids], data.train_y[planned.ids])
        assert np.array_equal(np.asarray(w[i]), planned.weights * kept)
        assert masks is None and int(steps[i]) == t
    assert len({id(stack) for _, stack, _, _ in inputs}) == len({b.rows for b in batches}) > 1


def test_token_epochs_prefetch_and_compile_nothing_new():
    """run_epoch makes the next epoch's token inputs once its steps are dispatched; later epochs reuse the
    compiled (B, T) programs: max_len fixes T, keep gives two batch sizes, so two compiles in all."""
    spec = seq_spec(sequence={"max_len": 8}, train={"epochs": 3})
    adapter, _ = prepared_adapter("jax", spec)
    for epoch in range(3):
        run = adapter.run_epoch(epoch, 1 + 11 * epoch)
        assert len(run.losses) == 11 and np.all(np.isfinite(run.losses))
        assert adapter.ahead[0] == (epoch + 1, 1 + 11 * (epoch + 1))
    assert adapter.compile_count == 2
