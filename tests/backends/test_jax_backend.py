"""JAX backend (flax.linen + optax): agreement with the numpy oracle, eval mode, native dropout, and the
jit-specific checks (one compile under last_batch "pad", pad-with-weights equals the ragged batch)."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402

from backends.numpy_backend.model import forward  # noqa: E402
from backends.worker import load_adapter  # noqa: E402
from common.batching import eval_batches  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.driver import train  # noqa: E402
from common.metrics import cross_entropy  # noqa: E402
from common.tolerance import FLOAT64_EXACT  # noqa: E402
from tests.support import compare_with_oracle, divergences, make_spec, run_in_process  # noqa: E402

# iris: 120 training rows; batch 7 leaves a ragged last batch of 1 (17 full batches), so 7 epochs give 119-126 steps.
BASE = {"dtype": "float64", "batching": {"batch_size": 7}, "train": {"epochs": 7}}

# Together these cover every last_batch policy, shuffle on/off, sgd+momentum, sgd+nesterov, adam, adamw, l1 mean
# and sum, l2, coupled and decoupled decay, regularize_bias on/off and dropout 0.3/0.5.
CONFIGS = {
    "keep-shuffle-momentum-l2-dropout0.5": dict(
        batching={"last_batch": "keep", "shuffle": True}, optimizer={"momentum": 0.9, "lr": 0.05},
        regularization={"l2": 0.01, "dropout": 0.5}),
    "drop-ordered-nesterov-l1mean-bias-zeroinit": dict(
        batching={"last_batch": "drop", "shuffle": False}, model={"init": "glorot_uniform"},
        optimizer={"momentum": 0.9, "nesterov": True, "lr": 0.05},
        regularization={"l1": 0.05, "l1_reduction": "mean", "regularize_bias": True, "dropout": 0.3}),
    "pad-shuffle-adam-l1sum-coupled-bias": dict(
        batching={"last_batch": "pad", "shuffle": True, "eval_batch_size": 16}, optimizer={"name": "adam"},
        regularization={"l1": 0.001, "l1_reduction": "sum", "weight_decay": 0.01, "regularize_bias": True}),
    "keep-ordered-adamw-tanh-dropout0.3": dict(
        batching={"last_batch": "keep", "shuffle": False}, model={"activation": "tanh"},
        optimizer={"name": "adamw", "lr": 0.005},
        regularization={"weight_decay": 0.05, "decay": "decoupled", "dropout": 0.3}),
    "pad-ordered-sgd-decoupled-bias-2layers": dict(
        batching={"last_batch": "pad", "shuffle": False}, model={"hidden": [16, 8]},
        optimizer={"momentum": 0.5, "lr": 0.05},
        regularization={"weight_decay": 0.05, "decay": "decoupled", "regularize_bias": True, "dropout": 0.5}),
    "drop-shuffle-adamw-l2-bias-lecun": dict(
        batching={"last_batch": "drop", "shuffle": True}, model={"init": "lecun_normal"},
        optimizer={"name": "adamw", "lr": 0.01},
        regularization={"l2": 0.005, "weight_decay": 0.02, "decay": "decoupled", "regularize_bias": True}),
    "keep-shuffle-plain-sgd-l1mean-l2-coupled": dict(
        batching={"last_batch": "keep", "shuffle": True}, optimizer={"lr": 0.1},
        regularization={"l1": 0.01, "l2": 0.001, "weight_decay": 0.01, "dropout": 0.5}),
    "pad-shuffle-nesterov-decoupled-l1sum": dict(
        batching={"last_batch": "pad", "shuffle": True}, optimizer={"momentum": 0.9, "nesterov": True},
        regularization={"l1": 0.0005, "l1_reduction": "sum", "weight_decay": 0.1, "decay": "decoupled",
                        "dropout": 0.3}),
}


def spec_for(**sections) -> dict:
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for key, value in sections.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return make_spec(**merged)


def trained_adapter(spec: dict):
    """(adapter, dataset, driver body) of a run in this process, keeping the adapter for inspection."""
    data = load_dataset(spec)
    adapter = load_adapter("jax").make_adapter(spec)
    return adapter, data, train(adapter, spec, data)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_float64_exact_matches_oracle(name):
    spec = spec_for(**CONFIGS[name])
    comparison = compare_with_oracle("jax", spec)
    assert divergences(comparison) == []


def test_float32_exact_matches_oracle():
    config = CONFIGS["pad-shuffle-adam-l1sum-coupled-bias"]
    spec = spec_for(dtype="float32", **{**config, "regularization": {**config["regularization"], "dropout": 0.3}})
    comparison = compare_with_oracle("jax", spec)
    assert comparison["tolerance"]["rtol"] == 1e-4
    assert divergences(comparison) == []
    # x64 is on for every spec (see adapter.py); nothing may silently promote to float64
    adapter, _, body = trained_adapter(spec)
    leaves = jax.tree.leaves((adapter.params, adapter.opt_state))
    assert {str(a.dtype) for a in leaves if jnp.issubdtype(a.dtype, jnp.floating)} == {"float32"}
    assert all(v.dtype == np.float32 for v in body["final"].values())


@pytest.mark.parametrize("mode", ["exact", "native"])
def test_evaluate_has_no_dropout(mode):
    spec = spec_for(mode=mode, train={"epochs": 2}, regularization={"dropout": 0.5},
                    batching={"eval_batch_size": 16})
    adapter, data, _ = trained_adapter(spec)
    batches = eval_batches(data.test_x.shape[0], 16)
    first, second = adapter.evaluate("test", batches), adapter.evaluate("test", batches)
    assert first == second
    params = adapter.parameters()
    for batch, (loss_sum, correct, n) in zip(batches, first, strict=True):
        logits, _ = forward(params, data.test_x[batch.ids], spec["model"]["activation"], None)
        y = data.test_y[batch.ids]
        assert n == batch.ids.shape[0]
        assert loss_sum == pytest.approx(cross_entropy(logits, y).sum(), rel=1e-12)
        assert correct == np.sum(np.argmax(logits, axis=1) == y)


def test_native_mode_uses_flax_dropout():
    overrides = dict(train={"epochs": 2}, regularization={"dropout": 0.5})
    native = [s["loss"] for s in run_in_process("jax", spec_for(mode="native", **overrides))[0]["steps"]]
    again = [s["loss"] for s in run_in_process("jax", spec_for(mode="native", **overrides))[0]["steps"]]
    exact = [s["loss"] for s in run_in_process("jax", spec_for(mode="exact", **overrides))[0]["steps"]]
    no_dropout = run_in_process("jax", spec_for(mode="native", train={"epochs": 1}))[0]["steps"][0]["loss"]
    assert native == again  # nn.Dropout's key comes from the spec seed and the step
    assert native[0] != pytest.approx(exact[0], rel=1e-6)  # its own RNG, not the shared masks
    assert native[0] != pytest.approx(no_dropout, rel=1e-6)  # dropout is active in training
    assert np.all(np.isfinite(native))


@pytest.mark.parametrize("last_batch, batch_size, compiles", [
    ("pad", 7, 1), ("keep", 7, 2), ("drop", 7, 1), ("keep", 8, 1)])
def test_jit_compiles_once_per_batch_shape(last_batch, batch_size, compiles):
    spec = spec_for(train={"epochs": 3}, batching={"last_batch": last_batch, "batch_size": batch_size},
                    regularization={"dropout": 0.3})
    adapter, _, body = trained_adapter(spec)
    assert len(body["steps"]) > 3 * (120 // batch_size) - 1
    assert adapter.compile_count == compiles


def test_padded_batch_equals_ragged_batch():
    """Same seed and plan order; pad's filler rows have weight 0, so every step's loss and the final parameters
    equal keep's (the shared masks of the real rows are the same: numpy draws them row by row)."""
    sections = dict(train={"epochs": 4}, optimizer={"momentum": 0.9, "lr": 0.05},
                    regularization={"dropout": 0.5, "l2": 0.01})
    (pad, pad_npz) = run_in_process("jax", spec_for(batching={"last_batch": "pad"}, **sections))
    (keep, keep_npz) = run_in_process("jax", spec_for(batching={"last_batch": "keep"}, **sections))
    assert [s["batch_ids"] for s in pad["steps"]] == [s["batch_ids"] for s in keep["steps"]]
    assert any(s["batch_size"] == 1 for s in pad["steps"])
    tol = dict(rtol=FLOAT64_EXACT.rtol, atol=FLOAT64_EXACT.atol)
    np.testing.assert_allclose(pad_npz["losses"], keep_npz["losses"], **tol)
    for key in (k for k in keep_npz if k.startswith("final/")):
        np.testing.assert_allclose(pad_npz[key], keep_npz[key], **tol)


def test_l1_uses_sign_with_zero_at_zero():
    from backends.jax_backend.optim import l1_sign

    tx = l1_sign({"w": 0.5})
    params = {"w": jnp.array([0.0, 2.0, -3.0])}
    updates, _ = tx.update({"w": jnp.array([1.0, 1.0, 1.0])}, tx.init(params), params)
    np.testing.assert_array_equal(np.asarray(updates["w"]), [1.0, 1.5, 0.5])
