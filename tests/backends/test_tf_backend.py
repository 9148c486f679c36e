"""TensorFlow / Keras 3 backend: exact-mode agreement with the numpy oracle, dropout handling, and the Keras traps
this backend converts (L2 factor, sample-weight reduction, ε-hat, float32 hyperparameter casts, retracing)."""

import dataclasses
import inspect
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from backends.tf_backend import optim as tf_optim  # noqa: E402
from backends.tf_backend.adapter import make_adapter  # noqa: E402
from backends.tf_backend.execution import MODES  # noqa: E402
from common.batching import BatchPlan, eval_batches  # noqa: E402
from common.datasets import load_dataset  # noqa: E402
from common.driver import canonical_init, train  # noqa: E402
from common.layers import is_state  # noqa: E402
from common.metrics import cross_entropy, weighted_mean  # noqa: E402
from tests.support import (  # noqa: E402
    CNN_RUNS,
    EXACT_MATRIX,
    LAYER_NORM_RUNS,
    LAYER_NORM_STACK,
    base_spec,
    cnn_spec,
    compare_with_oracle,
    divergences,
    matrix_spec,
    prepared_adapter,
    run_in_process,
)

# Together these cover every last_batch policy, shuffle on/off, plain sgd, sgd+momentum, sgd+nesterov, adam, adamw,
# l1 mean and sum (on zero-initialised biases too: sign(0) = 0), l2, coupled and decoupled decay, regularize_bias
# on/off, dropout 0.3 / 0.5, relu/tanh, all three init schemes, one and two hidden layers.


_spec = base_spec


def _loss_pair(cmp):
    return next(p for p in cmp["pairs"] if p["metric"] == "loss")


@pytest.mark.parametrize("name", sorted(EXACT_MATRIX))
def test_float64_exact_mode_agrees_with_oracle(name):
    spec = matrix_spec(name)
    cmp = compare_with_oracle("tf", spec)
    assert divergences(cmp) == []
    assert BatchPlan.from_spec(spec, 120).steps_per_epoch * spec.train.epochs >= 100


def test_float32_exact_mode_agrees_within_float32_tolerance():
    # SGD, not Adam: Keras's float32 Adam carries a systematic step-size bias (next test) that, accumulated over
    # ~120 steps, puts near-zero parameters just outside atol 1e-6.
    spec = _spec(
        dtype="float32",
        batching={"last_batch": "pad"},
        optimizer={"momentum": 0.9},
        regularization={"dropout": 0.3, "l2": 0.001, "weight_decay": 0.01, "decay": "decoupled"},
    )
    cmp = compare_with_oracle("tf", spec)
    assert cmp["tolerance"]["rtol"] == 1e-4
    assert divergences(cmp) == []
    _, npz = run_in_process("tf", spec)
    assert all(v.dtype == np.float32 for k, v in npz.items() if k.startswith("final/"))


def test_keras_float32_adam_bias_correction_uses_float32_betas():
    """In float32 Keras Adam computes α = lr·√(1−β2ᵗ)/(1−β1ᵗ) from β1, β2 rounded to float32, so its first step is
    lr·√(1−f32(β2))/(1−f32(β1))·f32(1−β1)/√f32(1−β2), about 6.4e-6 short of lr (torch/optax form bias corrections
    in float64 Python scalars): a native float32 difference, not a conversion error."""
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    previous = keras.config.floatx()
    keras.config.set_floatx("float32")
    try:
        w = keras.Variable(np.zeros(3, np.float32), dtype="float32")  # w₁ = −step, to float32 precision
        opt = keras.optimizers.Adam(learning_rate=0.01, epsilon=0.0)
        opt.apply_gradients([(np.array([0.3, -0.02, 1e-3], np.float32), w)])
        steps = np.abs(w.numpy().astype(np.float64)) / 0.01
    finally:
        keras.config.set_floatx(previous)
    want = np.sqrt(1 - f32(0.999)) / (1 - f32(0.9)) * f32(1 - 0.9) / np.sqrt(f32(1 - 0.999))
    assert 1.0 - want > 5e-6
    np.testing.assert_allclose(steps, want, rtol=1e-6)


def _trained_adapter(spec):
    data = load_dataset(spec)
    adapter = make_adapter(spec)
    train(adapter, spec, data)
    return adapter, data


def _numpy_eval(params, x, y, activation):
    h = x
    n = sum(1 for k in params if k.endswith(".weight"))
    for i in range(n):
        h = h @ params[f"layer{i}.weight"] + params[f"layer{i}.bias"]
        if i < n - 1:
            h = np.maximum(h, 0.0) if activation == "relu" else np.tanh(h)
    return float(cross_entropy(h, y).sum()), float((h.argmax(axis=1) == y).sum())


@pytest.mark.parametrize("mode", ["exact", "native"])
def test_evaluate_has_no_dropout(mode):
    spec = _spec(mode=mode, train={"epochs": 1}, batching={"eval_batch_size": 32}, regularization={"dropout": 0.5})
    adapter, data = _trained_adapter(spec)
    batches = eval_batches(data.train_x.shape[0], 32)
    first, second = adapter.evaluate("train", batches), adapter.evaluate("train", batches)
    assert first == second
    params = adapter.parameters()
    for batch, (loss_sum, correct, n) in zip(batches, first, strict=True):
        want_loss, want_correct = _numpy_eval(params, data.train_x[batch.ids], data.train_y[batch.ids], "relu")
        assert n == batch.n_real
        assert correct == want_correct
        assert loss_sum == pytest.approx(want_loss, rel=1e-12)


def test_native_mode_uses_keras_dropout():
    spec = _spec(mode="native", train={"epochs": 1}, regularization={"dropout": 0.5})
    adapter = make_adapter(spec)
    train(adapter, spec, load_dataset(spec))
    dropouts = [layer for layer in adapter.model.stack if isinstance(layer, keras.layers.Dropout)]
    assert len(dropouts) == len(spec.model.hidden) and all(d.rate == 0.5 for d in dropouts)
    native = run_in_process("tf", spec)
    no_dropout = run_in_process("tf", _spec(mode="native", train={"epochs": 1}))
    # Same seed, so the same native init and order: step 1 differs only by Keras's own dropout.
    assert native[0]["steps"][0]["batch_ids"] == no_dropout[0]["steps"][0]["batch_ids"]
    np.testing.assert_array_equal(native[1]["init/layer0.weight"], no_dropout[1]["init/layer0.weight"])
    assert native[1]["losses"][0] != no_dropout[1]["losses"][0]
    exact = run_in_process("tf", _spec(train={"epochs": 1}, regularization={"dropout": 0.5}))
    assert native[1]["losses"][0] != exact[1]["losses"][0]
    np.testing.assert_array_equal(native[1]["losses"], run_in_process("tf", spec)[1]["losses"])  # seeded


def test_native_mode_uses_keras_idioms():
    """common.native's tf column: tf.data.shuffle order, pad → ragged, glorot/zero init, L2(λ) and L1(λ) as
    written, Keras's default ε, decoupled decay on biases too."""
    spec = _spec(
        mode="native",
        train={"epochs": 2},
        batching={"last_batch": "pad"},
        optimizer={"name": "adamw"},
        regularization={"l2": 0.01, "l1": 0.002, "weight_decay": 0.05, "decay": "decoupled"},
    )
    data = load_dataset(spec)
    adapter = make_adapter(spec)
    body = train(adapter, spec, data)
    epochs = [[s for s in body["steps"] if s["epoch"] == e] for e in (1, 2)]
    orders = [np.concatenate([s["batch_ids"] for s in steps]) for steps in epochs]
    plan = BatchPlan.from_spec(spec, data.train_x.shape[0])
    for e, order in enumerate(orders):
        assert sorted(order) == list(range(120))
        assert not np.array_equal(order, plan.order(e))
    assert not np.array_equal(orders[0], orders[1])  # reshuffled each epoch
    assert [s["batch_size"] for s in epochs[0]][-1] == 120 % 7  # "pad" has no native idiom: ragged
    init = body["init"]
    bound = np.sqrt(6.0 / sum(init["layer0.weight"].shape))
    assert np.all(init["layer0.bias"] == 0) and np.abs(init["layer0.weight"]).max() <= bound
    dense = _keras_layer(adapter, "layer0")
    kernel_reg = dense.kernel_regularizer
    assert (kernel_reg.l1, kernel_reg.l2) == (0.002, 0.01) and dense.bias_regularizer is None
    opt = adapter.optimizer.optimizer
    assert opt.epsilon == 1e-7 and opt.weight_decay == 0.05
    assert opt._use_weight_decay(dense.bias)


def test_wrong_keras_l2_factor_is_caught_at_step_2(monkeypatch):
    """L2(c) instead of L2(c/2) doubles the coupled gradient: step 1's loss (pre-update) still agrees, the first
    update differs, so the comparison fails first at step 2."""
    spec = _spec(train={"epochs": 1}, regularization={"l2": 0.01})
    assert divergences(compare_with_oracle("tf", spec)) == []
    monkeypatch.setattr(tf_optim, "keras_l2_factor", lambda reg, name: reg.coupled if reg.applies(name) else 0.0)
    cmp = compare_with_oracle("tf", spec)
    assert not cmp["equivalent"]
    assert _loss_pair(cmp)["first_divergent_step"] == 2


def test_keras_default_sample_weight_reduction_is_wrong_on_padded_batch():
    """Keras's default reduction divides Σw·ℓ by the row count; only "mean_with_sample_weight" gives Σw·ℓ/Σw."""
    plan = BatchPlan(120, 7, True, "pad", 0)
    last = plan.batches(0)[-1]
    assert last.n_real < last.rows
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((last.rows, 3)), rng.integers(0, 3, last.rows)
    want = weighted_mean(cross_entropy(logits, labels), last.weights)

    def keras_loss(**kwargs):
        fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64", **kwargs)
        return float(fn(labels, logits, sample_weight=last.weights))

    assert keras_loss(reduction="mean_with_sample_weight") == pytest.approx(want, rel=1e-12)
    default = keras_loss()
    assert default != pytest.approx(want, rel=1e-3)
    assert default == pytest.approx(want * last.n_real / last.rows, rel=1e-12)


def test_constant_keras_epsilon_diverges(monkeypatch):
    """Keras's ε-hat placement: a constant epsilon = ε (no per-step ε̂_t) does not reproduce torch/optax Adam."""
    spec = _spec(train={"epochs": 1}, optimizer={"name": "adam", "lr": 0.01, "eps": 1e-4})
    assert divergences(compare_with_oracle("tf", spec)) == []
    monkeypatch.setattr(tf_optim, "keras_epsilon_hat", lambda eps, beta2, step: eps)
    cmp = compare_with_oracle("tf", spec)
    assert _loss_pair(cmp)["first_divergent_step"] == 2


def test_python_float_hyperparameters_lose_float64_precision(monkeypatch):
    """Keras casts Python-float hyperparameters through a float32 tensor on TF; `hyper` keeps them float64."""
    assert keras.ops.cast(0.9, "float64").numpy() != 0.9
    assert keras.ops.cast(tf_optim.hyper(0.9, "float64"), "float64").numpy() == 0.9
    spec = _spec(train={"epochs": 1}, optimizer={"name": "adam", "lr": 0.01})
    monkeypatch.setattr(tf_optim, "hyper", lambda value, dtype: float(value))
    cmp = compare_with_oracle("tf", spec)
    assert _loss_pair(cmp)["first_divergent_step"] == 2


def test_ragged_last_batch_does_not_retrace():
    spec = _spec(train={"epochs": 2}, regularization={"dropout": 0.3})
    assert 120 % spec.batching.batch_size != 0
    adapter, _ = _trained_adapter(spec)
    assert adapter.runner.step.experimental_get_tracing_count() == 1
    assert adapter._forward.experimental_get_tracing_count() == 1


def test_pipeline_is_tf_data_and_records_versions():
    spec = _spec(train={"epochs": 1})
    adapter = _prepared(spec)
    plan = BatchPlan.from_spec(spec, 120)
    ds = adapter.pipeline.dataset(0)
    assert isinstance(ds, tf.data.Dataset)
    sizes = [int(b["x"].shape[0]) for b in ds]
    assert sizes == [b.rows for b in plan.batches(0)] and sizes[-1] < 7  # ragged last batch from .batch()
    assert adapter.versions() == {"tensorflow": tf.__version__, "keras": keras.__version__}
    np.testing.assert_array_equal(
        adapter.parameters()["layer0.weight"], canonical_init(spec, load_dataset(spec))["layer0.weight"]
    )


# Execution modes (spec.execution): both cases keep a ragged last batch of 1 row (the fused program's extra step
# after its loop) and shared dropout masks; the second runs Keras AdamW, so ε̂_t must follow every step.
MODE_CASES = ("keep-shuffle-sgd-momentum-coupled-drop0.5", "keep-ordered-adamw-bias-drop0.3-lecun")


@pytest.mark.parametrize("case", MODE_CASES)
@pytest.mark.parametrize("mode", MODES)
def test_every_execution_mode_agrees_with_oracle(mode, case):
    spec = dataclasses.replace(matrix_spec(case), execution=mode)
    assert divergences(compare_with_oracle("tf", spec)) == []


def _prepared(spec):
    return prepared_adapter("tf", spec)[0]


def _keras_layer(adapter, name):
    return next(layer for layer in adapter.model.stack if layer.name == name)


def test_compiled_and_fused_use_xla():
    spec = _spec(train={"epochs": 1})
    assert not _prepared(dataclasses.replace(spec, execution="eager")).runner.step._jit_compile
    assert _prepared(dataclasses.replace(spec, execution="compiled")).runner.step._jit_compile
    fused = _prepared(dataclasses.replace(spec, execution="fused"))
    assert fused.runner.program._jit_compile


def test_fused_runs_one_program_per_epoch():
    spec = dataclasses.replace(
        _spec(train={"epochs": 3}, optimizer={"name": "adam"}, regularization={"dropout": 0.3}), execution="fused"
    )
    adapter, _ = _trained_adapter(spec)
    plan = BatchPlan.from_spec(spec, 120)
    assert adapter.runner.program.experimental_get_tracing_count() == 1  # same shapes every epoch: one trace
    assert int(adapter.optimizer.optimizer.iterations.numpy()) == 3 * plan.steps_per_epoch
    assert adapter.runner.step.experimental_get_tracing_count() == 0  # the driver's steps all came from the program
    full, tail = adapter.runner.plan_inputs(0, 1)
    assert full[0].shape == (120 // 7, 7) and tail[0].shape == (120 % 7,)


def test_fused_sets_epsilon_hat_inside_the_loop(monkeypatch):
    """The fused program assigns ε̂_t per step from its table, entry k to step first + k: a table shifted by one
    step diverges at step 2 (step 1's update is wrong), one frozen at ε̂ of the first step at step 3."""
    spec = dataclasses.replace(
        _spec(train={"epochs": 1}, optimizer={"name": "adam", "lr": 0.01, "eps": 1e-4}), execution="fused"
    )
    assert divergences(compare_with_oracle("tf", spec)) == []
    table = tf_optim.KerasOptimizer.epsilon_table
    for wrong, first_bad in (
        (lambda self, first, count: table(self, first + 1, count), 2),
        (lambda self, first, count: np.full(count, table(self, first, 1)[0]), 3),
    ):
        monkeypatch.setattr(tf_optim.KerasOptimizer, "epsilon_table", wrong)
        assert _loss_pair(compare_with_oracle("tf", spec))["first_divergent_step"] == first_bad


def test_fused_needs_exact_mode():
    with pytest.raises(ValueError, match=r"fused.*exact"):
        make_adapter(dataclasses.replace(_spec(mode="native"), execution="fused"))


# Layer stacks with layer_norm (Keras LayerNormalization, gamma/beta = ln{i}.scale/offset) against the oracle.


@pytest.mark.parametrize("case", sorted(LAYER_NORM_RUNS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_layer_norm_stack_agrees_with_oracle(case, dtype):
    spec = _spec(dtype=dtype, model={"layers": LAYER_NORM_STACK}, **LAYER_NORM_RUNS[case])
    cmp = compare_with_oracle("tf", spec)
    assert cmp["tolerance"]["rtol"] == (1e-9 if dtype == "float64" else 1e-4)
    assert divergences(cmp) == []
    _, npz = run_in_process("tf", spec)
    assert {"final/ln0.scale", "final/ln0.offset", "final/ln1.scale", "final/ln1.offset"} <= set(npz)
    assert not np.array_equal(npz["final/ln0.scale"], npz["init/ln0.scale"])  # gamma trained


def test_layer_norm_eps_exact_is_the_specs_native_is_keras_default():
    keras_default = inspect.signature(keras.layers.LayerNormalization).parameters["epsilon"].default
    assert keras_default == 1e-3  # the trap: torch 1e-5, flax 1e-6
    layers = [
        {"kind": "dense", "units": 8, "activation": "relu"},
        {"kind": "layer_norm"},
        {"kind": "layer_norm", "eps": 2e-5},
        {"kind": "dense"},
    ]
    for mode, want in (("exact", [1e-4, 2e-5]), ("native", [keras_default, keras_default])):
        adapter = _prepared(_spec(mode=mode, model={"layers": layers, "norm_eps": 1e-4}))
        norms = [layer for layer in adapter.model.stack if isinstance(layer, keras.layers.LayerNormalization)]
        assert [norm.epsilon for norm in norms] == want and [norm.name for norm in norms] == ["ln0", "ln1"]


def test_layer_norm_with_keras_default_eps_diverges_in_exact_mode(monkeypatch):
    """The exact eps matters: Keras's default ε = 1e-3 instead of the spec's 1e-5 is caught at step 1."""
    from backends.tf_backend import model as tf_model
    from backends.tf_backend import norm as tf_norm

    spec = _spec(train={"epochs": 1}, model={"layers": LAYER_NORM_STACK}, regularization={"dropout": 0.3})
    monkeypatch.setitem(
        tf_model.LAYERS,
        "layer_norm",
        lambda layer, build: tf_norm.layer_norm(layer, dataclasses.replace(build, native=True)),
    )
    assert _loss_pair(compare_with_oracle("tf", spec))["first_divergent_step"] == 1


# Images and BatchNorm (docs/design.md, "Images and BatchNorm"): the CNN of tests.support (conv "same" at stride 1
# and 2, batch_norm after conv and dense with both running-variance estimators, max_pool, NHWC flatten, dropout on
# images and features) on digits images, batch 7 with a ragged last batch of 3, against the oracle at every step.
# The layers alone against numpy references: tests/backends/test_tf_images.py.


def _cnn_checked(spec):
    cmp = compare_with_oracle("tf", spec)
    assert cmp["tolerance"]["rtol"] == (1e-9 if spec.dtype == "float64" else 1e-4)
    assert divergences(cmp) == []
    metrics = {p["metric"] for p in cmp["pairs"]}
    assert {"loss", "test_loss", "final/bn0.mean", "final/bn1.var", "final/conv1.weight"} <= metrics
    return cmp


@pytest.mark.parametrize("run", sorted(CNN_RUNS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cnn_agrees_with_oracle(run, dtype):
    _cnn_checked(cnn_spec(run, dtype=dtype))


# A short epoch (54 training rows: 7 batches of 7 and a ragged 5) in every execution mode, dtype and last-batch
# policy: tf.function, XLA and the fused XLA epoch must assign the moving statistics inside the program as eager
# does, and the filler rows stay out of them. Short, because the full epoch amplifies rounding: TF's own eager and
# XLA runs of it drift apart (losses 2.5e-7 apart by the end of the float64 SGD run, 4e-2 within 50 float32 steps).
SHORT = {"data": {"test_fraction": 0.97}}


@pytest.mark.parametrize("run", sorted(CNN_RUNS))
@pytest.mark.parametrize("last", ["keep", "pad"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode", MODES)
def test_cnn_short_epoch_agrees_with_oracle_in_every_execution_mode(mode, dtype, last, run):
    spec = cnn_spec(run, dtype=dtype, batching={"last_batch": last}, **SHORT)
    assert load_dataset(spec).train_x.shape[0] == 54
    _cnn_checked(dataclasses.replace(spec, execution=mode))


@pytest.mark.parametrize("run", sorted(CNN_RUNS))
def test_cnn_pad_agrees_with_oracle_and_equals_keep(run):
    """The last batch padded from 3 real rows to 7: the filler rows stay out of the batch_norm statistics (Keras's
    mask) and the loss, and common.dropout gives the real rows keep's masks, so pad is keep."""
    keep, pad = (cnn_spec(run, batching={"last_batch": last}) for last in ("keep", "pad"))
    (rec_k, npz_k), (rec_p, npz_p) = run_in_process("tf", keep), run_in_process("tf", pad)
    assert [s["batch_ids"] for s in rec_p["steps"]] == [s["batch_ids"] for s in rec_k["steps"]]
    assert [s["batch_size"] for s in rec_p["steps"]][-1] == 3
    for key in ("losses", *(k for k in npz_k if k.startswith("final/"))):
        np.testing.assert_allclose(npz_p[key], npz_k[key], rtol=1e-9, atol=1e-12, err_msg=key)
    _cnn_checked(pad)


def test_cnn_state_is_loaded_and_recorded_but_never_trained_nor_regularized():
    spec = cnn_spec(
        "adam-l2-bias", optimizer={"name": "adamw"}, regularization={"weight_decay": 1e-2, "decay": "decoupled"}
    )
    adapter, data = prepared_adapter("tf", spec)
    params, init = adapter.parameters(), canonical_init(spec, data)
    assert set(params) == set(init) and {"bn0.mean", "bn0.var", "bn1.mean", "bn1.var"} <= set(params)
    assert all(np.array_equal(params[k], init[k]) for k in init)
    state = {k for k in params if is_state(k)}
    regularizers = tf_optim.regularizers(spec, adapter.model.canonical)
    assert all(regularizers[k] is None for k in state) and regularizers["bn0.scale"] is not None  # regularize_bias
    optimizer = adapter.optimizer.optimizer
    trained = {v.path for v in optimizer._trainable_variables}
    assert trained == {v.path for v in adapter.model.trainable_variables}
    moving = {v.path for v in adapter.model.non_trainable_variables}
    assert len(moving) == len(state) and not trained & moving
    keras_gamma = _keras_layer(adapter, "bn0").gamma
    assert optimizer._use_weight_decay(keras_gamma)  # regularize_bias: scale decays too, the state is not there


def test_cnn_steps_trace_once_with_image_inputs_and_masks():
    spec = cnn_spec("sgd-momentum-wd")
    adapter, _ = _trained_adapter(spec)
    assert adapter.pipeline.x_spec.shape.as_list() == [None, 8, 8, 1]
    assert [tuple(s) for s in adapter.runner.masks.shapes] == [(4, 4, 6), (16,)]
    assert adapter.runner.step.experimental_get_tracing_count() == 1  # the ragged last batch of 3 reuses it
    fused = _prepared(dataclasses.replace(spec, execution="fused"))
    full, tail = fused.runner.plan_inputs(0, 1)
    assert full[0].shape == (205, 7) and [m.shape for m in full[2]] == [(205, 7, 4, 4, 6), (205, 7, 16)]
    assert [m.shape for m in tail[2]] == [(3, 4, 4, 6), (3, 16)]


def test_cnn_native_mode_runs_keras_defaults_end_to_end():
    spec = cnn_spec("adam-l2-bias", mode="native")
    adapter, data = prepared_adapter("tf", spec)
    norms = [layer for layer in adapter.model.stack if isinstance(layer, keras.layers.BatchNormalization)]
    assert [type(n) for n in norms] == [keras.layers.BatchNormalization] * 2
    assert all((n.momentum, n.epsilon) == (0.99, 1e-3) for n in norms)  # not the spec's 0.8 / 0.9 and 1e-5
    _, npz = run_in_process("tf", spec)
    assert np.all(np.isfinite(npz["losses"])) and len(npz["losses"]) == 206
    assert not np.allclose(npz["final/bn1.var"], npz["init/bn1.var"])  # the state moved
    assert not np.array_equal(npz["init/conv0.weight"], canonical_init(spec, data)["conv0.weight"])  # Keras init
