"""The oracle sequence models: gradients against finite differences, the padding/mask semantics against a naive
per-row reference, finiteness on all-padded input, and short end-to-end runs through the driver."""

from itertools import pairwise

import numpy as np
import pytest

from backends.numpy_backend import data as pipeline
from backends.numpy_backend.model import build
from common.batching import BatchPlan
from common.datasets import load_dataset
from common.layers import init_params, stack
from common.metrics import cross_entropy
from common.padding import kept_lengths, loss_weights, pad_batch
from tests.support import run_in_process, seq_spec

pytestmark = pytest.mark.framework_free  # no ML framework: runs once, in the torch env (tox.ini)

VOCAB, CLASSES, WIDTH = 7, 3, 4
LENGTHS = [3, 6, 0, 2, 5]  # row 2 is all padding (weight 0, as a filler row would be)
PLAN_WEIGHTS = np.array([1.0, 1.0, 0.0, 1.0, 1.0])


def _spec(kind: str, activation: str = "tanh", masked: bool = True, init: str = "glorot_uniform") -> dict:
    # dropout 0.3: the stacks hold one dropout layer of width WIDTH (after seq_pool's hidden layer, after the rnn)
    return seq_spec(
        model={"kind": kind, "embed_dim": 3, "hidden": [WIDTH], "activation": activation, "init": init},
        sequence={"mask": masked},
        regularization={"dropout": 0.3},
    )


def _model(kind: str, activation: str = "tanh", masked: bool = True):
    spec = _spec(kind, activation, masked)
    return build(stack(spec, VOCAB, CLASSES), spec)


def _params(kind: str, activation: str = "tanh", init: str = "glorot_uniform") -> dict:
    spec = _spec(kind, activation, init=init)
    params = init_params(stack(spec, VOCAB, CLASSES), init, spec.seed, np.float64)
    # non-zero biases so that the bias gradients are exercised away from 0
    rng = np.random.default_rng(42)
    return {k: v + (0.1 * rng.standard_normal(v.shape) if k.endswith(".bias") else 0.0) for k, v in params.items()}


def _batch(side: str, truncate: str = "post", length: int = 6, loss_norm: str = "per_token", seed: int = 0):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, VOCAB, n) for n in LENGTHS]
    tokens, mask, kept = pad_batch(seqs, side, truncate, length)
    labels = rng.integers(0, CLASSES, len(seqs))
    weights = loss_weights(PLAN_WEIGHTS, kept, loss_norm)
    return seqs, tokens, mask, labels, weights


def _dropout(rows: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random((rows, WIDTH)) >= 0.3) * (1.0 / 0.7)]


def _finite_differences(model, params, args, h=1e-6):
    numeric = {}
    for name, w in params.items():
        out = np.zeros_like(w)
        for idx in np.ndindex(w.shape):
            for sign in (1, -1):
                shifted = {k: v.copy() for k, v in params.items()}
                shifted[name][idx] += sign * h
                out[idx] += sign * model.loss_and_grads(shifted, *args)[0] / (2 * h)
        numeric[name] = out
    return numeric


@pytest.mark.parametrize("kind,activation", [("seq_pool", "tanh"), ("seq_pool", "relu"), ("rnn", "tanh")])
@pytest.mark.parametrize("side", ["post", "pre"])
@pytest.mark.parametrize("masked", [True, False])
def test_gradients_match_finite_differences(kind, activation, side, masked):
    params = _params(kind, activation)
    model = _model(kind, activation, masked)
    _, tokens, _, labels, weights = _batch(side)
    args = (tokens, labels, weights, _dropout(len(LENGTHS)))
    loss, grads = model.loss_and_grads(params, *args)
    assert np.isfinite(loss) and loss > 0
    assert set(grads) == set(params)
    numeric = _finite_differences(model, params, args)
    for name in params:
        assert grads[name].shape == params[name].shape
        assert np.allclose(grads[name], numeric[name], rtol=1e-6, atol=1e-9), name
    # the pad embedding (row 0) learns only without a mask
    assert np.any(grads["embed.weight"][0] != 0.0) != masked


def _reference_loss(params, seqs, labels, weights, kind, dropout):
    """Naive per-row reference of the brief's semantics on the real (kept) tokens only: mean of their embeddings
    (seq_pool, tanh MLP) or the Elman state after the last real token (rnn); Σ m·ℓ / max(Σ m, 1)."""
    emb = params["embed.weight"]
    logits = []
    for i, seq in enumerate(seqs):
        x = emb[np.asarray(seq, dtype=np.int64)]
        if kind == "seq_pool":
            h = x.sum(axis=0) / max(len(seq), 1)
            h = np.tanh(h @ params["layer0.weight"] + params["layer0.bias"]) * dropout[0][i]
            logits.append(h @ params["layer1.weight"] + params["layer1.bias"])
        else:
            h = np.zeros(WIDTH)
            for x_t in x:
                h = np.tanh(x_t @ params["rnn.input.weight"] + h @ params["rnn.recurrent.weight"] + params["rnn.bias"])
            logits.append((h * dropout[0][i]) @ params["layer0.weight"] + params["layer0.bias"])
    losses = cross_entropy(np.array(logits), labels)
    return float(np.sum(weights * losses) / max(weights.sum(), 1.0))


@pytest.mark.parametrize("kind", ["seq_pool", "rnn"])
@pytest.mark.parametrize("truncate", ["post", "pre"])
def test_masked_pre_and_post_padding_agree_and_match_the_reference(kind, truncate):
    params, model = _params(kind), _model(kind)
    dropout = _dropout(len(LENGTHS))
    seqs, post_tokens, _, labels, weights = _batch("post", truncate, length=4)
    _, pre_tokens, _, _, _ = _batch("pre", truncate, length=4)
    post = model.loss_and_grads(params, post_tokens, labels, weights, dropout)
    pre = model.loss_and_grads(params, pre_tokens, labels, weights, dropout)
    assert not np.array_equal(post_tokens, pre_tokens)
    assert np.isclose(post[0], pre[0], rtol=1e-13, atol=0)
    for name in params:
        assert np.allclose(post[1][name], pre[1][name], rtol=1e-12, atol=1e-15), name
    kept = [s[:4] if truncate == "post" else s[max(len(s) - 4, 0) :] for s in seqs]
    assert np.isclose(post[0], _reference_loss(params, kept, labels, weights, kind, dropout), rtol=1e-13)


@pytest.mark.parametrize("kind", ["seq_pool", "rnn"])
def test_masked_result_does_not_depend_on_the_amount_of_padding(kind):
    params, model = _params(kind), _model(kind)
    dropout = _dropout(len(LENGTHS))
    _, short, _, labels, weights = _batch("pre", length=6)
    _, long, _, _, _ = _batch("pre", length=11)
    a = model.loss_and_grads(params, short, labels, weights, dropout)
    b = model.loss_and_grads(params, long, labels, weights, dropout)
    assert np.isclose(a[0], b[0], rtol=1e-13, atol=0)
    assert all(np.allclose(a[1][k], b[1][k], rtol=1e-12, atol=1e-15) for k in params)


def test_unmasked_rnn_depends_on_the_padding_side():
    params, model = _params("rnn"), _model("rnn", masked=False)
    _, post_tokens, _, labels, weights = _batch("post")
    _, pre_tokens, _, _, _ = _batch("pre")
    post = model.loss_and_grads(params, post_tokens, labels, weights)
    pre = model.loss_and_grads(params, pre_tokens, labels, weights)
    assert abs(post[0] - pre[0]) > 1e-3
    # unmasked, the pads are ordinary E[0] inputs: the whole padded row runs through the RNN
    seqs = [np.asarray(t) for t in post_tokens]
    assert np.isclose(post[0], _reference_loss(params, seqs, labels, weights, "rnn", [np.ones((5, WIDTH))]), rtol=1e-13)


def test_unmasked_seq_pool_depends_on_the_amount_of_padding_not_its_side():
    params, model = _params("seq_pool"), _model("seq_pool", masked=False)
    _, post_tokens, _, labels, weights = _batch("post")
    _, pre_tokens, _, _, _ = _batch("pre")
    _, longer, _, _, _ = _batch("post", length=9)
    post = model.loss_and_grads(params, post_tokens, labels, weights)
    pre = model.loss_and_grads(params, pre_tokens, labels, weights)
    more = model.loss_and_grads(params, longer, labels, weights)
    assert np.isclose(post[0], pre[0], rtol=1e-13)
    assert abs(post[0] - more[0]) > 1e-4


@pytest.mark.parametrize("kind", ["seq_pool", "rnn"])
@pytest.mark.parametrize("masked", [True, False])
def test_all_padded_row_and_batch_are_finite(kind, masked):
    params, model = _params(kind), _model(kind, masked=masked)
    _, tokens, _, labels, weights = _batch("post")
    loss, grads = model.loss_and_grads(params, tokens, labels, weights, _dropout(len(LENGTHS)))
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())
    if masked:  # the all-padded row reads nothing: its encoding is the zero vector
        logits, _ = model.forward(params, tokens[2:3])
        ref, _ = _model(kind, masked=False).forward(
            {**params, "embed.weight": np.zeros_like(params["embed.weight"])}, tokens[2:3]
        )
        assert np.all(np.isfinite(logits)) and (kind == "rnn" or np.allclose(logits, ref))
    # a batch of filler rows only: Σ m = 0 → loss 0 and zero gradients, no NaN
    empty = [np.zeros(0, dtype=np.int64)] * 3
    for length in (4, 0):
        tokens, _, kept = pad_batch(empty, "post", "post", length)
        assert tokens.shape == (3, length)
        weights = loss_weights(np.zeros(3), kept, "per_token")
        loss, grads = model.loss_and_grads(params, tokens, np.array([0, 1, 2]), weights, _dropout(3))
        assert loss == 0.0
        assert all(np.all(g == 0.0) for g in grads.values())


def test_per_token_weights_weight_rows_by_kept_length():
    params, model = _params("seq_pool"), _model("seq_pool")
    _, tokens, _, labels, per_token = _batch("post", length=4, loss_norm="per_token")
    _, _, _, _, per_seq = _batch("post", length=4, loss_norm="per_sequence")
    assert per_token.tolist() == [3.0, 4.0, 0.0, 2.0, 4.0]
    assert per_seq.tolist() == PLAN_WEIGHTS.tolist()
    logits, _ = model.forward(params, tokens)
    ell = cross_entropy(logits, labels)
    loss, _ = model.loss_and_grads(params, tokens, labels, per_token)
    assert np.isclose(loss, np.sum(ell * per_token) / 13.0, rtol=1e-14)


def test_pipeline_pads_with_the_resolved_sides_and_loss_weights():
    spec = seq_spec(
        sequence={"pad": "pre", "truncate": "pre", "max_len": 5, "loss_norm": "per_token"},
        batching={"last_batch": "pad"},
    )
    data = load_dataset(spec)
    plan = BatchPlan.from_spec(spec, data.train_x.shape[0], data.train_lengths)
    batches = list(pipeline.epoch_rows(spec, data, plan, 0))
    planned = plan.batches(0)
    assert len(batches) == len(planned)
    for b, p in zip(batches, planned, strict=True):
        tokens, mask, _ = pad_batch(data.sequences("train", p.ids), "pre", "pre", 5)
        assert np.array_equal(b.ids, p.ids) and b.length == p.length == 5
        # the model's token mask is read off the tokens (token 0 is the pad)
        assert np.array_equal(b.x, tokens) and np.array_equal(b.x != 0, mask)
        kept = kept_lengths(data.train_lengths[p.ids], 5, [])
        assert np.array_equal(b.lengths, kept)
        assert np.array_equal(b.weights, p.weights * kept)
    assert batches[-1].weights[-1] == 0.0  # a filler row


def _plan(spec):
    data = load_dataset(spec)
    return BatchPlan.from_spec(spec, data.train_x.shape[0], data.train_lengths)


@pytest.mark.parametrize("kind,last_batch", [("rnn", "pad"), ("seq_pool", "keep")])
def test_end_to_end_training_follows_the_plan_and_learns(kind, last_batch):
    spec = seq_spec(
        model={"kind": kind, "hidden": [8]},
        sequence={"buckets": [4, 10]},
        batching={"last_batch": last_batch},
        optimizer={"name": "adam", "lr": 0.05},
        regularization={"dropout": 0.1, "l2": 1e-4},
        train={"epochs": 6},
    )
    rec, _ = run_in_process("numpy", spec)
    plan = _plan(spec)
    expected = [b for e in range(6) for b in plan.batches(e)]
    assert len(rec["steps"]) == len(expected)
    for step, batch in zip(rec["steps"], expected, strict=True):
        assert step["padded_length"] == batch.length
        assert step["batch_ids"] == batch.real_ids.tolist()
    assert {s["padded_length"] for s in rec["steps"]} == {4, 10}
    assert rec["padding"] == {"pad": "post", "truncate": "post"}
    losses = [e["train_loss"] for e in rec["epochs"]]
    assert all(np.isfinite(losses))
    # the evaluated training loss falls epoch over epoch and well below the first epoch's
    assert all(b < a for a, b in pairwise(losses)), losses
    assert losses[-1] < 0.8 * losses[0], losses


def test_native_mode_runs_with_its_own_dropout():
    spec = seq_spec(
        mode="native", model={"kind": "rnn", "hidden": [5]}, regularization={"dropout": 0.3}, train={"epochs": 1}
    )
    rec, _ = run_in_process("numpy", spec)
    assert all(np.isfinite(s["loss"]) for s in rec["steps"])
    assert rec["padding"] == {"pad": "post", "truncate": "post"}
