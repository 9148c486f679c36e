"""JAX backend (flax.linen + optax): agreement with the numpy oracle, eval mode, the execution modes (eager op by
op, compiled jax.jit, fused lax.scan: each matches the oracle; one compile per batch shape; float32 stays float32
inside the scan), pad-with-weights equals the ragged batch, layer_norm stacks against the oracle and its epsilon
per mode, the CNN on digits images (conv, batch_norm, pools, flatten: the oracle at every step in every execution
mode, pad == keep, one compile per batch shape, the running statistics carried by jit and lax.scan and never seen by
the optimizer), and native mode (common.native's jax column: jax.random order, flax default init, nn.Dropout, optax
"as written", L1 as a jnp.abs loss term, flax's BatchNorm defaults). Layer-level checks: test_jax_images.py."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from backends.jax_backend.model import build, to_canonical  # noqa: E402
from backends.numpy_backend import model as oracle  # noqa: E402
from backends.worker import load_adapter  # noqa: E402
from common.batching import BatchPlan, eval_batches  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.driver import canonical_init, model_layers, train  # noqa: E402
from common.dropout import shared_masks  # noqa: E402
from common.metrics import cross_entropy  # noqa: E402
from common.spec import Spec  # noqa: E402
from common.tolerance import FLOAT64_EXACT  # noqa: E402
from tests import support  # noqa: E402
from tests.support import (  # noqa: E402
    CNN_RUNS,
    LAYER_NORM_RUNS,
    LAYER_NORM_STACK,
    cnn_spec,
    compare_with_oracle,
    divergences,
    make_spec,
    matrix_spec,
    run_in_process,
)

# iris: 120 training rows; batch 7 leaves a ragged last batch of 1 (17 full batches), so 7 epochs give 119-126 steps.
BASE = {"dtype": "float64", "batching": {"batch_size": 7}, "train": {"epochs": 7}}

# Together these cover every last_batch policy, shuffle on/off, sgd+momentum, sgd+nesterov, adam, adamw, l1 mean
# and sum, l2, coupled and decoupled decay, regularize_bias on/off and dropout 0.3/0.5.
CONFIGS = {
    "keep-shuffle-momentum-l2-dropout0.5": dict(
        batching={"last_batch": "keep", "shuffle": True},
        optimizer={"momentum": 0.9, "lr": 0.05},
        regularization={"l2": 0.01, "dropout": 0.5},
    ),
    "drop-ordered-nesterov-l1mean-bias-zeroinit": dict(
        batching={"last_batch": "drop", "shuffle": False},
        model={"init": "glorot_uniform"},
        optimizer={"momentum": 0.9, "nesterov": True, "lr": 0.05},
        regularization={"l1": 0.05, "l1_reduction": "mean", "regularize_bias": True, "dropout": 0.3},
    ),
    "pad-shuffle-adam-l1sum-coupled-bias": dict(
        batching={"last_batch": "pad", "shuffle": True, "eval_batch_size": 16},
        optimizer={"name": "adam"},
        regularization={"l1": 0.001, "l1_reduction": "sum", "weight_decay": 0.01, "regularize_bias": True},
    ),
    "keep-ordered-adamw-tanh-dropout0.3": dict(
        batching={"last_batch": "keep", "shuffle": False},
        model={"activation": "tanh"},
        optimizer={"name": "adamw", "lr": 0.005},
        regularization={"weight_decay": 0.05, "decay": "decoupled", "dropout": 0.3},
    ),
    "pad-ordered-sgd-decoupled-bias-2layers": dict(
        batching={"last_batch": "pad", "shuffle": False},
        model={"hidden": [16, 8]},
        optimizer={"momentum": 0.5, "lr": 0.05},
        regularization={"weight_decay": 0.05, "decay": "decoupled", "regularize_bias": True, "dropout": 0.5},
    ),
    "drop-shuffle-adamw-l2-bias-lecun": dict(
        batching={"last_batch": "drop", "shuffle": True},
        model={"init": "lecun_normal"},
        optimizer={"name": "adamw", "lr": 0.01},
        regularization={"l2": 0.005, "weight_decay": 0.02, "decay": "decoupled", "regularize_bias": True},
    ),
    "keep-shuffle-plain-sgd-l1mean-l2-coupled": dict(
        batching={"last_batch": "keep", "shuffle": True},
        optimizer={"lr": 0.1},
        regularization={"l1": 0.01, "l2": 0.001, "weight_decay": 0.01, "dropout": 0.5},
    ),
    "pad-shuffle-nesterov-decoupled-l1sum": dict(
        batching={"last_batch": "pad", "shuffle": True},
        optimizer={"momentum": 0.9, "nesterov": True},
        regularization={"l1": 0.0005, "l1_reduction": "sum", "weight_decay": 0.1, "decay": "decoupled", "dropout": 0.3},
    ),
}


def spec_for(**sections) -> dict:
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for key, value in sections.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return make_spec(**merged)


def prepared_adapter(spec: Spec):
    """(adapter, dataset) prepared for `spec` as the driver prepares it, nothing trained."""
    return support.prepared_adapter("jax", spec)


def trained_adapter(spec: Spec):
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
    spec = spec_for(mode=mode, train={"epochs": 2}, regularization={"dropout": 0.5}, batching={"eval_batch_size": 16})
    adapter, data, _ = trained_adapter(spec)
    batches = eval_batches(data.test_x.shape[0], 16)
    first, second = adapter.evaluate("test", batches), adapter.evaluate("test", batches)
    assert first == second
    params = adapter.parameters()
    for batch, (loss_sum, correct, n) in zip(batches, first, strict=True):
        logits, _ = oracle.build(adapter.layers, spec).forward(params, data.test_x[batch.ids])
        y = data.test_y[batch.ids]
        assert n == batch.ids.shape[0]
        assert loss_sum == pytest.approx(cross_entropy(logits, y).sum(), rel=1e-12)
        assert correct == np.sum(np.argmax(logits, axis=1) == y)


# ---- execution modes ---------------------------------------------------------------------------------------------

MODES = ("eager", "compiled", "fused")
MODE_CASES = (
    "keep-shuffle-sgd-momentum-coupled-drop0.5",  # ragged last batch (fused: padded in its scan), one mask layer
    "drop-shuffle-adam-coupled-l2-l1-bias-deep",
)  # two hidden layers, two stacked mask layers, adam


@pytest.mark.parametrize("case", MODE_CASES)
@pytest.mark.parametrize("mode", MODES)
def test_execution_modes_match_oracle(mode, case):
    comparison = compare_with_oracle("jax", replace(matrix_spec(case), execution=mode))
    assert divergences(comparison) == []


@pytest.mark.parametrize(
    "execution, last_batch, batch_size, compiles",
    [
        *(("compiled", *case) for case in (("pad", 7, 1), ("keep", 7, 2), ("drop", 7, 1), ("keep", 8, 1))),
        # fused: one program per epoch, a ragged "keep" tail padded inside it
        *(("fused", *case) for case in (("pad", 7, 1), ("keep", 7, 1), ("drop", 7, 1), ("keep", 8, 1))),
    ],
)
def test_jit_compiles_once_per_batch_shape(execution, last_batch, batch_size, compiles):
    spec = spec_for(
        execution=execution,
        train={"epochs": 3},
        regularization={"dropout": 0.3},
        batching={"last_batch": last_batch, "batch_size": batch_size},
    )
    adapter, _, body = trained_adapter(spec)
    assert len(body["steps"]) > 3 * (120 // batch_size) - 1
    assert adapter.compile_count == compiles


def test_default_execution_is_jit_and_eager_is_not_jitted():
    adapter, _, _ = trained_adapter(spec_for(train={"epochs": 1}))
    assert adapter.execution == "compiled" and adapter.compile_count >= 1  # JAX's idiomatic loop is jax.jit
    adapter, _, body = trained_adapter(
        spec_for(execution="eager", train={"epochs": 1}, regularization={"dropout": 0.3})
    )
    assert adapter.execution == "eager" and adapter.compile_count == 0
    assert not hasattr(adapter.run.step, "lower")  # a jax.jit-ed function has .lower; the plain step has not
    assert len(body["steps"]) == 18


def test_fused_native_mode_equals_compiled():
    """Native mode's jax.random order and nn.Dropout keys (folded from the scanned step numbers) are the same in
    the fused scan as in the per-step jit."""
    sections = dict(mode="native", train={"epochs": 3}, regularization={"dropout": 0.3})
    compiled, compiled_npz = run_in_process("jax", spec_for(execution="compiled", **sections))
    fused, fused_npz = run_in_process("jax", spec_for(execution="fused", **sections))
    assert [s["batch_ids"] for s in fused["steps"]] == [s["batch_ids"] for s in compiled["steps"]]
    tol = dict(rtol=FLOAT64_EXACT.rtol, atol=FLOAT64_EXACT.atol)
    np.testing.assert_allclose(fused_npz["losses"], compiled_npz["losses"], **tol)
    for key in (k for k in compiled_npz if k.startswith("final/")):
        np.testing.assert_allclose(fused_npz[key], compiled_npz[key], **tol)


def test_fused_scans_the_shared_masks_and_returns_its_own_losses():
    """The fused epoch feeds every scanned step the shared masks of its global step (common.dropout), and its
    losses are the scan's per-step outputs: equal to the compiled step run step by step from the same state."""
    spec = spec_for(
        execution="fused", model={"hidden": [16, 8]}, regularization={"dropout": 0.5}, batching={"last_batch": "keep"}
    )
    adapter, _ = prepared_adapter(spec)
    ids, w = adapter.plan.slots(0)
    _, _, masks, steps = adapter._stacked(ids[:14].reshape(2, 7), w[:14].reshape(2, 7), [5, 6])
    np.testing.assert_array_equal(np.asarray(steps), [5, 6])
    for k, t in enumerate((5, 6)):
        for got, want in zip(masks, shared_masks(spec.seed, t, adapter.layers, 7, np.float64), strict=True):
            np.testing.assert_array_equal(np.asarray(got[k]), want)
    compiled, _ = prepared_adapter(replace(spec, execution="compiled"))
    fused_run, compiled_run = adapter.run_epoch(0, 1), compiled.run_epoch(0, 1)
    assert len(fused_run.losses) == len(compiled_run.losses) == 18  # 17 full batches and the ragged tail
    assert all(np.array_equal(a, b) for a, b in zip(fused_run.ids, compiled_run.ids, strict=True))
    tol = dict(rtol=FLOAT64_EXACT.rtol, atol=FLOAT64_EXACT.atol)
    np.testing.assert_allclose(fused_run.losses, compiled_run.losses, **tol)
    assert adapter.compile_count == 1  # one scan over the epoch, its ragged tail padded; nothing replayed


def float_avals(jaxpr) -> set[tuple[str, bool]]:
    """{(dtype, is scalar)} of every floating value in a jaxpr, sub-jaxprs (the scan body, the gradients) included."""
    from jax.extend.core import jaxprs_in_params

    found = set()
    for eqn in jaxpr.eqns:
        for var in (*eqn.invars, *eqn.outvars):
            aval = getattr(var, "aval", None)
            if aval is not None and jnp.issubdtype(aval.dtype, jnp.floating):
                found.add((str(aval.dtype), aval.shape == ()))
        for sub in jaxprs_in_params(eqn.params):
            found |= float_avals(sub)
    return found


def test_fused_float32_stays_float32():
    """x64 is on for every spec: inside the fused scan every tensor stays float32; only scalars (Adam's bias
    correction 1 − β^t from Python floats) are float64, cast to float32 before they touch a tensor."""
    config = MODE_CASES[1]
    spec = replace(matrix_spec(config, "float32"), execution="fused")
    assert divergences(compare_with_oracle("jax", spec)) == []
    adapter, _ = prepared_adapter(spec)
    ids, w = adapter.plan.slots(0)
    args = (
        adapter.params,
        adapter.opt_state,
        *adapter.split,
        *adapter._stacked(ids[:21].reshape(3, 7), w[:21].reshape(3, 7), [1, 2, 3]),
    )
    closed = jax.make_jaxpr(adapter.run.scan)(*args)
    found = float_avals(closed.jaxpr)
    assert ("float32", False) in found and ("float64", False) not in found
    assert {str(a.dtype) for a in closed.out_avals if jnp.issubdtype(a.dtype, jnp.floating)} == {"float32"}


def test_padded_batch_equals_ragged_batch():
    """Same seed and plan order; pad's filler rows have weight 0, so every step's loss and the final parameters
    equal keep's (the shared masks of the real rows are the same: numpy draws them row by row)."""
    sections = dict(
        train={"epochs": 4}, optimizer={"momentum": 0.9, "lr": 0.05}, regularization={"dropout": 0.5, "l2": 0.01}
    )
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


# ---- layer_norm ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-9), ("float32", 1e-4)])
@pytest.mark.parametrize("case", list(LAYER_NORM_RUNS))
def test_layer_norm_stack_matches_oracle(case, dtype, rtol):
    """Exact mode: nn.LayerNorm with the canonical eps (model.norm_eps) and two-pass variance agrees with the numpy
    oracle at every step (scale and offset regularized only with regularize_bias)."""
    spec = spec_for(
        dtype=dtype, model={"layers": LAYER_NORM_STACK}, batching={"last_batch": "pad"}, **LAYER_NORM_RUNS[case]
    )
    comparison = compare_with_oracle("jax", spec)
    assert comparison["tolerance"]["rtol"] == rtol
    assert divergences(comparison) == []
    assert {"ln0.scale", "ln0.offset", "ln1.scale", "ln1.offset"} <= set(canonical_init(spec, load_dataset(spec)))


def test_layer_norm_eps_is_the_spec_s_in_exact_mode_and_flax_s_in_native_mode():
    """Exact mode passes `layer.eps` (and the two-pass variance); native mode keeps nn.LayerNorm's defaults
    (epsilon 1e-6, fast variance). Checked on the module attributes and on the output against the formula."""
    layers = [{"kind": "layer_norm", "eps": 0.5}, {"kind": "dense"}]
    assert nn.LayerNorm.epsilon == 1e-6
    x = jnp.asarray(load_dataset(spec_for()).train_x[:9])
    for mode, eps, fast in (("exact", 0.5, False), ("native", 1e-6, True)):
        spec = spec_for(mode=mode, model={"layers": layers})
        data = load_dataset(spec)
        stack = model_layers(spec, data)
        assert stack[0].eps == 0.5
        model = build(stack, spec)
        params = model.init(jax.random.PRNGKey(0), x)
        seen = []

        def record(next_fun, args, kwargs, context, seen=seen):
            if isinstance(context.module, nn.LayerNorm):
                seen.append((context.module.epsilon, context.module.use_fast_variance))
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            logits = np.asarray(model.apply(params, x))
        assert seen == [(eps, fast)]
        p = to_canonical(params)
        xn = np.asarray(x)
        z = (xn - xn.mean(1, keepdims=True)) / np.sqrt(xn.var(1, keepdims=True) + eps)
        want = (z * p["ln0.scale"] + p["ln0.offset"]) @ p["layer0.weight"] + p["layer0.bias"]
        np.testing.assert_allclose(logits, want, rtol=1e-10, atol=1e-12)


# ---- images and batch_norm -----------------------------------------------------------------------------------------

# digits images: 1438 training rows, batch 7: 205 full batches and a ragged last batch of 3 (206 steps an epoch)
CNN_STEPS = 206
TOL = dict(rtol=FLOAT64_EXACT.rtol, atol=FLOAT64_EXACT.atol)
# tests.support's CNN with tanh instead of relu in front of each batch_norm: the same layers and code paths, but no
# relu unit that is alive in one row of seven feeding a batch_norm (whose x̂ then swings with a ~1e-3 input), so a
# full epoch is not chaotic and runs of different rounding (fused against per-step jit) stay within 1e-9
STEADY_STACK = [{**layer, "activation": "tanh"} if k in (0, 7) else layer for k, layer in enumerate(support.CNN_STACK)]
# the other image kinds: valid conv, avg_pool with "same" padding (real-pixel divisor at the border), batch_norm on
# pooled images with the unbiased estimator, tanh, global_avg_pool
POOL_STACK = [
    {"kind": "conv2d", "filters": 5, "kernel": 2, "padding": "valid"},
    {"kind": "avg_pool", "size": 3, "stride": 2, "padding": "same"},
    {"kind": "batch_norm", "momentum": 0.7, "eps": 1e-3, "running_var": "unbiased"},
    {"kind": "tanh"},
    {"kind": "global_avg_pool"},
    {"kind": "dense"},
]


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-9), ("float32", 1e-4)])
@pytest.mark.parametrize("run", list(CNN_RUNS))
def test_cnn_matches_oracle(run, dtype, rtol):
    """Every step's loss, the final parameters and running statistics, and the eval metrics agree with the numpy
    oracle (conv at stride 1 and 2 "same", both estimators, max_pool, NHWC flatten, dropout on images)."""
    comparison = compare_with_oracle("jax", cnn_spec(run, dtype=dtype))
    assert comparison["tolerance"]["rtol"] == rtol
    assert {"final/bn0.mean", "final/bn1.var"} <= {p["metric"] for p in comparison["pairs"]}
    assert divergences(comparison) == []


@pytest.mark.parametrize("execution", ["compiled", "fused"])
def test_cnn_pad_matches_oracle_in_every_jitted_mode(execution):
    comparison = compare_with_oracle("jax", replace(cnn_spec(batching={"last_batch": "pad"}), execution=execution))
    assert divergences(comparison) == []


def test_pool_stack_matches_oracle():
    comparison = compare_with_oracle("jax", cnn_spec("adam-l2-bias", stack=POOL_STACK))
    assert divergences(comparison) == []


def test_cnn_eager_equals_compiled():
    """The un-jitted step (op by op) and the jitted one give the same losses, parameters and running statistics
    over the first steps (a whole eager epoch is slow; both run the same pure step)."""
    spec = cnn_spec("adam-l2-bias")
    runs = {}
    for execution in ("eager", "compiled"):
        adapter, _ = prepared_adapter(replace(spec, execution=execution))
        batches = adapter.plan.batches(0)[:12]
        losses = []
        for t, batch in enumerate(batches, start=1):
            rows = adapter.pipeline.rows(batch)
            losses.append(float(adapter._advance(rows.x, rows.y, rows.weights, adapter._masks(t, 7), t)))
        runs[execution] = (losses, adapter.parameters(), adapter.compile_count)
    (eager, eager_params, eager_compiles), (compiled, compiled_params, compiled_compiles) = runs.values()
    assert (eager_compiles, compiled_compiles) == (0, 1)
    np.testing.assert_allclose(eager, compiled, **TOL)
    for name, value in compiled_params.items():
        np.testing.assert_allclose(eager_params[name], value, **TOL)
    assert not np.allclose(compiled_params["bn0.mean"], 0.0)  # the running statistics moved


@pytest.mark.parametrize("execution", ["compiled", "fused"])
def test_cnn_pad_equals_keep(execution):
    """pad's filler rows are masked out of nn.BatchNorm's statistics (and weigh 0 in the loss): every step and the
    final parameters and running statistics equal keep's."""
    keep, keep_npz = run_in_process("jax", replace(cnn_spec(batching={"last_batch": "keep"}), execution=execution))
    pad, pad_npz = run_in_process("jax", replace(cnn_spec(batching={"last_batch": "pad"}), execution=execution))
    assert [s["batch_ids"] for s in pad["steps"]] == [s["batch_ids"] for s in keep["steps"]]
    assert pad["steps"][-1]["batch_size"] == 3 and len(pad["steps"]) == CNN_STEPS
    np.testing.assert_allclose(pad_npz["losses"], keep_npz["losses"], **TOL)
    for key in (k for k in keep_npz if k.startswith("final/")):
        np.testing.assert_allclose(pad_npz[key], keep_npz[key], **TOL)


@pytest.mark.parametrize(
    "execution, last_batch, compiles",
    [("compiled", "keep", 2), ("compiled", "pad", 1), ("fused", "keep", 1), ("fused", "pad", 1)],
)
def test_cnn_compiles_once_per_batch_shape(execution, last_batch, compiles):
    """An epoch with a ragged last batch: keep has two batch shapes (7 and 3), pad one (fused pads keep's tail inside
    its one program per epoch); the running statistics keep their dtype and shape across steps, so nothing
    retraces."""
    adapter, _, body = trained_adapter(replace(cnn_spec(batching={"last_batch": last_batch}), execution=execution))
    assert len(body["steps"]) == CNN_STEPS
    assert adapter.compile_count == compiles


def test_cnn_state_is_carried_and_never_optimized():
    """variables = {params, batch_stats}: parameters() exports the state, the optax state covers params only, and
    the running statistics after the fused epoch are those of the per-step jit (lax.scan carries them)."""
    spec = replace(cnn_spec("adam-l2-bias", stack=STEADY_STACK), execution="fused")
    adapter, data = prepared_adapter(spec)
    assert set(adapter.params) == {"params", "batch_stats"}
    assert set(adapter.parameters()) == set(canonical_init(spec, data))
    assert "batch_stats" not in str(jax.tree_util.tree_structure(adapter.opt_state))
    fused = adapter.run_epoch(0, 1)
    compiled, _ = prepared_adapter(replace(spec, execution="compiled"))
    np.testing.assert_allclose(fused.losses, compiled.run_epoch(0, 1).losses, **TOL)
    after, want = adapter.parameters(), compiled.parameters()
    for name in ("bn0.mean", "bn0.var", "bn1.mean", "bn1.var"):
        np.testing.assert_allclose(after[name], want[name], **TOL)
        assert not np.allclose(after[name], canonical_init(spec, data)[name])


def test_cnn_evaluates_on_the_running_statistics():
    """Evaluation is the oracle's eval forward (running statistics, no dropout) on the adapter's parameters."""
    spec = cnn_spec()
    adapter, data = prepared_adapter(spec)
    adapter.run_epoch(0, 1)
    batches = eval_batches(data.test_x.shape[0], 64)
    params = adapter.parameters()
    for batch, (loss_sum, correct, n) in zip(batches, adapter.evaluate("test", batches), strict=True):
        logits, _ = oracle.build(adapter.layers, spec).forward(dict(params), data.test_x[batch.ids])
        y = data.test_y[batch.ids]
        assert n == batch.ids.shape[0]
        assert loss_sum == pytest.approx(cross_entropy(logits, y).sum(), rel=1e-10)
        assert correct == np.sum(np.argmax(logits, axis=1) == y)


def test_cnn_fused_float32_stays_float32():
    """Inside the fused scan over images every tensor stays float32, the running statistics included."""
    spec = replace(cnn_spec(dtype="float32", stack=[*POOL_STACK[:-1], {"kind": "dense"}]), execution="fused")
    adapter, _ = prepared_adapter(spec)
    ids, w = adapter.plan.slots(0)
    args = (
        adapter.params,
        adapter.opt_state,
        *adapter.split,
        *adapter._stacked(ids[:21].reshape(3, 7), w[:21].reshape(3, 7), [1, 2, 3]),
    )
    closed = jax.make_jaxpr(adapter.run.scan)(*args)
    assert ("float64", False) not in float_avals(closed.jaxpr)
    assert {str(a.dtype) for a in jax.tree.leaves(adapter.params)} == {"float32"}


def test_cnn_native_mode_end_to_end():
    """Native mode (flax's nn.Conv init, "SAME" strings, BatchNorm momentum 0.99 / ε 1e-5 / fast variance, its own
    estimator, avg_pool dividing by k²) trains to finite losses, fused equal to compiled."""
    for stack in (STEADY_STACK, POOL_STACK):
        _, compiled_npz = run_in_process("jax", cnn_spec("adam-l2-bias", mode="native", stack=stack))
        _, fused_npz = run_in_process(
            "jax", replace(cnn_spec("adam-l2-bias", mode="native", stack=stack), execution="fused")
        )
        assert np.all(np.isfinite(compiled_npz["losses"])) and len(compiled_npz["losses"]) == CNN_STEPS
        np.testing.assert_array_equal(compiled_npz["init/bn0.var"], 1.0)  # flax's init, not a canonical draw
        np.testing.assert_allclose(fused_npz["losses"], compiled_npz["losses"], **TOL)
        for key in (k for k in compiled_npz if k.startswith("final/")):
            np.testing.assert_allclose(fused_npz[key], compiled_npz[key], **TOL)
        assert not np.allclose(compiled_npz["final/bn0.mean"], 0.0)


def test_cnn_bench_reference_loop_runs():
    """The bench's hand-fused reference (`parity bench --workload cnn`) runs the image kinds and batch_norm, its
    running statistics carried across the scanned epoch."""
    from backends.jax_backend import reference_loop

    spec = cnn_spec(dtype="float32", batching={"batch_size": 128})
    runner = reference_loop.make_reference(spec, load_dataset(spec), "cpu")
    losses = runner.epoch()
    runner.sync(losses)
    assert losses.shape == (12,) and losses.dtype == np.float32 and np.all(np.isfinite(np.asarray(losses)))
    stats = runner.state[1]["batch_stats"]
    assert not np.allclose(np.asarray(stats["bn0"]["mean"]), 0.0) and stats["bn1"]["var"].dtype == np.float32


# ---- native mode -------------------------------------------------------------------------------------------------


def first_step(spec: Spec) -> tuple[dict, dict]:
    """(parameters before, parameters after) the first training step of `spec` (dropout must be 0: no masks)."""
    adapter, _ = prepared_adapter(spec)
    before = adapter.parameters()
    rows = adapter.pipeline.rows(adapter.plan.batches(0)[0])
    adapter._advance(rows.x, rows.y, rows.weights, None, 1)
    return before, adapter.parameters()


def epoch_orders(rec: dict) -> list[np.ndarray]:
    """The recorded batch ids of each epoch, concatenated."""
    epochs = sorted({s["epoch"] for s in rec["steps"]})
    return [np.concatenate([s["batch_ids"] for s in rec["steps"] if s["epoch"] == e]) for e in epochs]


def test_native_mode_is_seeded():
    sections = dict(mode="native", train={"epochs": 2}, regularization={"dropout": 0.3})
    rec, npz = run_in_process("jax", spec_for(**sections))
    again, again_npz = run_in_process("jax", spec_for(**sections))
    other, other_npz = run_in_process("jax", spec_for(seed=1, **sections))
    assert [s["batch_ids"] for s in rec["steps"]] == [s["batch_ids"] for s in again["steps"]]
    assert npz.keys() == again_npz.keys()
    for key in npz:
        np.testing.assert_array_equal(npz[key], again_npz[key])
    assert [s["batch_ids"] for s in rec["steps"]] != [s["batch_ids"] for s in other["steps"]]
    assert not np.allclose(npz["init/layer0.weight"], other_npz["init/layer0.weight"])
    assert not np.allclose(npz["losses"], other_npz["losses"])


def test_native_init_is_flax_dense_default():
    """nn.Dense's defaults: lecun_normal (a normal truncated at ±2σ₀, rescaled to variance 1/fan_in) and zero
    bias; neither torch's kaiming bound (biases nonzero) nor glorot nor common's canonical draws."""
    spec = spec_for(mode="native", model={"hidden": [64, 32]}, train={"epochs": 1})
    adapter, data = prepared_adapter(spec)
    init = adapter.parameters()
    for i, fan_in in enumerate((data.n_features, 64, 32)):
        w, b = init[f"layer{i}.weight"], init[f"layer{i}.bias"]
        assert w.shape[0] == fan_in and w.dtype == np.float64
        np.testing.assert_array_equal(b, 0.0)
        std = np.sqrt(1.0 / fan_in)
        assert w.std() == pytest.approx(std, rel=0.2)
        assert abs(w.mean()) < 0.3 * std
        assert np.abs(w).max() <= 2.0 * std / 0.87962566103423978  # truncation at 2σ₀, σ₀ = std / 0.8796…

    # what a user writes: Dense layers with flax's defaults, `init(PRNGKey(seed), x)`
    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i, width in enumerate((64, 32)):
                x = nn.relu(nn.Dense(width, param_dtype=jnp.float64, name=f"layer{i}")(x))
            return nn.Dense(data.n_classes, param_dtype=jnp.float64, name="layer2")(x)

    want = Plain().init(jax.random.PRNGKey(spec.seed), jnp.zeros((1, data.n_features)))
    for name, value in to_canonical(want).items():
        np.testing.assert_array_equal(init[name], value)
    for scheme in ("torch_default", "glorot_uniform", "lecun_normal"):
        canonical = canonical_init(spec_for(mode="exact", model={"hidden": [64, 32], "init": scheme}), data)
        assert not np.allclose(canonical["layer0.weight"], init["layer0.weight"])


def test_native_order_is_jax_permutation():
    spec = spec_for(mode="native", train={"epochs": 3}, batching={"last_batch": "keep"})
    rec, _ = run_in_process("jax", spec)
    plan = BatchPlan.from_spec(spec, 120)
    orders = epoch_orders(rec)
    for e, order in enumerate(orders):
        assert sorted(order.tolist()) == list(range(120))  # every row exactly once under keep
        assert not np.array_equal(order, plan.order(e))  # not the shared numpy order
        key = jax.random.fold_in(jax.random.PRNGKey(spec.seed), e)
        np.testing.assert_array_equal(order, np.asarray(jax.random.permutation(key, 120)))
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    assert [s["batch_size"] for s in rec["steps"] if s["epoch"] == 1] == [7] * 17 + [1]
    ordered, _ = run_in_process("jax", spec_for(mode="native", train={"epochs": 2}, batching={"shuffle": False}))
    for order in epoch_orders(ordered):
        np.testing.assert_array_equal(order, np.arange(120))


def test_native_last_batch_policies():
    """pad: weight-0 filler (one compile) but only the real ids recorded, and the same steps as keep; drop: the
    permutation's last row is not used."""
    sections = dict(mode="native", train={"epochs": 2}, optimizer={"momentum": 0.9, "lr": 0.05})
    keep, keep_npz = run_in_process("jax", spec_for(batching={"last_batch": "keep"}, **sections))
    pad_spec = spec_for(execution="compiled", batching={"last_batch": "pad"}, **sections)
    adapter, _, pad = trained_adapter(pad_spec)
    drop, _ = run_in_process("jax", spec_for(batching={"last_batch": "drop"}, **sections))
    assert adapter.compile_count == 1
    assert [s["batch_ids"] for s in pad["steps"]] == [s["batch_ids"] for s in keep["steps"]]
    assert [s["batch_size"] for s in pad["steps"]][17] == 1
    tol = dict(rtol=FLOAT64_EXACT.rtol, atol=FLOAT64_EXACT.atol)
    np.testing.assert_allclose([s["loss"] for s in pad["steps"]], keep_npz["losses"], **tol)
    for name, value in pad["final"].items():
        np.testing.assert_allclose(value, keep_npz[f"final/{name}"], **tol)
    assert [s["batch_size"] for s in drop["steps"]] == [7] * 34
    for order, full in zip(epoch_orders(drop), epoch_orders(keep), strict=True):
        np.testing.assert_array_equal(order, full[:119])


def test_native_mode_uses_flax_dropout():
    overrides = dict(mode="native", train={"epochs": 2}, regularization={"dropout": 0.5})
    adapter, _, body = trained_adapter(spec_for(**overrides))
    assert adapter.model.options.native and [(layer.kind, layer.rate) for layer in adapter.layers] == [
        ("dense", 0.0),
        ("dropout", 0.5),
        ("dense", 0.0),
    ]
    rec, npz = run_in_process("jax", spec_for(**overrides))
    plain, plain_npz = run_in_process("jax", spec_for(mode="native", train={"epochs": 2}))
    # the same seed gives the same init and order, so step 1 differs only by nn.Dropout
    assert rec["steps"][0]["batch_ids"] == plain["steps"][0]["batch_ids"]
    np.testing.assert_array_equal(npz["init/layer0.weight"], plain_npz["init/layer0.weight"])
    assert npz["losses"][0] != pytest.approx(plain_npz["losses"][0], rel=1e-6)
    np.testing.assert_array_equal(npz["losses"], [s["loss"] for s in body["steps"]])  # keyed by seed and step
    assert np.all(np.isfinite(npz["losses"]))


def test_native_dropout_keys():
    """nn.Dropout's key is new at every step, depends on the seed, and is none of the shuffle's keys
    fold_in(PRNGKey(seed), epoch) (plain fold_in(PRNGKey(seed), step) would reuse epoch `step`'s key)."""
    spec = spec_for(mode="native", regularization={"dropout": 0.5})
    data = load_dataset(spec)
    adapters = [
        prepared_adapter(spec_for(mode="native", seed=seed, regularization={"dropout": 0.5}))[0] for seed in (0, 1)
    ]
    keys = {
        (seed, t): tuple(np.asarray(a.dropout_key(t)).tolist()) for seed, a in enumerate(adapters) for t in range(1, 30)
    }
    shuffle = {
        tuple(np.asarray(jax.random.fold_in(jax.random.PRNGKey(seed), e)).tolist())
        for seed in (0, 1)
        for e in range(30)
    }
    assert len(set(keys.values())) == len(keys) and not shuffle & set(keys.values())
    a, x = adapters[0], jnp.asarray(data.train_x[:8])
    out = [np.asarray(a.model.apply(a.params, x, train=True, rngs={"dropout": a.dropout_key(t)})) for t in (1, 2)]
    assert not np.allclose(out[0], out[1])  # the key reaches nn.Dropout: new masks each step


def test_native_l2_as_written_moves_by_lr_lambda_w():
    """Coupled "as written": λ = l2 + coupled wd = 0.03 goes to add_decayed_weights(λ), gradient λ·w (the exact
    mode's canonical c = 2·l2 + wd = 0.04). One plain SGD step from the same native init and batch."""
    lr = 0.1
    before, plain = first_step(spec_for(mode="native", optimizer={"lr": lr}))
    init, decayed = first_step(
        spec_for(mode="native", optimizer={"lr": lr}, regularization={"l2": 0.01, "weight_decay": 0.02})
    )
    for name in before:
        np.testing.assert_array_equal(init[name], before[name])
        want = -lr * 0.03 * init[name] if name.endswith(".weight") else np.zeros_like(init[name])
        np.testing.assert_allclose(decayed[name] - plain[name], want, rtol=0, atol=1e-12)
    assert np.abs(lr * 0.03 * init["layer0.weight"]).max() > 1e-3


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_native_l1_subgradient_is_plus_one_at_zero(reduction):
    """JAX differentiates |x| at 0 to +1, so native L1 (a jnp.abs loss term) pushes flax's zero biases down by
    lr·f at step 1; exact mode (sign(0) = 0) leaves zero biases where the cross-entropy puts them."""
    assert float(jax.grad(jnp.abs)(0.0)) == 1.0
    lr, l1 = 0.1, 0.05
    reg = {"l1": l1, "l1_reduction": reduction, "regularize_bias": True}
    for mode, init in (("native", "torch_default"), ("exact", "glorot_uniform")):  # both start at zero biases
        before, plain = first_step(spec_for(mode=mode, model={"init": init}, optimizer={"lr": lr}))
        start, shrunk = first_step(spec_for(mode=mode, model={"init": init}, optimizer={"lr": lr}, regularization=reg))
        for name in before:
            w = start[name]
            np.testing.assert_array_equal(w, before[name])
            f = l1 / w.size if reduction == "mean" else l1
            sign = np.where(w == 0, 1.0 if mode == "native" else 0.0, np.sign(w))
            np.testing.assert_allclose(shrunk[name] - plain[name], -lr * f * sign, rtol=0, atol=1e-12)
            if name.endswith(".bias"):
                np.testing.assert_array_equal(w, 0.0)
                moved = np.abs(shrunk[name] - plain[name]).min()
                assert moved > 1e-4 if mode == "native" else moved == 0.0


def native_tx(**sections):
    """(optim.build's chain for a native spec, a float64 one-layer flax params tree with nonzero biases)."""
    from backends.jax_backend.model import to_native
    from backends.jax_backend.optim import build
    from common.regularization import Regularization

    spec = spec_for(mode="native", **sections)
    load_adapter("jax").make_adapter(spec)  # switches on jax_enable_x64, as every run does: float64 params below
    canonical = {"layer0.weight": np.full((2, 3), 2.0), "layer0.bias": np.full(3, -1.0)}
    return build(spec, Regularization.from_spec(spec), canonical), to_native(canonical)


def one_update(tx, params, gradient: float) -> dict:
    """The chain's first update of `params` (leaves as float64) for a constant gradient, by leaf kind."""
    params = jax.tree.map(lambda p: jnp.asarray(p, dtype=jnp.float64), params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, gradient), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert {str(v.dtype) for v in jax.tree.leaves(updates)} == {"float64"}
    return {k: np.asarray(v) for k, v in updates["params"]["layer0"].items()}


@pytest.mark.parametrize("regularize_bias", [False, True])
def test_native_decay_masks(regularize_bias):
    """Coupled add_decayed_weights(λ) honours regularize_bias; decoupled decay (adamw, sgd) has no mask."""
    tx, params = native_tx(optimizer={"lr": 0.1}, regularization={"l2": 0.01, "regularize_bias": regularize_bias})
    u = one_update(tx, params, 0.0)
    np.testing.assert_allclose(u["kernel"], -0.1 * 0.01 * 2.0, rtol=1e-12)
    np.testing.assert_allclose(u["bias"], 0.1 * 0.01 if regularize_bias else 0.0, rtol=1e-12)
    for name in ("adamw", "sgd"):
        tx, params = native_tx(
            optimizer={"name": name, "lr": 0.1},
            regularization={"weight_decay": 0.05, "decay": "decoupled", "regularize_bias": regularize_bias},
        )
        u = one_update(tx, params, 0.0)
        np.testing.assert_allclose(u["kernel"], -0.1 * 0.05 * 2.0, rtol=1e-12)
        np.testing.assert_allclose(u["bias"], 0.1 * 0.05, rtol=1e-12)  # biases decayed either way


def test_native_adam_uses_spec_eps():
    """First Adam step: lr·g/(|g| + ε); with g = ε = 1e-6 that is lr/2 (Keras's default 1e-7 would give lr/1.1)."""
    tx, params = native_tx(optimizer={"name": "adam", "lr": 0.1, "eps": 1e-6})
    u = one_update(tx, params, 1e-6)
    np.testing.assert_allclose(u["kernel"], -0.05, rtol=1e-9)
    np.testing.assert_allclose(u["bias"], -0.05, rtol=1e-9)


def test_native_float32_stays_float32():
    spec = spec_for(
        mode="native",
        dtype="float32",
        train={"epochs": 1},
        optimizer={"name": "adamw"},
        regularization={"l1": 0.01, "l2": 0.01, "weight_decay": 0.01, "decay": "decoupled", "dropout": 0.3},
    )
    adapter, _, body = trained_adapter(spec)
    leaves = jax.tree.leaves((adapter.params, adapter.opt_state))
    assert {str(a.dtype) for a in leaves if jnp.issubdtype(a.dtype, jnp.floating)} == {"float32"}
    assert all(v.dtype == np.float32 for v in (*body["init"].values(), *body["final"].values()))
    assert np.all(np.isfinite([s["loss"] for s in body["steps"]]))
