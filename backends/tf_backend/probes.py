"""TensorFlow / Keras 3's side of the trap catalogue (common.traps): one probe per trap TF takes part in.

Each probe MEASURES what the installed tensorflow / keras do and returns a JSON-able dict; the conformance test
compares it with `common.traps.TRAPS[id].expected["tf"]`. Probes that need a seeded tf.data shuffle call
`tf.random.set_seed(SEED)` (tf.data op seeds are paired with the global seed); op determinism is switched back off
after the Keras jit probe; the TF32 default is read in a fresh interpreter.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import functools
import inspect
import json
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from common import traps as T
from common.metrics import aggregate
from common.traps.inputs import (
    ACCUMULATE,
    ACCUMULATOR,
    AVERAGE_LOSS,
    AVG_POOL_SAME,
    BN_EPS_INPUT,
    BN_INPUT,
    BN_MASK,
    BN_MOMENTUM,
    BN_REPLICAS,
    BN_SPLIT,
    CLIP_BOUNDARY,
    CLIP_DECAY,
    CLIP_REPLICAS,
    CLIP_SCOPE,
    CONV_KERNEL,
    CONV_SAME,
    FLATTEN_HWC,
    LAYOUT,
    PENALTY,
    POOL_DEFAULT,
    SCHEDULE,
    SCHEDULE_FLOAT32,
    bn_large_mean_input,
    conv_ramp,
)
from common.traps.reference import (
    accumulation_measurement,
    batch_norm_reference,
    clip_boundary_norm,
    clip_decay_order,
    clip_factor,
    clip_replica_placement,
    clip_scope,
    conv2d_reference,
    named_match,
    pool_reference,
    split_statistics_name,
    window_pads,
)


def versions() -> dict[str, str]:
    return {"tensorflow": tf.__version__, "keras": keras.__version__}


def keras_defaults(probe):
    """Run `probe` under Keras's default floatx (float32), restoring the process's setting afterwards.

    The TF adapter sets floatx to the spec dtype, and floatx is process-global: a probe of Keras's *defaults*
    must not inherit a float64 left behind by an earlier run in the same process (e.g. a test session).
    """

    @functools.wraps(probe)
    def wrapped():
        previous = keras.config.floatx()
        keras.config.set_floatx("float32")
        try:
            return probe()
        finally:
            keras.config.set_floatx(previous)

    return wrapped


def _fresh(code: str) -> dict:
    """Run `code` (which prints one JSON line) in a fresh interpreter: defaults untouched by this process, and a
    TensorFlow runtime not yet started (logical devices can still be added). A failure names its last stderr line."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    if out.returncode != 0:
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        raise RuntimeError(f"fresh interpreter exited {out.returncode}: {lines[-1] if lines else 'no stderr'}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ints(ds) -> list:
    return [np.asarray(b).tolist() for b in ds]


def _scce(**kwargs):
    return keras.losses.SparseCategoricalCrossentropy(**kwargs)


def shuffle_order() -> dict:
    """tf.data.Dataset.range(N).shuffle(N, seed=SEED) after tf.random.set_seed(SEED)."""
    tf.random.set_seed(T.SEED)
    return {"order": _ints(tf.data.Dataset.range(T.ORDER_N).shuffle(T.ORDER_N, seed=T.SEED))}


def tf_shuffle_buffer() -> dict:
    """Which ids come first over SHUFFLE_EPOCHS reshuffled epochs of shuffle(buffer_size=2) on N ids."""
    tf.random.set_seed(T.SEED)
    ds = (
        tf.data.Dataset.range(T.ORDER_N)
        .shuffle(T.SHUFFLE_BUFFER, seed=T.SEED, reshuffle_each_iteration=True)
        .repeat(T.SHUFFLE_EPOCHS)
        .batch(T.ORDER_N)
    )
    return {"first_element_support": sorted({int(b[0]) for b in ds})}


def repeat_batch_epochs() -> dict:
    ds = tf.data.Dataset.range(T.ORDER_N_SMALL)
    return {"batches": _ints(ds.repeat(2).batch(3)), "batch_then_repeat": _ints(ds.batch(3).repeat(2))}


def ragged_recompile() -> dict:
    """tf.function traces over batch sizes 4, 4, 2, 3: plain, and with an input_signature of batch None."""
    counts = {"compiles": 0, "compiles_input_signature": 0}

    def make(key, **kwargs):
        @tf.function(**kwargs)
        def step(x):
            counts[key] += 1  # Python side effect: runs once per trace
            return tf.reduce_sum(x * x)

        return step

    plain = make("compiles")
    signed = make("compiles_input_signature", input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    for n in (4, 4, 2, 3):
        plain(tf.ones((n, 3)))
        signed(tf.ones((n, 3)))
    return counts


def keras_pad_sequences() -> dict:
    params = inspect.signature(keras.utils.pad_sequences).parameters
    return {
        "padded": keras.utils.pad_sequences(T.SEQUENCES, maxlen=2).tolist(),
        "padding": params["padding"].default,
        "truncating": params["truncating"].default,
    }


def tf_padded_batch() -> dict:
    ds = tf.data.Dataset.from_generator(lambda: iter(T.SEQUENCES), output_signature=tf.TensorSpec([None], tf.int32))
    return {"default": _ints(ds.padded_batch(len(T.SEQUENCES)))[0]}


def masked_mean_loss() -> dict:
    """SparseCategoricalCrossentropy(from_logits=True) on a Keras-masked sequence (Masking layer) and ignore_class."""
    z = T.LOSS_LOGITS.copy()
    z[T.LOSS_MASK == 0] = 0.0  # Masking(0.0) masks the all-zero time steps
    y = T.MASK_LABELS[None, :]
    per_row = np.asarray(_scce(from_logits=True, reduction="none")(y, T.LOSS_LOGITS[None]))[0]
    masked = keras.layers.Masking(0.0)(z[None])
    value = float(_scce(from_logits=True)(y, masked))
    everything = float(_scce(from_logits=True)(y, keras.layers.Masking(0.0)(np.zeros_like(z)[None])))
    ignored = np.where(T.LOSS_MASK > 0, T.MASK_LABELS, -1)
    by_class = float(_scce(from_logits=True, ignore_class=-1)(ignored, T.LOSS_LOGITS))
    all_ignored = float(_scce(from_logits=True, ignore_class=-1)(np.full(4, -1), T.LOSS_LOGITS))
    return {
        "reduction": T.classify_reduction(value, per_row, T.LOSS_MASK),
        "all_masked": T.finite_or_name(everything),
        "ignore_class": T.classify_reduction(by_class, per_row, T.LOSS_MASK),
        "ignore_class_all_masked": T.finite_or_name(all_ignored),
    }


def sample_weight_reduction() -> dict:
    y, z, w = T.WEIGHT_LABELS, T.LOSS_LOGITS, T.LOSS_MASK
    per_row = np.asarray(_scce(from_logits=True, reduction="none")(y, z))
    default = float(_scce(from_logits=True)(y, z, sample_weight=w))
    weighted = float(_scce(from_logits=True, reduction="mean_with_sample_weight")(y, z, sample_weight=w))
    return {
        "default": T.classify_reduction(default, per_row, w),
        "mean_with_sample_weight": T.classify_reduction(weighted, per_row, w),
    }


def dropout_scale() -> dict:
    """keras.layers.Dropout in training on float32 inputs at DROPOUT_RATES (and raw tf.nn.dropout beside it)."""
    x = T.dropout_input()
    layer = {
        p: np.asarray(keras.layers.Dropout(p, seed=T.SEED, dtype="float32")(x, training=True)) for p in T.DROPOUT_RATES
    }
    raw = {p: tf.nn.dropout(tf.constant(x), p, seed=T.SEED).numpy() for p in T.DROPOUT_RATES}
    return {**T.classify_dropout(x, layer), "tf.nn.dropout": T.classify_dropout(x, raw)["form"]}


def _mode(out, x) -> str:
    return "active" if not np.array_equal(np.asarray(out), x) else "inactive"


def dropout_default_mode() -> dict:
    x = np.ones(1000, np.float32)
    return {"default_call": _mode(keras.layers.Dropout(0.5)(x), x), "tf.nn.dropout": _mode(tf.nn.dropout(x, 0.5), x)}


def _outcome(fn) -> str:
    try:
        out = np.asarray(fn())
    except Exception as exc:  # the outcome is the exception's type
        return type(exc).__name__
    return "zeros" if not out.any() else "nonzero"


def dropout_rate_one() -> dict:
    x = np.ones(8, np.float32)
    return {
        "layer": _outcome(lambda: keras.layers.Dropout(1.0)(x, training=True)),
        "functional": _outcome(lambda: tf.nn.dropout(x, 1.0)),
    }


def l2_vs_weight_decay() -> dict:
    """A Dense kernel's regularizer gradient ∂Σ layer.losses/∂w divided by λ·w: L2(λ), and the L2(λ/2) conversion."""
    lam = 0.25
    kernel = np.array([[1.0, -2.0]])

    def ratio(factor):
        layer = keras.layers.Dense(2, use_bias=False, kernel_regularizer=keras.regularizers.L2(factor), dtype="float64")
        layer.build((None, 1))
        layer.kernel.assign(kernel)
        with tf.GradientTape() as tape:
            penalty = tf.add_n(layer.losses)
        grad = tape.gradient(penalty, layer.kernel).numpy()
        return float(np.mean(grad / (lam * kernel)))

    return {"grad_per_lambda": ratio(lam), "converted": ratio(lam / 2)}


def _regularized_model():
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(
                3,
                kernel_regularizer=keras.regularizers.L2(0.5),
                kernel_initializer=keras.initializers.Constant(0.5),
                bias_initializer=keras.initializers.Constant(0.1),
            ),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=_scce(from_logits=True))
    return model


def penalty_in_loss() -> dict:
    """fit (lr 0: weights fixed) and evaluate report CE + Σ model.losses, not the CE."""
    x, y = T.LOSS_LOGITS, T.MASK_LABELS
    model = _regularized_model()
    fit = model.fit(x, y, batch_size=len(y), epochs=1, shuffle=False, verbose=0).history["loss"][0]
    evaluated = model.evaluate(x, y, batch_size=len(y), verbose=0)
    plain = float(_scce(from_logits=True)(y, model(x)))
    penalty = float(sum(float(v) for v in model.losses))

    def includes(reported):
        return bool(abs(reported - (plain + penalty)) < abs(reported - plain))

    return {
        "reported_loss_includes_penalty": includes(fit),
        "evaluate_includes_penalty": includes(evaluated),
        "penalty": penalty,
    }


def optimizer_weight_decay() -> dict:
    """SGD(momentum, weight_decay) on a Dense kernel and bias, zero loss gradient, DECAY's steps (float64)."""
    d = T.DECAY
    layer = keras.layers.Dense(
        1,
        dtype="float64",
        kernel_initializer=keras.initializers.Constant(d["w0"]),
        bias_initializer=keras.initializers.Constant(d["w0"]),
    )
    layer.build((None, 1))
    opt = keras.optimizers.SGD(learning_rate=d["lr"], momentum=d["momentum"], weight_decay=d["wd"])
    for _ in range(d["steps"]):
        opt.apply_gradients([(tf.zeros_like(v), v) for v in (layer.kernel, layer.bias)])
    return {
        "sgd_has_weight_decay": True,
        "kernel": T.classify_decay(float(layer.kernel.numpy().item())),
        "bias": T.classify_decay(float(layer.bias.numpy().item())),
    }


def abs_subgradient() -> dict:
    """tf.abs's gradient at 0, and a Keras L1 regularizer's at a zero weight."""
    v = tf.Variable(0.0, dtype=tf.float64)
    with tf.GradientTape() as tape:
        loss = tf.abs(v)
    w = tf.Variable([0.0], dtype=tf.float64)
    with tf.GradientTape() as tape_l1:
        penalty = keras.regularizers.L1(1.0)(w)
    return {
        "grad_abs_at_0": float(tape.gradient(loss, v)),
        "keras_l1_grad_at_0": float(tape_l1.gradient(penalty, w).numpy()[0]),
    }


def adam_eps_default() -> dict:
    return {"eps": float(keras.optimizers.Adam().epsilon)}


def keras_epsilon_hat() -> dict:
    """Keras Adam's first update (float64) vs torch's ε placement: with ε = 1e-8, and with ε̂₁ = ε·√(1 − β2).

    β1, β2 go in as numpy float64: as Python floats Keras would cast them through float32 (keras_float64_hyper).
    """
    p = T.EPS_HAT

    def first_update(eps):
        w = keras.Variable(np.zeros(len(p["grad"])), dtype="float64")
        opt = keras.optimizers.Adam(
            learning_rate=p["lr"], beta_1=np.float64(p["b1"]), beta_2=np.float64(p["b2"]), epsilon=eps
        )
        opt.apply_gradients([(tf.constant(p["grad"], tf.float64), w)])
        return np.asarray(w.numpy())

    ref = T.adam_first_update_reference()
    return {
        "eps_1e-8": T.rel_diff(first_update(p["eps"]), ref),
        "eps_hat": T.rel_diff(first_update(T.keras_first_epsilon_hat()), ref),
    }


def sgd_momentum_schedule() -> dict:
    m = T.MOMENTUM
    out = {}
    for key, change in (("constant_lr", False), ("lr_changed", True)):
        w = keras.Variable(np.zeros(1), dtype="float64")
        opt = keras.optimizers.SGD(learning_rate=m["lr"], momentum=m["momentum"])
        for t in range(1, m["steps"] + 1):
            if change and t == m["change_at"]:
                opt.learning_rate = m["lr_after"]
            opt.apply_gradients([(tf.fill([1], tf.constant(m["grad"], tf.float64)), w)])
        out[key] = float(w.numpy()[0])
    return out


def default_init() -> dict:
    layer = keras.layers.Dense(T.INIT_FAN_OUT)
    layer.build((None, T.INIT_FAN_IN))
    w, b = layer.kernel.numpy().astype(np.float64), layer.bias.numpy().astype(np.float64)
    r = np.sqrt(T.INIT_FAN_IN)
    return {
        "weight_std": float(w.std() * r),
        "weight_max": float(np.abs(w).max() * r),
        "bias_max": float(np.abs(b).max() * r),
    }


def weight_layout() -> dict:
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    return {"weight_shape": list(layer.kernel.shape)}


def loss_input_defaults() -> dict:
    read = float(_scce()(np.array([2]), np.array([[0.2, 0.3, 0.5]])))
    zero = float(_scce()(np.array([0]), np.array([[0.0, 1.0, 0.0]])))
    return {
        "input": T.classify_loss_input(read),
        "from_logits": _scce().from_logits,
        "zero_prob_loss": T.finite_or_name(zero),
    }


def _tiny_model(kernel: np.ndarray, use_bias: bool = True):
    model = keras.Sequential([keras.Input((kernel.shape[0],)), keras.layers.Dense(kernel.shape[1], use_bias=use_bias)])
    model.layers[-1].kernel.assign(kernel)
    return model


def fit_epoch_loss() -> dict:
    """fit's epoch loss on 10 rows in batches 4, 4, 2 (SGD 0.5) vs the same steps replayed by hand."""
    rng = np.random.default_rng(T.SEED)
    x = rng.normal(size=(10, 3)).astype(np.float32)
    y = rng.integers(0, 2, 10)
    kernel = rng.normal(size=(3, 2)).astype(np.float32)
    fitted = _tiny_model(kernel)
    fitted.compile(optimizer=keras.optimizers.SGD(0.5), loss=_scce(from_logits=True))
    fit = fitted.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0).history["loss"][0]
    final = float(_scce(from_logits=True)(y, fitted(x)))

    replay, opt, losses, sizes = _tiny_model(kernel), keras.optimizers.SGD(0.5), [], []
    for start in range(0, 10, 4):
        xb, yb = x[start : start + 4], y[start : start + 4]
        with tf.GradientTape() as tape:
            loss = _scce(from_logits=True)(yb, replay(xb, training=True))
        opt.apply_gradients(
            zip(tape.gradient(loss, replay.trainable_variables), replay.trainable_variables, strict=True)
        )
        losses.append(float(loss))
        sizes.append(len(yb))
    candidates = {
        "size_weighted_running_mean": float(np.dot(losses, sizes) / np.sum(sizes)),
        "plain_mean_of_batches": float(np.mean(losses)),
        "final_weights": final,
    }
    name = min(candidates, key=lambda k: abs(candidates[k] - fit))
    if abs(candidates[name] - fit) > 1e-5 * abs(fit):
        name = "other"
    return {
        "fit_epoch_loss": name,
        "fit": float(fit),
        "final_weights": final,
        "plain_mean_of_batches": candidates["plain_mean_of_batches"],
    }


def metric_aggregation() -> dict:
    """evaluate's accuracy with batch 4 and batch 10 on rows whose correctness is 1,1,1,0 | 1,1,1,0 | 0,0."""
    correct = np.array([1, 1, 1, 0, 1, 1, 1, 0, 0, 0])
    y = np.arange(10) % 2
    x = np.eye(2, dtype=np.float32)[np.where(correct == 1, y, 1 - y)]  # argmax(x·I) = y exactly when correct
    model = _tiny_model(np.eye(2, dtype=np.float32), use_bias=False)
    model.compile(loss=_scce(from_logits=True), metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")])
    acc = {b: model.evaluate(x, y, batch_size=b, verbose=0, return_dict=True)["acc"] for b in (4, 10)}
    sums = [float(correct[i : i + 4].sum()) for i in range(0, 10, 4)]
    counts = [len(correct[i : i + 4]) for i in range(0, 10, 4)]
    weighted, per_batch = aggregate(sums, counts, "weighted"), aggregate(sums, counts, "per_batch_mean")
    name = (
        "weighted" if abs(acc[4] - weighted) < 1e-6 else "per_batch_mean" if abs(acc[4] - per_batch) < 1e-6 else "other"
    )
    return {
        "evaluate": name,
        "batch_size_invariant": bool(abs(acc[4] - acc[10]) < 1e-6),
        "weighted": weighted,
        "per_batch_mean": per_batch,
    }


def float64_conversion() -> dict:
    x = np.zeros(2)
    return {
        "dtype": tf.convert_to_tensor(x).dtype.name,
        "keras.ops": keras.backend.standardize_dtype(keras.ops.convert_to_tensor(x).dtype),
    }


def tf32_defaults() -> dict:
    return _fresh(
        "import json, tensorflow as tf\n"
        "print(json.dumps({'matmul_tf32': bool(tf.config.experimental.tensor_float_32_execution_enabled()),"
        " 'gpus': len(tf.config.list_physical_devices('GPU'))}))"
    )


def keras_auto_jit() -> dict:
    """keras' model_supports_jit with op determinism off and on, and what jit_compile='auto' resolves to here."""
    from keras.src.trainers.trainer import model_supports_jit
    from tensorflow.python.framework import config as tf_config

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(loss="mse", jit_compile="auto")
    was_on = tf_config.is_op_determinism_enabled()
    supports = model_supports_jit(model)
    tf_config.enable_op_determinism()
    try:
        with_determinism = model_supports_jit(model)
    finally:
        if not was_on:
            tf_config.disable_op_determinism()
    return {
        "model_supports_jit": bool(supports),
        "with_op_determinism": bool(with_determinism),
        "auto_resolved": bool(model.jit_compile),
        "gpu": bool(tf.config.list_physical_devices("GPU")),
    }


def last_batch_default() -> dict:
    """Dataset.batch's default keeps the partial batch; fit on 10 rows, batch 4, runs 3 steps."""
    steps = []
    model = _tiny_model(np.zeros((1, 1), np.float32))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    callback = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: steps.append(batch))
    model.fit(np.ones((10, 1)), np.zeros(10), batch_size=4, epochs=1, verbose=0, callbacks=[callback])
    sizes = [len(b) for b in _ints(tf.data.Dataset.range(10).batch(4))]
    return {"keeps_partial": sizes == [4, 4, 2], "fit_steps": len(steps)}


def keras_validation_split() -> dict:
    """fit(validation_split=0.2, shuffle=True) with a zero model and MSE: val_loss = mean(y_val²) names the rows."""
    model = _tiny_model(np.zeros((1, 1), np.float32), use_bias=False)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    y = np.arange(10, dtype=np.float32)
    val = model.fit(
        np.ones((10, 1)), y, validation_split=0.2, shuffle=True, epochs=1, batch_size=10, verbose=0
    ).history["val_loss"][0]
    named = {"last": float(np.mean(y[-2:] ** 2)), "first": float(np.mean(y[:2] ** 2))}
    return {
        "validation_rows": next((k for k, v in named.items() if abs(v - val) < 1e-4), "other"),
        "val_loss": float(val),
    }


def keras_float64_hyper() -> dict:
    """ops.cast(Python 0.9, float64), as Keras optimizers cast hyperparameters, and its effect on SGD momentum."""
    cast_python = float(keras.ops.cast(0.9, "float64"))
    cast_numpy = float(keras.ops.cast(np.float64(0.9), "float64"))

    def two_steps(momentum):
        w = keras.Variable(np.zeros(1), dtype="float64")
        opt = keras.optimizers.SGD(learning_rate=0.5, momentum=momentum)
        for _ in range(2):
            opt.apply_gradients([(tf.ones([1], tf.float64), w)])
        return float(w.numpy()[0])

    exact = -0.5 - 0.5 * (0.9 + 1.0)  # b₂ = μ·1 + 1, w₂ = −lr·(b₁ + b₂)
    return {
        "cast_python_0.9": cast_python,
        "cast_numpy_0.9": cast_numpy,
        "sgd_rel_error_python_momentum": abs(two_steps(0.9) - exact) / abs(exact),
        "sgd_rel_error_numpy_momentum": abs(two_steps(np.float64(0.9)) - exact) / abs(exact),
    }


def layer_norm_eps() -> dict:
    """keras.layers.LayerNormalization's default epsilon, read from the layer, and ε and the variance recovered
    from its float64 output on LAYER_NORM_INPUT (T.classify_layer_norm; γ = 1, β = 0 at construction);
    "explicit_eps": ε recovered from LayerNormalization(epsilon=NORM_EPS), the conversion."""

    def run(**kwargs):
        layer = keras.layers.LayerNormalization(dtype="float64", **kwargs)
        return layer, T.classify_layer_norm(np.asarray(layer(T.LAYER_NORM_INPUT)))

    layer, measured = run()
    return {"eps": float(layer.epsilon), **measured, "explicit_eps": run(epsilon=T.NORM_EPS)[1]["measured_eps"]}


def rnn_padded_outputs() -> dict:
    """SimpleRNN(return_sequences=True) over RNN_INPUT with the padded step masked."""
    layer = keras.layers.SimpleRNN(T.RNN_WIDTH, return_sequences=True, seed=T.SEED)
    out = layer(np.asarray(T.RNN_INPUT, np.float32), mask=np.array([[True, True, False]]))
    return {"padded_output": T.classify_padded_output(np.asarray(out))}


def rnn_bias_vectors() -> dict:
    layer = keras.layers.SimpleRNN(T.RNN_WIDTH, seed=T.SEED)
    layer.build((1, 3, 1))
    return {"bias_vectors": sum(1 for w in layer.weights if "bias" in w.name)}


def sparse_embedding_adam() -> dict:
    """keras Embedding + Adam through a GradientTape step: v of row 0 after one step of Σ c_k·E[token_k]."""
    embed = keras.layers.Embedding(2, 1, dtype="float64")
    embed.build((2,))
    optimizer = keras.optimizers.Adam(0.1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(embed(tf.constant(T.EMBED_TOKENS))[:, 0] * tf.constant(T.EMBED_COEF, tf.float64))
    grads = tape.gradient(loss, embed.trainable_variables)
    optimizer.apply_gradients(zip(grads, embed.trainable_variables, strict=True))
    return {
        "second_moment": T.classify_second_moment(float(optimizer._velocities[0].numpy()[0, 0])),
        "gradient_type": type(grads[0]).__name__,
    }


# ------------------------------------------------------------------------------------- images and BatchNorm
def _nhwc(image: np.ndarray) -> np.ndarray:
    """One (H, W) image as a (1, H, W, 1) float64 array."""
    return np.asarray(image, np.float64)[None, :, :, None]


def conv_same_stride2() -> dict:
    """keras Conv2D(padding="same", strides=2): the pads its windows reach (window_pads against the numpy conv)
    and its output size."""
    p = CONV_SAME
    n, k, s = p["n"], p["kernel"], p["stride"]
    x = conv_ramp(n)
    conv = keras.layers.Conv2D(1, k, strides=s, padding="same", use_bias=False, dtype="float64")
    conv.build((1, n, n, 1))
    conv.kernel.assign(CONV_KERNEL[:, :, None, None])
    y = np.asarray(conv(_nhwc(x)))[0, :, :, 0]
    return {"pads": window_pads(y, lambda pads: conv2d_reference(x, CONV_KERNEL, s, pads), k), "out_size": y.shape[0]}


def flatten_order() -> dict:
    """keras Flatten on an NHWC image whose values are their NHWC flat index, and Flatten(data_format=
    "channels_first") on the same image as NCHW (Keras permutes it back to channels-last before flattening)."""
    x = np.arange(np.prod(FLATTEN_HWC), dtype=np.float32).reshape(1, *FLATTEN_HWC)
    first = keras.layers.Flatten(data_format="channels_first")(x.transpose(0, 3, 1, 2))
    return {
        "order": np.asarray(keras.layers.Flatten()(x))[0].astype(int).tolist(),
        "channels_first_order": np.asarray(first)[0].astype(int).tolist(),
    }


def _bn_step(layer, x, mask=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training call of a float64 BatchNormalization on x: (output, moving_mean, moving_variance)."""
    y = layer(np.asarray(x, np.float64), training=True, mask=mask)
    return np.asarray(y), layer.moving_mean.numpy().copy(), layer.moving_variance.numpy().copy()


def _bn(**kwargs):
    return keras.layers.BatchNormalization(dtype="float64", **kwargs)


def bn_momentum_convention() -> dict:
    """The fraction of the batch mean entering moving_mean (from 0) in one training step: with the default
    momentum and with momentum=BN_MOMENTUM."""
    mu = BN_INPUT.mean(axis=0)
    layer = _bn()
    default = _bn_step(layer, BN_INPUT)[1] / mu
    at = _bn_step(_bn(momentum=BN_MOMENTUM), BN_INPUT)[1] / mu
    return {
        "default_momentum": float(layer.momentum),
        "default_fraction": float(default.mean()),
        "fraction_at_0.9": float(at.mean()),
    }


def bn_eps_default() -> dict:
    """BatchNormalization's default epsilon, read from the layer, and ε and the variance recovered from its
    float64 training output on BN_EPS_INPUT (T.classify_layer_norm on the transpose; γ = 1, β = 0);
    "explicit_eps": ε recovered from BatchNormalization(epsilon=NORM_EPS)."""

    def run(**kwargs):
        layer = _bn(**kwargs)
        return layer, T.classify_layer_norm(_bn_step(layer, BN_EPS_INPUT)[0].T)

    layer, measured = run()
    return {"eps": float(layer.epsilon), **measured, "explicit_eps": run(epsilon=T.NORM_EPS)[1]["measured_eps"]}


def bn_running_var() -> dict:
    """momentum=0.0 (moving_variance ← the batch's estimate) on BN_INPUT's n rows: moving_variance / biased batch
    variance, and which variance the training output was normalised with."""
    layer = _bn(momentum=0.0)
    y, _, var = _bn_step(layer, BN_INPUT)
    n = BN_INPUT.shape[0]
    factor = float((var / BN_INPUT.var(axis=0)).mean())
    refs = {
        name: batch_norm_reference(BN_INPUT, layer.epsilon, ddof) for name, ddof in (("biased", 0), ("unbiased", 1))
    }
    return {
        "n": n,
        "running_var_factor": factor,
        "estimator": named_match(factor, {"biased": 1.0, "unbiased": n / (n - 1)}),
        "normalisation": named_match(y, refs),
    }


def bn_batch_of_one() -> dict:
    """A training step of BatchNormalization on one row: outcome, output (β = 0 at init) and moving_variance."""
    layer = _bn()
    try:
        y, _, var = _bn_step(layer, BN_INPUT[:1])
    except Exception as exc:  # the outcome is the exception's type
        return {"outcome": f"raises: {type(exc).__name__}"}
    beta = layer.beta.numpy()
    return {
        "outcome": "returns beta" if np.array_equal(y, beta[None, :]) else "returns",
        "output": y.tolist(),
        "running_var": var.tolist(),
    }


def bn_fast_variance() -> dict:
    """The float32 batch variance of data with |μ|/σ = 1e4 (bn_large_mean_input), read from moving_variance with
    momentum=0.0, against the float64 two-pass variance of the same values (keras' TF moments: tf.nn.moments)."""
    x = bn_large_mean_input()
    layer = keras.layers.BatchNormalization(momentum=0.0, dtype="float32")
    layer(x, training=True)
    exact = x.astype(np.float64).var(axis=0)
    error = float(np.max(np.abs(layer.moving_variance.numpy().astype(np.float64) - exact) / exact))
    return {"rel_error": error, "error_large": error > 1e-3}


def avg_pool_same_count() -> dict:
    """AveragePooling2D(3, 1, padding="same") on a ones image: the corner and edge values."""
    p = AVG_POOL_SAME
    layer = keras.layers.AveragePooling2D(p["size"], p["stride"], padding="same", dtype="float64")
    y = np.asarray(layer(_nhwc(np.ones((p["n"], p["n"])))))[0, :, :, 0]
    return {"corner": float(y[0, 0]), "edge": float(y[0, 1])}


def default_layout() -> dict:
    """keras.config.image_data_format(), and Conv2D(F, k) built on an (1, H, W, C) input (every axis a different
    size): the axis its kernel reads as channels, its kernel shape and the padding its default gives."""
    p = LAYOUT
    c, h, w = p["channels"], p["height"], p["width"]
    conv = keras.layers.Conv2D(p["filters"], p["kernel"])
    out = conv(np.zeros((1, h, w, c), np.float32)).shape
    in_channels = conv.kernel.shape[2]
    return {
        "image_data_format": keras.config.image_data_format(),
        "layout": "NHWC" if in_channels == c else "NCHW" if in_channels == h else "other",
        "kernel_shape": list(conv.kernel.shape),
        "default_padding": "same" if out[1] == h else "valid" if out[1] == h - p["kernel"] + 1 else "other",
    }


def max_pool_same_padding() -> dict:
    """MaxPooling2D(3, 2, padding="same") on the ramp: the pads its windows reach (pool_reference with −∞ pads),
    output size and the corner of a −1 image."""
    p = CONV_SAME
    n, k, s = p["n"], p["kernel"], p["stride"]
    x = conv_ramp(n)
    layer = keras.layers.MaxPooling2D(k, s, padding="same", dtype="float64")
    y = np.asarray(layer(_nhwc(x)))[0, :, :, 0]
    negative = np.asarray(layer(_nhwc(-np.ones((n, n)))))[0, :, :, 0]
    return {
        "pads": window_pads(y, lambda pads: pool_reference(x, k, s, pads, "max"), k),
        "out_size": y.shape[0],
        "negative_corner": float(negative[0, 0]),
    }


def pool_default_stride() -> dict:
    """MaxPooling2D(size) without strides on an n×n image: output size and the stride it implies."""
    p = POOL_DEFAULT
    layer = keras.layers.MaxPooling2D(p["size"], dtype="float64")
    m = np.asarray(layer(_nhwc(conv_ramp(p["n"])))).shape[1]
    return {"out_size": m, "default_stride": (p["n"] - p["size"]) // (m - 1), "stride_attribute": layer.strides[0]}


def bn_masked_statistics() -> dict:
    """BatchNormalization(momentum=0.0)(x, mask=BN_MASK) on BN_INPUT: moving_mean against the mean of the real
    rows; its masked moments divide Σ by (count + δ): δ = count·(true/measured − 1)."""
    layer = _bn(momentum=0.0)
    _, mean, _ = _bn_step(layer, BN_INPUT, mask=BN_MASK)
    real = BN_INPUT[BN_MASK]
    true = real.mean(axis=0)
    offset = float((len(real) * (true / mean - 1.0)).mean())
    return {
        "mask_argument": True,
        "divisor_offset": offset,
        "keras_epsilon": float(keras.config.epsilon()),
        "mean_rel_error": float(np.max(np.abs(mean - true) / np.abs(true))),
        "filler_excluded": bool(np.allclose(mean, true, rtol=1e-6)),
    }


def bn_statistics_dtype() -> dict:
    """The dtype of BatchNormalization(dtype="float64")'s moving statistics."""
    layer = _bn()
    layer.build((None, BN_INPUT.shape[1]))
    return {"stats_dtype": keras.backend.standardize_dtype(layer.moving_variance.dtype)}


# ------------------------------------------------------------------------- data parallelism and accumulation
def mean_of_means() -> dict:
    """keras.optimizers.SGD(lr, gradient_accumulation_steps=K) on a bias-free float64 Dense(1) from w = 0, per-row
    loss ℓ = w·x: apply_gradients with each of ACCUMULATE's K micro-batches' mean-loss gradients; the weight after
    the K-th call, the call at which w first moved, and beside it one plain SGD step on all rows (the global mean);
    the update named by accumulated_updates."""
    lr, micro = np.float64(ACCUMULATE["lr"]), ACCUMULATE["micro"]

    def run(batches, **kwargs) -> list[float]:
        layer = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros", dtype="float64")
        layer.build((None, 1))
        opt, trace = keras.optimizers.SGD(learning_rate=lr, **kwargs), []
        for x in batches:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(layer(np.asarray(x, np.float64)[:, None]))
            opt.apply_gradients([(tape.gradient(loss, layer.kernel), layer.kernel)])
            trace.append(float(layer.kernel.numpy().item()))
        return trace

    trace = run(micro, gradient_accumulation_steps=len(micro))
    global_mean = run([[v for m in micro for v in m]])[-1]
    return accumulation_measurement(trace, global_mean)


def average_loss_global_batch() -> dict:
    """tf.nn.compute_average_loss on AVERAGE_LOSS's n per-example losses of a ragged step (float64, the default
    strategy): with global_batch_size=G, without it, and on the step padded to G rows (one filler row, a cycled
    id's loss) with sample_weight 1 for the real rows, 0 for the filler; each divisor is Σ w·ℓ / the result."""
    losses, g = AVERAGE_LOSS["losses"], AVERAGE_LOSS["global_batch"]
    n, total = len(losses), float(np.sum(losses))
    padded = np.resize(np.asarray(losses, np.float64), g)
    weights = (np.arange(g) < n).astype(np.float64)
    values = {
        "global_batch_size": tf.nn.compute_average_loss(tf.constant(losses, tf.float64), global_batch_size=g),
        "default": tf.nn.compute_average_loss(tf.constant(losses, tf.float64)),
        "sample_weight": tf.nn.compute_average_loss(tf.constant(padded), sample_weight=tf.constant(weights)),
    }
    return {
        "num_replicas_in_sync": tf.distribute.get_strategy().num_replicas_in_sync,
        **{f"value_{k}": float(v) for k, v in values.items()},
        **{f"divisor_{k}": total / float(v) for k, v in values.items()},
    }


def replica_regularization() -> dict:
    """A float64 Dense kernel with keras.regularizers.L2(λ) under the default strategy: Σ layer.losses against
    λ·Σw² (what every replica's loss adds), and tf.nn.scale_regularization_loss(penalty) / penalty (1 /
    num_replicas_in_sync)."""
    lam, kernel = PENALTY["l2"], np.asarray(PENALTY["kernel"], np.float64)
    layer = keras.layers.Dense(
        kernel.shape[1], use_bias=False, kernel_regularizer=keras.regularizers.L2(lam), dtype="float64"
    )
    layer.build((None, kernel.shape[0]))
    layer.kernel.assign(kernel)
    penalty = float(tf.add_n(layer.losses))
    return {
        "num_replicas_in_sync": tf.distribute.get_strategy().num_replicas_in_sync,
        "penalty": penalty,
        "model_losses_factor": penalty / (lam * float(np.sum(kernel**2))),
        "scale_factor": float(tf.nn.scale_regularization_loss(tf.constant(penalty, tf.float64))) / penalty,
    }


def accumulator_dtype() -> dict:
    """SGD(lr 1, gradient_accumulation_steps=K) on a float64 variable from 0, fed ACCUMULATOR's K gradients: the
    dtype of its gradient accumulator and −w against Σg/K in float64 (relative)."""
    grads = np.asarray(ACCUMULATOR["grads"], np.float64)
    w = keras.Variable(np.zeros(1), dtype="float64")
    opt = keras.optimizers.SGD(learning_rate=np.float64(1.0), gradient_accumulation_steps=len(grads))
    for g in grads:
        opt.apply_gradients([(tf.constant([g], tf.float64), w)])
    mean = float(np.mean(grads))
    return {
        "accumulator_dtype": keras.backend.standardize_dtype(opt._accumulated_gradients[0].dtype),
        "rel_error": abs(-float(w.numpy()[0]) - mean) / mean,
    }


# ------------------------------------------------------------------------------ BatchNorm under split steps
def _replica_rows(r: int) -> np.ndarray:
    """Replica r's c rows of BN_SPLIT (float64)."""
    return BN_SPLIT.reshape(BN_REPLICAS, -1, BN_SPLIT.shape[1])[r].copy()


def _one_cpu_strategy() -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over the one host CPU device (no logical devices added): its variables are
    MirroredVariables and its replica context all-reduces, over one replica."""
    return tf.distribute.MirroredStrategy(["/cpu:0"], cross_device_ops=tf.distribute.ReductionToOneDevice())


def sync_batchnorm_cpu() -> dict:
    """BatchNormalization(synchronized=True, momentum=0.0) in training on replica 0's rows of BN_SPLIT, float64, on
    the CPU: under the default strategy (the outcome, the statistics its moving statistics took, named by
    split_statistics_name: its one replica's are the local batch's) and inside strategy.run of a one-CPU
    MirroredStrategy (the replica-context all-reduce path)."""
    x = _replica_rows(0)

    def ran(outcome: str) -> bool:
        return outcome in ("zeros", "nonzero")

    def statistics(layer) -> str:
        return split_statistics_name(layer.moving_mean.numpy(), layer.moving_variance.numpy(), replica_0="local")

    with tf.device("/cpu:0"):
        layer = _bn(synchronized=True, momentum=0.0)
        outcome = _outcome(lambda: layer(x, training=True))
        strategy = _one_cpu_strategy()
        with strategy.scope():
            mirrored = _bn(synchronized=True, momentum=0.0)
            mirrored.build((None, x.shape[1]))
        run = _outcome(lambda: tf.function(lambda z: strategy.run(lambda v: mirrored(v, training=True), args=(z,)))(x))
    return {
        "cpu_training": "runs" if ran(outcome) else f"raises: {outcome}",
        "statistics": statistics(layer) if ran(outcome) else "n/a",
        "mirrored_one_cpu": "runs" if ran(run) else f"raises: {run}",
        "mirrored_statistics": statistics(mirrored) if ran(run) else "n/a",
    }


def bn_jit_global_batch() -> dict:
    """What each MirroredStrategy replica's plain BatchNormalization normalises with: momentum=0.0 (moving
    statistics ← the batch's) in training on replica 0's rows of BN_SPLIT only, named by split_statistics_name."""
    layer = _bn(momentum=0.0)
    _, mean, var = _bn_step(layer, _replica_rows(0))
    return {"running_mean": mean.tolist(), "statistics": split_statistics_name(mean, var, replica_0="per_replica")}


def bn_replica_stats() -> dict:
    """BatchNormalization's moving statistics as Keras variables (aggregation, synchronization) and, built under a
    one-CPU MirroredStrategy, as TF variables: their type and TF aggregation and synchronization. A replica-context
    assign to an ON_WRITE MirroredVariable with aggregation NONE writes the replica's own copy, and a read outside
    a replica gives the copy on the current device or the primary (tensorflow/python/distribute/values.py
    _on_write_update_replica, _get_on_device_or_primary): replica 0's chain."""
    layer = _bn()
    layer.build((None, BN_INPUT.shape[1]))
    with tf.device("/cpu:0"):
        strategy = _one_cpu_strategy()
        with strategy.scope():
            mirrored = _bn()
            mirrored.build((None, BN_INPUT.shape[1]))
    variable = mirrored.moving_mean.value
    aggregation = variable.aggregation.name.lower()
    synchronization = variable.synchronization.name.lower()
    first = type(variable).__name__ == "MirroredVariable" and aggregation == "none" and synchronization == "on_write"
    return {
        "aggregation": str(layer.moving_mean.aggregation),
        "synchronization": str(layer.moving_mean.synchronization),
        "moving_variance_aggregation": str(layer.moving_variance.aggregation),
        "mirrored_type": type(variable).__name__,
        "mirrored_aggregation": aggregation,
        "mirrored_synchronization": synchronization,
        "kept": "first_replica" if first else "other",
    }


# --------------------------------------------------------------------- gradient clipping and learning-rate schedules
def _keras_clipped(values: dict, **clip) -> dict[str, list[float]]:
    """The gradients `values` (name → list, float64) as Keras SGD(learning_rate=1, **clip) applies them: one step
    from w = 0 gives w = −g', the clipped gradient (negation and 0 − 1·g' are exact)."""
    variables = {k: keras.Variable(np.zeros(len(v)), dtype="float64") for k, v in values.items()}
    opt = keras.optimizers.SGD(learning_rate=np.float64(1.0), **clip)
    opt.apply_gradients([(tf.constant(v, tf.float64), variables[k]) for k, v in values.items()])
    return {k: (-v.numpy()).tolist() for k, v in variables.items()}


def clip_epsilon() -> dict:
    """global_clipnorm's factor on CLIP_BOUNDARY (global norm n = 5) at c = n and c = n/2: g'/g, exact (powers
    of 2)."""
    grads = {k: CLIP_BOUNDARY[k] for k in ("a", "b")}
    n = clip_boundary_norm()
    return {
        "factor_at_c": clip_factor(_keras_clipped(grads, global_clipnorm=n), grads),
        "factor_at_2c": clip_factor(_keras_clipped(grads, global_clipnorm=n / 2), grads),
    }


def keras_clipnorm_per_variable() -> dict:
    """SGD(clipnorm = c) on CLIP_SCOPE's two variables (what a port writes for a clip by norm): the scope
    (reference.clip_scope) and the clipped values; "global_clipnorm_scope": SGD(global_clipnorm = c)'s scope."""
    grads = {k: CLIP_SCOPE[k] for k in ("a", "b")}
    clipped = _keras_clipped(grads, clipnorm=CLIP_SCOPE["c"])
    global_ = _keras_clipped(grads, global_clipnorm=CLIP_SCOPE["c"])
    return {
        "scope": clip_scope(clipped["a"], clipped["b"]),
        **clipped,
        "global_clipnorm_scope": clip_scope(global_["a"], global_["b"]),
    }


def clip_before_decay() -> dict:
    """CLIP_DECAY's SGD step with global_clipnorm = c: the coupled decay as a Keras L2(λ/2) regularizer on the
    variable, in the loss (Σ g·w + the penalty, gradient by GradientTape), and Keras's decoupled
    SGD(weight_decay = λ) (for plain SGD the same step as coupled decay added after the clip). Δw and order."""
    p = CLIP_DECAY
    grad = tf.constant(p["grad"], tf.float64)

    def step(regularizer: bool) -> list[float]:
        w = keras.Variable(np.array(p["w"]), dtype="float64")
        decay = {} if regularizer else {"weight_decay": np.float64(p["wd"])}
        opt = keras.optimizers.SGD(learning_rate=np.float64(p["lr"]), global_clipnorm=p["c"], **decay)
        penalty = keras.regularizers.L2(np.float64(p["wd"] / 2))
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(grad * w.value) + (penalty(w.value) if regularizer else 0.0)
        opt.apply_gradients([(tape.gradient(loss, w.value), w)])
        return (w.numpy() - np.array(p["w"])).tolist()

    regularized, decoupled = step(True), step(False)
    return {
        "update": regularized,
        "order": clip_decay_order(regularized),
        "weight_decay_update": decoupled,
        "weight_decay_order": clip_decay_order(decoupled),
    }


def _clip_replicas_measured() -> dict:
    """keras_clip_per_replica's measurement, in a fresh interpreter (`keras_clip_per_replica`): R = 2 replicas of
    backends.tf_backend.distributed.strategy (MirroredStrategy over R logical CPU devices, which reserve_devices
    cuts before the runtime starts; ReductionToOneDevice: an exact sum), each fed its CLIP_REPLICAS gradient by
    experimental_distribute_values_from_function, one SGD(lr, global_clipnorm = c) apply_gradients per replica in
    strategy.run under tf.function, as a port's custom training step calls it. Δw of the mirrored variable and its
    placement (reference.clip_replica_placement), for both cases; the same with clipnorm = c (one variable: the
    same clip); the plain one-device SGD on the summed gradient; exact mode's backends.tf_backend.optim.ReducedClip
    under the same strategy."""
    from backends.tf_backend.distributed import strategy
    from backends.tf_backend.optim import ReducedClip

    p = CLIP_REPLICAS
    mirrored = strategy(len(p["agree"]))
    reduced_sgd = type("ReducedSGD", (ReducedClip, keras.optimizers.SGD), {})

    def split_step(case: str, kind=keras.optimizers.SGD, **clip) -> list[float]:
        with mirrored.scope():
            w = keras.Variable(np.zeros(len(p[case][0])), dtype="float64")
            opt = kind(learning_rate=np.float64(p["lr"]), **(clip or {"global_clipnorm": np.float64(p["c"])}))
            opt.build([w])
        grads = mirrored.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(p[case][ctx.replica_id_in_sync_group], tf.float64)
        )
        tf.function(lambda g: mirrored.run(lambda x: opt.apply_gradients([(x, w)]), args=(g,)))(grads)
        return w.numpy().tolist()

    def one_device(case: str) -> list[float]:
        w = keras.Variable(np.zeros(len(p[case][0])), dtype="float64")
        opt = keras.optimizers.SGD(learning_rate=np.float64(p["lr"]), global_clipnorm=np.float64(p["c"]))
        opt.apply_gradients([(tf.constant(np.sum(p[case], axis=0), tf.float64), w)])
        return w.numpy().tolist()

    out = {"replicas": mirrored.num_replicas_in_sync}
    for case, prefix in (("agree", ""), ("opposed", "opposed_")):
        update, alone = split_step(case), one_device(case)
        out |= {
            f"{prefix}update": update,
            f"{prefix}placement": clip_replica_placement(update, case),
            f"{prefix}one_device_update": alone,
            f"{prefix}one_device_placement": clip_replica_placement(alone, case),
            f"{prefix}reduced_clip_placement": clip_replica_placement(split_step(case, reduced_sgd), case),
        }
    clipnorm = split_step("agree", clipnorm=np.float64(p["c"]))
    return out | {"clipnorm_placement": clip_replica_placement(clipnorm, "agree")}


def keras_clip_per_replica() -> dict:
    """Where Keras clips under tf.distribute with 2 replicas (`_clip_replicas_measured`, in a fresh interpreter:
    this process's runtime may have started with one CPU device)."""
    return _fresh(
        "import json\n"
        "from backends.tf_backend.probes import _clip_replicas_measured\n"
        "print(json.dumps(_clip_replicas_measured()))"
    )


def _keras_used_lrs(schedule, steps: int) -> list[float]:
    """The lr each of `steps` SGD(learning_rate = schedule) steps used: g = 1 on a float64 w reset to 0 after each
    step (Δw = −lr exactly); Keras calls the schedule with `iterations`, the steps already taken."""
    w = keras.Variable(np.zeros(1), dtype="float64")
    opt = keras.optimizers.SGD(learning_rate=schedule)
    used = []
    for _ in range(steps):
        opt.apply_gradients([(tf.ones([1], tf.float64), w)])
        used.append(-float(w.numpy()[0]))
        w.assign(np.zeros(1))
    return used


def cosine_annealing_period() -> dict:
    """CosineDecay(lr₀, D, alpha = f/lr₀) with float64 values: the lr SGD used at t = 0, D, 1.5·D, 2·D."""
    s = SCHEDULE
    schedule = keras.optimizers.schedules.CosineDecay(
        np.float64(s["lr"]), s["decay_steps"], alpha=np.float64(s["final_lr"] / s["lr"])
    )
    used = _keras_used_lrs(schedule, max(s["cosine_at"]) + 1)
    return {"lr": [used[t] for t in s["cosine_at"]]}


def warmup_decay_steps() -> dict:
    """CosineDecay(0, decay_steps = D, alpha = f/lr₀, warmup_target = lr₀, warmup_steps = W), float64 values: the
    lr SGD used at SCHEDULE's warmup_at steps (D counts the cosine steps after the warmup)."""
    s = SCHEDULE
    schedule = keras.optimizers.schedules.CosineDecay(
        np.float64(0.0),
        s["decay_steps"],
        alpha=np.float64(s["final_lr"] / s["lr"]),
        warmup_target=np.float64(s["lr"]),
        warmup_steps=s["warmup_steps"],
    )
    used = _keras_used_lrs(schedule, max(s["warmup_at"]) + 1)
    return {"lr": [used[t] for t in s["warmup_at"]]}


def schedule_float32() -> dict:
    """In a float64 run (floatx float64, restored after): ExponentialDecay(lr₀ = 0.1, staircase) and CosineDecay
    at t = 0 with a Python-float lr₀ (value and dtype), with np.float64(0.1), and the lr the first SGD step on a
    float64 variable used with the Python-float schedule."""
    p = SCHEDULE_FLOAT32
    previous = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:

        def exponential(lr0):
            return keras.optimizers.schedules.ExponentialDecay(lr0, p["decay_steps"], p["decay_rate"], staircase=True)

        python, numpy = exponential(p["lr"])(0), exponential(np.float64(p["lr"]))(0)
        cosine = keras.optimizers.schedules.CosineDecay(p["lr"], p["decay_steps"])(0)
        used = _keras_used_lrs(exponential(p["lr"]), 1)[0]
    finally:
        keras.config.set_floatx(previous)
    return {
        "lr": float(python),
        "dtype": python.dtype.name,
        "cosine_lr": float(cosine),
        "cosine_dtype": cosine.dtype.name,
        "float64_lr": float(numpy),
        "float64_dtype": numpy.dtype.name,
        "sgd_lr": used,
    }


PROBES = {
    name: keras_defaults(probe)
    for name, probe in {
        "sparse_embedding_adam": sparse_embedding_adam,
        "rnn_padded_outputs": rnn_padded_outputs,
        "rnn_bias_vectors": rnn_bias_vectors,
        "shuffle_order": shuffle_order,
        "tf_shuffle_buffer": tf_shuffle_buffer,
        "repeat_batch_epochs": repeat_batch_epochs,
        "ragged_recompile": ragged_recompile,
        "keras_pad_sequences": keras_pad_sequences,
        "tf_padded_batch": tf_padded_batch,
        "masked_mean_loss": masked_mean_loss,
        "sample_weight_reduction": sample_weight_reduction,
        "dropout_scale": dropout_scale,
        "dropout_default_mode": dropout_default_mode,
        "dropout_rate_one": dropout_rate_one,
        "l2_vs_weight_decay": l2_vs_weight_decay,
        "penalty_in_loss": penalty_in_loss,
        "optimizer_weight_decay": optimizer_weight_decay,
        "abs_subgradient": abs_subgradient,
        "adam_eps_default": adam_eps_default,
        "keras_epsilon_hat": keras_epsilon_hat,
        "sgd_momentum_schedule": sgd_momentum_schedule,
        "default_init": default_init,
        "weight_layout": weight_layout,
        "loss_input_defaults": loss_input_defaults,
        "fit_epoch_loss": fit_epoch_loss,
        "metric_aggregation": metric_aggregation,
        "float64_conversion": float64_conversion,
        "tf32_defaults": tf32_defaults,
        "keras_auto_jit": keras_auto_jit,
        "last_batch_default": last_batch_default,
        "keras_validation_split": keras_validation_split,
        "keras_float64_hyper": keras_float64_hyper,
        "layer_norm_eps": layer_norm_eps,
        "conv_same_stride2": conv_same_stride2,
        "flatten_order": flatten_order,
        "bn_momentum_convention": bn_momentum_convention,
        "bn_eps_default": bn_eps_default,
        "bn_running_var": bn_running_var,
        "bn_batch_of_one": bn_batch_of_one,
        "bn_fast_variance": bn_fast_variance,
        "avg_pool_same_count": avg_pool_same_count,
        "default_layout": default_layout,
        "max_pool_same_padding": max_pool_same_padding,
        "pool_default_stride": pool_default_stride,
        "bn_masked_statistics": bn_masked_statistics,
        "bn_statistics_dtype": bn_statistics_dtype,
        "mean_of_means": mean_of_means,
        "average_loss_global_batch": average_loss_global_batch,
        "replica_regularization": replica_regularization,
        "accumulator_dtype": accumulator_dtype,
        "sync_batchnorm_cpu": sync_batchnorm_cpu,
        "bn_jit_global_batch": bn_jit_global_batch,
        "bn_replica_stats": bn_replica_stats,
        "clip_epsilon": clip_epsilon,
        "keras_clipnorm_per_variable": keras_clipnorm_per_variable,
        "clip_before_decay": clip_before_decay,
        "keras_clip_per_replica": keras_clip_per_replica,
        "cosine_annealing_period": cosine_annealing_period,
        "warmup_decay_steps": warmup_decay_steps,
        "schedule_float32": schedule_float32,
    }.items()
}
