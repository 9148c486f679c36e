"""JAX (flax + optax)'s side of the trap catalogue (common.traps): one probe per trap JAX takes part in.

Each probe MEASURES what the installed jax / flax / optax do and returns a JSON-able dict; the conformance test
compares it with `common.traps.TRAPS[id].expected["jax"]`. `jax_enable_x64` is process-global and the JAX adapter
turns it on, so every probe states its dtypes explicitly, float64 probes run inside `jax.enable_x64(True)` (which
restores the previous state), and the x64-off default of `jnp.asarray` is read in a fresh interpreter.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common import traps as T
from common.traps.inputs import (
    ACCUMULATE,
    ACCUMULATOR,
    AVG_POOL_SAME,
    BN_EPS_INPUT,
    BN_INPUT,
    BN_MASK,
    BN_MOMENTUM,
    BN_REPLICAS,
    BN_SPLIT,
    CLIP_BOUNDARY,
    CLIP_DECAY,
    CLIP_SCOPE,
    CONV_KERNEL,
    CONV_SAME,
    FLATTEN_HWC,
    LAYOUT,
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
    clip_scope,
    conv2d_reference,
    named_match,
    pool_reference,
    split_statistics_name,
    window_pads,
)


def versions() -> dict[str, str]:
    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}


def _fresh(code: str) -> dict:
    """Run `code` (which prints one JSON line) in a fresh interpreter with JAX's x64 default (off)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _key(seed: int = T.SEED):
    return jax.random.key(seed)


def shuffle_order() -> dict:
    return {"order": np.asarray(jax.random.permutation(_key(), T.ORDER_N)).tolist()}


def ragged_recompile() -> dict:
    """jax.jit traces over batch sizes 4, 4, 2, 3, and over the same batches padded to 4 (weight 0 filler)."""

    def counted():
        count = [0]

        @jax.jit
        def step(x, w):
            count[0] += 1  # Python side effect: runs once per trace
            return jnp.sum(w * jnp.sum(x * x, axis=1)) / jnp.sum(w)

        return step, count

    ragged, n_ragged = counted()
    padded, n_padded = counted()
    for n in (4, 4, 2, 3):
        ragged(jnp.ones((n, 3), jnp.float32), jnp.ones(n, jnp.float32))
        padded(jnp.ones((4, 3), jnp.float32), (jnp.arange(4) < n).astype(jnp.float32))
    return {"compiles": n_ragged[0], "compiles_padded": n_padded[0]}


def _per_example(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), jnp.asarray(labels))


def masked_mean_loss() -> dict:
    """optax's integer-label cross-entropy does not reduce: the mask is the caller's Σw·ℓ/Σw."""
    value = _per_example(T.LOSS_LOGITS, T.MASK_LABELS)
    per_row = np.asarray(value)
    return {
        "reduction": T.classify_reduction(per_row, per_row, T.LOSS_MASK),
        "all_masked": T.classify_reduction(per_row, per_row, np.zeros(4)),
    }


def sample_weight_reduction() -> dict:
    per_row = np.asarray(_per_example(T.LOSS_LOGITS, T.WEIGHT_LABELS))
    return {"default": T.classify_reduction(per_row, per_row, T.LOSS_MASK)}


def dropout_scale() -> dict:
    """flax.linen.Dropout in training on float32 inputs at DROPOUT_RATES, applied eagerly and under jax.jit.

    flax's source divides (x / keep_prob); XLA turns division by a constant into multiplication by its
    reciprocal, which is what the classifier sees.
    """
    x = T.dropout_input()
    eager, jitted = {}, {}
    for p in T.DROPOUT_RATES:

        def apply(v, p=p):
            return nn.Dropout(p, deterministic=False).apply({}, v, rngs={"dropout": _key()})

        eager[p] = np.asarray(apply(jnp.asarray(x, jnp.float32)))
        jitted[p] = np.asarray(jax.jit(apply)(jnp.asarray(x, jnp.float32)))
    return {**T.classify_dropout(x, eager), "jit_form": T.classify_dropout(x, jitted)["form"]}


def _outcome(fn) -> str:
    try:
        out = np.asarray(fn())
    except Exception as exc:  # the outcome is the exception's type
        return type(exc).__name__
    return "zeros" if not out.any() else "nonzero"


def _mode(fn, x) -> str:
    try:
        out = np.asarray(fn(x))
    except Exception as exc:  # the outcome is the exception's type
        return type(exc).__name__
    return "active" if not np.array_equal(out, np.asarray(x)) else "inactive"


def dropout_default_mode() -> dict:
    """nnx.Dropout called without a mode, and linen.Dropout without `deterministic`."""
    x = jnp.ones(1000, jnp.float32)
    return {
        "default_call": _mode(nnx.Dropout(0.5, rngs=nnx.Rngs(T.SEED)), x),
        "linen.Dropout": _mode(lambda v: nn.Dropout(0.5).apply({}, v, rngs={"dropout": _key()}), x),
    }


def dropout_rate_one() -> dict:
    x = jnp.ones(8, jnp.float32)
    return {
        "layer": _outcome(lambda: nn.Dropout(1.0, deterministic=False).apply({}, x, rngs={"dropout": _key()})),
        "nnx": _outcome(lambda: nnx.Dropout(1.0, rngs=nnx.Rngs(T.SEED))(x)),
    }


def l2_vs_weight_decay() -> dict:
    """optax.add_decayed_weights(λ) on a zero gradient: the update divided by λ·w."""
    lam = 0.25
    with jax.enable_x64(True):
        w = jnp.array([1.0, -2.0], jnp.float64)
        tx = optax.add_decayed_weights(lam)
        updates, _ = tx.update(jnp.zeros_like(w), tx.init(w), w)
        return {"grad_per_lambda": float(np.mean(np.asarray(updates) / (lam * np.asarray(w))))}


def penalty_in_loss() -> dict:
    """value_and_grad's loss with chain(add_decayed_weights, sgd): the decay lives in the gradient transform."""
    with jax.enable_x64(True):
        params = {"kernel": jnp.full((3, 3), 0.5, jnp.float64), "bias": jnp.full(3, 0.1, jnp.float64)}
        x, y = jnp.asarray(T.LOSS_LOGITS, jnp.float64), jnp.asarray(T.MASK_LABELS)

        def loss_fn(p):
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x @ p["kernel"] + p["bias"], y))

        tx = optax.chain(optax.add_decayed_weights(0.5), optax.sgd(0.0))
        reported, grads = jax.value_and_grad(loss_fn)(params)
        tx.update(grads, tx.init(params), params)
        penalty = 0.5 / 2 * sum(float(jnp.sum(v**2)) for v in params.values())
        plain = float(loss_fn(params))
    reported = float(reported)
    return {
        "reported_loss_includes_penalty": bool(abs(reported - (plain + penalty)) < abs(reported - plain)),
        "penalty": penalty,
    }


def optimizer_weight_decay() -> dict:
    """optax.sgd has no weight_decay argument; decay is a separate transform (add_decayed_weights)."""
    return {"sgd_has_weight_decay": "weight_decay" in inspect.signature(optax.sgd).parameters}


def _adam_run(tx, dtype=jnp.float64) -> list[float]:
    p = T.ADAM
    w = jnp.array(p["w0"], dtype)
    a, b = jnp.array(p["a"], dtype), jnp.array(p["b"], dtype)
    state = tx.init(w)
    for _ in range(p["steps"]):
        updates, state = tx.update(a * w + b, state, w)
        w = optax.apply_updates(w, updates)
    return np.asarray(w).tolist()


def adam_weight_decay_equivalence() -> dict:
    """chain(add_decayed_weights(λ), adam) and adamw(λ) on g = a·w + b: float64 end points (checked), and float32
    ones (x64 off, JAX's default) beside them."""
    p = T.ADAM
    kw = dict(learning_rate=p["lr"], b1=p["b1"], b2=p["b2"], eps=p["eps"])
    out = {}
    for suffix, x64, dtype in (("", True, jnp.float64), ("_f32", False, jnp.float32)):
        with jax.enable_x64(x64):
            out["adam_coupled" + suffix] = _adam_run(
                optax.chain(optax.add_decayed_weights(p["wd"]), optax.adam(**kw)), dtype
            )
            out["adamw" + suffix] = _adam_run(optax.adamw(weight_decay=p["wd"], **kw), dtype)
    return out


def optax_decay_mask() -> dict:
    params = {"kernel": jnp.ones((2, 2), jnp.float32), "bias": jnp.ones(2, jnp.float32)}
    tx = optax.add_decayed_weights(0.1)
    updates, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params), params)
    return {f"{k}_decayed": bool(jnp.any(v != 0)) for k, v in updates.items()}


def abs_subgradient() -> dict:
    return {"grad_abs_at_0": float(jax.grad(jnp.abs)(jnp.float32(0.0)))}


def adam_eps_default() -> dict:
    return {"eps": inspect.signature(optax.adam).parameters["eps"].default}


def keras_epsilon_hat() -> dict:
    """optax.adam(eps=1e-8)'s first update vs common.optim's formula (float64): max relative error."""
    p = T.EPS_HAT
    with jax.enable_x64(True):
        w = jnp.zeros(len(p["grad"]), jnp.float64)
        tx = optax.adam(p["lr"], b1=p["b1"], b2=p["b2"], eps=p["eps"])
        updates, _ = tx.update(jnp.array(p["grad"], jnp.float64), tx.init(w), w)
        return {"eps_1e-8": T.rel_diff(np.asarray(optax.apply_updates(w, updates)), T.adam_first_update_reference())}


def sgd_momentum_schedule() -> dict:
    """inject_hyperparams(optax.sgd) under a constant gradient; the lr changes before step `change_at`."""
    m = T.MOMENTUM
    out = {}
    with jax.enable_x64(True):
        for key, change in (("constant_lr", False), ("lr_changed", True)):
            w = jnp.zeros(1, jnp.float64)
            tx = optax.inject_hyperparams(optax.sgd)(learning_rate=m["lr"], momentum=m["momentum"])
            state = tx.init(w)
            for t in range(1, m["steps"] + 1):
                if change and t == m["change_at"]:
                    state.hyperparams["learning_rate"] = jnp.asarray(m["lr_after"], jnp.float64)
                updates, state = tx.update(jnp.full(1, m["grad"], jnp.float64), state, w)
                w = optax.apply_updates(w, updates)
            out[key] = float(w[0])
    return out


def default_init() -> dict:
    """flax.linen.Dense's default init: weight std and max|w|, max|b|, each · √fan_in."""
    variables = nn.Dense(T.INIT_FAN_OUT).init(_key(), jnp.ones((1, T.INIT_FAN_IN), jnp.float32))["params"]
    w, b = np.asarray(variables["kernel"], np.float64), np.asarray(variables["bias"], np.float64)
    r = np.sqrt(T.INIT_FAN_IN)
    return {
        "weight_std": float(w.std() * r),
        "weight_max": float(np.abs(w).max() * r),
        "bias_max": float(np.abs(b).max() * r),
    }


def weight_layout() -> dict:
    kernel = nn.Dense(2).init(_key(), jnp.ones((1, 3), jnp.float32))["params"]["kernel"]
    return {"weight_shape": list(kernel.shape)}


def loss_input_defaults() -> dict:
    read = float(_per_example(np.array([[0.2, 0.3, 0.5]]), np.array([2]))[0])
    zero = float(_per_example(np.array([[-np.inf, 0.0, -np.inf]], np.float32), np.array([0]))[0])
    return {"input": T.classify_loss_input(read), "zero_prob_loss": T.finite_or_name(zero)}


def float64_conversion() -> dict:
    """jnp.asarray(float64 numpy) in a fresh interpreter (x64 off by default), and with x64 on."""
    fresh = _fresh(
        "import json, numpy as np, jax.numpy as jnp\nprint(json.dumps({'dtype': str(jnp.asarray(np.zeros(2)).dtype)}))"
    )
    with jax.enable_x64(True):
        with_x64 = str(jnp.asarray(np.zeros(2)).dtype)
    return {"dtype": fresh["dtype"], "with_x64": with_x64}


def tf32_defaults() -> dict:
    """jax_default_matmul_precision of a fresh interpreter: None = the backend's DEFAULT (TF32/bf16 on Ampere+)."""
    out = _fresh(
        "import json, jax\n"
        "print(json.dumps({'default_matmul_precision': jax.config.jax_default_matmul_precision,"
        " 'backend': jax.default_backend()}))"
    )
    precision = out["default_matmul_precision"]
    out["matmul_tf32"] = "platform default" if precision is None else str(precision)
    return out


def _probe_rnn():
    rnn = nn.RNN(nn.SimpleCell(T.RNN_WIDTH))
    x = jnp.asarray(T.RNN_INPUT, jnp.float32)
    return rnn, rnn.init(jax.random.PRNGKey(T.SEED), x), x


def rnn_padded_outputs() -> dict:
    """nn.RNN(SimpleCell) over RNN_INPUT with seq_lengths = [2]."""
    rnn, params, x = _probe_rnn()
    return {"padded_output": T.classify_padded_output(rnn.apply(params, x, seq_lengths=jnp.array([2])))}


def rnn_bias_vectors() -> dict:
    _, params, _ = _probe_rnn()
    return {
        "bias_vectors": sum(
            1 for path, _ in jax.tree_util.tree_leaves_with_path(params) if "bias" in jax.tree_util.keystr(path)
        )
    }


def sparse_embedding_adam() -> dict:
    """flax nn.Embed + optax.adam: ν of row 0 after one step of Σ c_k·E[token_k]."""
    embed = nn.Embed(2, 1, param_dtype=jnp.float32)
    tokens = jnp.asarray(T.EMBED_TOKENS)
    params = embed.init(jax.random.PRNGKey(T.SEED), tokens)
    grads = jax.grad(lambda p: jnp.sum(embed.apply(p, tokens)[:, 0] * jnp.asarray(T.EMBED_COEF)))(params)
    optimizer = optax.adam(0.1)
    _, state = optimizer.update(grads, optimizer.init(params), params)
    nu = state[0].nu["params"]["embedding"]
    return {"second_moment": T.classify_second_moment(float(nu[0, 0]))}


def layer_norm_eps() -> dict:
    """flax.linen.LayerNorm's default epsilon, read from the module, and ε and the variance recovered from its
    float64 output on LAYER_NORM_INPUT (T.classify_layer_norm; scale 1, bias 0 at init; x64 on for the probe);
    "explicit_eps": ε recovered from nn.LayerNorm(epsilon=NORM_EPS), the conversion."""

    def run(**kwargs):
        layer = nn.LayerNorm(dtype=jnp.float64, param_dtype=jnp.float64, **kwargs)
        with jax.enable_x64(True):
            x = jnp.asarray(T.LAYER_NORM_INPUT, jnp.float64)
            return layer, T.classify_layer_norm(np.asarray(layer.apply(layer.init(_key(), x), x), np.float64))

    layer, measured = run()
    return {
        "eps": float(layer.epsilon),
        **measured,
        "explicit_eps": run(epsilon=T.NORM_EPS)[1]["measured_eps"],
        "fast_variance": bool(layer.use_fast_variance),
    }


# ------------------------------------------------------------------------------------- images and BatchNorm
def _nhwc(image: np.ndarray):
    """One (H, W) image as a (1, H, W, 1) float64 array (call inside jax.enable_x64(True))."""
    return jnp.asarray(np.asarray(image, np.float64)[None, :, :, None], jnp.float64)


def conv_same_stride2() -> dict:
    """flax nn.Conv(padding="SAME", strides=2): the pads its windows reach (window_pads against the numpy conv)
    and its output size (float64, x64 on for the probe)."""
    p = CONV_SAME
    n, k, s = p["n"], p["kernel"], p["stride"]
    x = conv_ramp(n)
    conv = nn.Conv(1, (k, k), strides=(s, s), padding="SAME", use_bias=False, param_dtype=jnp.float64)
    with jax.enable_x64(True):
        kernel = jnp.asarray(CONV_KERNEL[:, :, None, None], jnp.float64)
        y = np.asarray(conv.apply({"params": {"kernel": kernel}}, _nhwc(x)))[0, :, :, 0]
    return {"pads": window_pads(y, lambda pads: conv2d_reference(x, CONV_KERNEL, s, pads), k), "out_size": y.shape[0]}


def flatten_order() -> dict:
    """linen has no Flatten layer: the idiom x.reshape(B, −1) on an NHWC image whose values are their NHWC flat
    index."""
    x = jnp.arange(int(np.prod(FLATTEN_HWC)), dtype=jnp.int32).reshape(1, *FLATTEN_HWC)
    return {"order": np.asarray(x.reshape(x.shape[0], -1))[0].tolist()}


def _bn_step(layer, x, mask=None, variables=None):
    """One training call of a float64 nn.BatchNorm(use_running_average=False) on x (x64 on): (output, mean, var,
    variables at init)."""
    with jax.enable_x64(True):
        x = jnp.asarray(x, jnp.float64)
        variables = variables or layer.init(_key(), x)
        y, state = layer.apply(variables, x, mask=mask, mutable=["batch_stats"])
        stats = state["batch_stats"]
        return np.asarray(y), np.asarray(stats["mean"]), np.asarray(stats["var"]), variables


def _bn(**kwargs):
    return nn.BatchNorm(use_running_average=False, dtype=jnp.float64, param_dtype=jnp.float64, **kwargs)


def bn_momentum_convention() -> dict:
    """The fraction of the batch mean entering batch_stats.mean (from 0) in one training step: with the default
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
    """nn.BatchNorm's default epsilon, read from the module, and ε and the variance recovered from its float64
    training output on BN_EPS_INPUT (T.classify_layer_norm on the transpose; scale 1, bias 0 at init);
    "explicit_eps": ε recovered from nn.BatchNorm(epsilon=NORM_EPS)."""

    def run(**kwargs):
        layer = _bn(**kwargs)
        return layer, T.classify_layer_norm(_bn_step(layer, BN_EPS_INPUT)[0].T)

    layer, measured = run()
    return {"eps": float(layer.epsilon), **measured, "explicit_eps": run(epsilon=T.NORM_EPS)[1]["measured_eps"]}


def bn_running_var() -> dict:
    """momentum=0.0 (batch_stats.var ← the batch's estimate) on BN_INPUT's n rows: running var / biased batch
    variance, and which variance the training output was normalised with."""
    layer = _bn(momentum=0.0)
    y, _, var, _ = _bn_step(layer, BN_INPUT)
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
    """A training step of nn.BatchNorm on one row: outcome, output (bias 0 at init) and the running var."""
    layer = _bn()
    try:
        y, _, var, variables = _bn_step(layer, BN_INPUT[:1])
    except Exception as exc:  # the outcome is the exception's type
        return {"outcome": f"raises: {type(exc).__name__}"}
    beta = np.asarray(variables["params"]["bias"])
    return {
        "outcome": "returns beta" if np.array_equal(y, beta[None, :]) else "returns",
        "output": y.tolist(),
        "running_var": var.tolist(),
    }


def bn_fast_variance() -> dict:
    """The float32 batch variance of data with |μ|/σ = 1e4 (bn_large_mean_input), read from batch_stats.var with
    momentum=0.0, against the float64 two-pass variance of the same values: the default (use_fast_variance=True,
    E[x²] − E[x]²) and use_fast_variance=False (exact mode)."""
    x = bn_large_mean_input()
    exact = x.astype(np.float64).var(axis=0)

    def error(**kwargs):
        layer = nn.BatchNorm(use_running_average=False, momentum=0.0, **kwargs)
        xs = jnp.asarray(x, jnp.float32)
        _, state = layer.apply(layer.init(_key(), xs), xs, mutable=["batch_stats"])
        var = np.asarray(state["batch_stats"]["var"], np.float64)
        return float(np.max(np.abs(var - exact) / exact))

    default, two_pass = error(), error(use_fast_variance=False)
    return {
        "use_fast_variance": bool(nn.BatchNorm.use_fast_variance),
        "rel_error": default,
        "error_large": default > 1e-3,
        "exact_mode_rel_error": two_pass,
        "exact_mode_error_large": two_pass > 1e-3,
    }


def avg_pool_same_count() -> dict:
    """nn.avg_pool(window 3, stride 1, "SAME") on a ones image: the corner and edge values, the count_include_pad
    default (from the installed signature), and the corner with count_include_pad=False (exact mode)."""
    p = AVG_POOL_SAME
    window, strides = (p["size"], p["size"]), (p["stride"], p["stride"])
    with jax.enable_x64(True):
        ones = _nhwc(np.ones((p["n"], p["n"])))
        y = np.asarray(nn.avg_pool(ones, window, strides, "SAME"))[0, :, :, 0]
        exact = np.asarray(nn.avg_pool(ones, window, strides, "SAME", count_include_pad=False))[0, :, :, 0]
    return {
        "corner": float(y[0, 0]),
        "edge": float(y[0, 1]),
        "count_include_pad": inspect.signature(nn.avg_pool).parameters["count_include_pad"].default,
        "corner_count_include_pad_false": float(exact[0, 0]),
    }


def default_layout() -> dict:
    """nn.Conv(F, (k, k)) initialised on an (1, H, W, C) input (every axis a different size): the axis its kernel
    reads as channels, its kernel shape and the padding its default gives."""
    p = LAYOUT
    c, h, w = p["channels"], p["height"], p["width"]
    conv = nn.Conv(p["filters"], (p["kernel"], p["kernel"]))
    x = jnp.zeros((1, h, w, c), jnp.float32)
    variables = conv.init(_key(), x)
    out = conv.apply(variables, x).shape
    kernel = variables["params"]["kernel"].shape
    return {
        "layout": "NHWC" if kernel[2] == c else "NCHW" if kernel[2] == h else "other",
        "kernel_shape": list(kernel),
        "default_padding": "same" if out[1] == h else "valid" if out[1] == h - p["kernel"] + 1 else "other",
    }


def max_pool_same_padding() -> dict:
    """nn.max_pool(window 3, stride 2, "SAME") on the ramp: the pads its windows reach (pool_reference with −∞
    pads), output size and the corner of a −1 image."""
    p = CONV_SAME
    n, k, s = p["n"], p["kernel"], p["stride"]
    x = conv_ramp(n)
    with jax.enable_x64(True):
        y = np.asarray(nn.max_pool(_nhwc(x), (k, k), (s, s), "SAME"))[0, :, :, 0]
        negative = np.asarray(nn.max_pool(_nhwc(-np.ones((n, n))), (k, k), (s, s), "SAME"))[0, :, :, 0]
    return {
        "pads": window_pads(y, lambda pads: pool_reference(x, k, s, pads, "max"), k),
        "out_size": y.shape[0],
        "negative_corner": float(negative[0, 0]),
    }


def pool_default_stride() -> dict:
    """nn.max_pool(x, (size, size)) without strides on an n×n image: output size, the stride it implies, and the
    installed signature's default."""
    p = POOL_DEFAULT
    with jax.enable_x64(True):
        m = nn.max_pool(_nhwc(conv_ramp(p["n"])), (p["size"], p["size"])).shape[1]
    return {
        "out_size": m,
        "default_stride": (p["n"] - p["size"]) // (m - 1),
        "stride_attribute": str(inspect.signature(nn.max_pool).parameters["strides"].default),
    }


def bn_masked_statistics() -> dict:
    """nn.BatchNorm(momentum=0.0)(x, mask=BN_MASK) on BN_INPUT: the running mean against the mean of the real
    rows, as the divisor offset δ = count·(true/measured − 1) (0: an exact masked mean)."""
    _, mean, _, _ = _bn_step(_bn(momentum=0.0), BN_INPUT, mask=jnp.asarray(BN_MASK[:, None]))
    real = BN_INPUT[BN_MASK]
    true = real.mean(axis=0)
    return {
        "mask_argument": True,
        "divisor_offset": float((len(real) * (true / mean - 1.0)).mean()),
        "mean_rel_error": float(np.max(np.abs(mean - true) / np.abs(true))),
        "filler_excluded": bool(np.allclose(mean, true, rtol=1e-6)),
    }


def bn_statistics_dtype() -> dict:
    """nn.BatchNorm(param_dtype=float64): the dtype of its batch_stats at init, the relative error of the running
    variance after one default step from it (m·1 rounds through float32), and both with
    force_float32_reductions=False (exact mode)."""
    var = BN_INPUT.var(axis=0)
    expected = 0.99 * 1.0 + (1 - 0.99) * var  # the default momentum's update of var = 1, in float64

    def run(**kwargs):
        layer = _bn(**kwargs)
        _, _, after, variables = _bn_step(layer, BN_INPUT)
        dtype = str(variables["batch_stats"]["var"].dtype)
        return dtype, float(np.max(np.abs(after - expected) / expected)), float(layer.momentum)

    dtype, error, momentum = run()
    exact_dtype, exact_error, _ = run(force_float32_reductions=False)
    return {
        "default_momentum": momentum,
        "stats_dtype": dtype,
        "rel_error": error,
        "exact_stats_dtype": exact_dtype,
        "exact_rel_error": exact_error,
    }


# ------------------------------------------------------------------------- data parallelism and accumulation
def _accumulate(tx, grads) -> tuple[list[float], object]:
    """Feed float64 gradients to `tx` (its update jitted: eager MultiSteps costs ~0.2 s a call) on one float64
    parameter from 0: w after each update, and the final state. Call inside jax.enable_x64(True)."""
    update = jax.jit(tx.update)
    w, trace = jnp.zeros(1, jnp.float64), []
    state = tx.init(w)
    for g in grads:
        updates, state = update(jnp.asarray(g, jnp.float64).reshape(1), state, w)
        w = optax.apply_updates(w, updates)
        trace.append(float(w[0]))
    return trace, state


def mean_of_means() -> dict:
    """optax.MultiSteps(optax.sgd(lr), every_k_schedule=K) on a float64 linear model w·x from w = 0 (the per-row
    loss, so its gradient does not depend on w): one update per ACCUMULATE micro-batch with its mean-loss gradient;
    the weight after the K-th, the update at which w first moved, and beside it one plain optax.sgd step on all
    rows (the global mean); the update named by accumulated_updates."""
    lr, micro = ACCUMULATE["lr"], ACCUMULATE["micro"]
    with jax.enable_x64(True):

        def grads(batches):
            w = jnp.zeros(1, jnp.float64)
            return [jax.grad(lambda v, x=x: jnp.mean(v * jnp.asarray(x, jnp.float64)))(w) for x in batches]

        trace, _ = _accumulate(optax.MultiSteps(optax.sgd(lr), every_k_schedule=len(micro)), grads(micro))
        global_mean = _accumulate(optax.sgd(lr), grads([[v for m in micro for v in m]]))[0][-1]
    return accumulation_measurement(trace, global_mean)


def accumulator_dtype() -> dict:
    """optax.MultiSteps(optax.sgd(1), every_k_schedule=K) on a float64 parameter from 0 (x64 on), fed ACCUMULATOR's
    K float64 gradients: its accumulator's dtype, its use_grad_mean default and −w against Σg/K in float64
    (relative); the same with accumulator_dtype=float64."""
    grads = np.asarray(ACCUMULATOR["grads"], np.float64)
    mean = float(np.mean(grads))

    def run(**kwargs):
        trace, state = _accumulate(optax.MultiSteps(optax.sgd(1.0), every_k_schedule=len(grads), **kwargs), grads)
        return str(state.acc_grads.dtype), abs(-trace[-1] - mean) / mean

    with jax.enable_x64(True):
        dtype, error = run()
        _, exact = run(accumulator_dtype=jnp.float64)
    return {
        "accumulator_dtype": dtype,
        "rel_error": error,
        "use_grad_mean": inspect.signature(optax.MultiSteps).parameters["use_grad_mean"].default,
        "float64_accumulator_rel_error": exact,
    }


# ------------------------------------------------------------------------------ BatchNorm under split steps
def _split_bn(**kwargs):
    """A float64 nn.BatchNorm in training with momentum=0.0 (batch_stats ← the batch's statistics) and float64
    batch_stats (force_float32_reductions=False)."""
    return _bn(momentum=0.0, force_float32_reductions=False, **kwargs)


def _split_stats(how: str) -> tuple[np.ndarray, np.ndarray]:
    """The batch_stats (mean, var) one training call leaves on BN_SPLIT's replicas, on the CPU (x64 on): "jit" a
    jitted call over the whole (R·c, F) batch, as a jitted data-parallel step sees it whatever the sharding (shape
    (1, F)); "vmap" per replica, jax.vmap over (R, c, F) without axis_name ((R, F)); "axis_name" the same with
    nn.BatchNorm(axis_name="r") and vmap(axis_name="r") (synchronised); "pmean" the "vmap" statistics then
    averaged over the replicas with lax.pmean, as flax's examples' cross_replica_mean does. Each variant is one
    small jitted program (an eager vmap dispatches op by op: seconds in all)."""
    with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
        x = jnp.asarray(BN_SPLIT, jnp.float64)
        parts = x.reshape(BN_REPLICAS, -1, x.shape[1])
        layer = _split_bn(axis_name="r" if how == "axis_name" else None)
        ones, zeros = jnp.ones(x.shape[1], jnp.float64), jnp.zeros(x.shape[1], jnp.float64)
        # nn.BatchNorm's init values (scale 1, bias 0, mean 0, var 1), built directly: an eager init costs ~0.2 s
        variables = {"params": {"scale": ones, "bias": zeros}, "batch_stats": {"mean": zeros, "var": ones}}

        def apply(v):
            return layer.apply(variables, v, mutable=["batch_stats"])[1]["batch_stats"]

        if how == "jit":
            stats = jax.tree.map(lambda a: a[None], jax.jit(apply)(x))
        elif how == "pmean":
            stats = jax.jit(jax.vmap(lambda v: jax.lax.pmean(apply(v), "r"), axis_name="r"))(parts)
        else:
            stats = jax.jit(jax.vmap(apply, axis_name="r" if how == "axis_name" else None))(parts)
        return np.asarray(stats["mean"]), np.asarray(stats["var"])


def sync_batchnorm_cpu() -> dict:
    """flax nn.BatchNorm(axis_name="r") in training under jax.vmap(axis_name="r") over BN_SPLIT's replicas, on the
    CPU: the outcome, the statistics replica 0 took (split_statistics_name) and whether the replicas agree."""
    try:
        mean, var = _split_stats("axis_name")
    except Exception as exc:  # the outcome is the exception's type
        return {"cpu_training": f"raises: {type(exc).__name__}"}
    return {
        "platform": jax.devices("cpu")[0].platform,
        "cpu_training": "runs",
        "statistics": split_statistics_name(mean[0], var[0]),
        "replicas_agree": bool(np.array_equal(mean[0], mean[1]) and np.array_equal(var[0], var[1])),
    }


def bn_jit_global_batch() -> dict:
    """flax nn.BatchNorm's running statistics after one training call on BN_SPLIT (_split_stats): jitted over the
    global batch, per replica (vmap, no axis_name: replica 0's and 1's means) and synchronised (axis_name); each
    named by split_statistics_name, replica 0's own statistics "per_replica"."""
    (jit_mean, jit_var), (rep_mean, rep_var), (sync_mean, sync_var) = (
        _split_stats(how) for how in ("jit", "vmap", "axis_name")
    )

    def name(mean, var):
        return split_statistics_name(mean, var, replica_0="per_replica")

    return {
        "running_mean": jit_mean[0].tolist(),
        "statistics": name(jit_mean[0], jit_var[0]),
        "per_replica_means": rep_mean.tolist(),
        "per_replica_statistics": name(rep_mean[0], rep_var[0]),
        "synchronised_statistics": name(sync_mean[0], sync_var[0]),
        "jit_equals_synchronised": bool(
            np.array_equal(jit_mean[0], sync_mean[0]) and np.array_equal(jit_var[0], sync_var[0])
        ),
        "jit_equals_per_replica": bool(
            np.array_equal(jit_mean[0], rep_mean[0]) and np.array_equal(jit_var[0], rep_var[0])
        ),
    }


def bn_replica_stats() -> dict:
    """flax keeps one batch_stats per replica under vmap/shard_map without axis_name: replica 0's and 1's running
    means after one training call on BN_SPLIT, whether they differ, replica 0's statistics (device 0's, what the JAX
    backend keeps) and the average flax's examples take (lax.pmean, their cross_replica_mean), both named by
    split_statistics_name; "kept": the example's."""
    mean, var = _split_stats("vmap")
    avg_mean, avg_var = _split_stats("pmean")
    averaged = split_statistics_name(avg_mean[0], avg_var[0])
    return {
        "per_replica_means": mean.tolist(),
        "replicas_differ": bool(not np.array_equal(mean[0], mean[1])),
        "device_0": split_statistics_name(mean[0], var[0]),
        "replica_average_mean": avg_mean[0].tolist(),
        "replica_average": averaged,
        "kept": averaged,
    }


# --------------------------------------------------------------------- gradient clipping and learning-rate schedules
def _run64(fn, *args):
    """fn(*args) under jax.jit with x64 on (one compile, as a training step is; eager dispatch of the same ops takes
    seconds), the result back as numpy. Arguments and float64 constants are numpy float64 (a jnp.float64 made
    inside `fn` is traced, and optax tests some constants in Python)."""
    with jax.enable_x64(True):
        return jax.device_get(jax.jit(fn)(*args))


def _updates(tx, grads, params=None):
    """The update the optax transform `tx` makes of `grads` from its initial state."""
    return tx.update(grads, tx.init(grads if params is None else params), params)[0]


def _arrays(values: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float64) for k, v in values.items()}


def clip_epsilon() -> dict:
    """clip_by_global_norm's factor on CLIP_BOUNDARY (global norm n = 5) at c = n and c = n/2: g'/g, exact (powers
    of 2)."""
    grads = _arrays({k: CLIP_BOUNDARY[k] for k in ("a", "b")})
    n = clip_boundary_norm()
    at_c, at_2c = _run64(lambda g: [_updates(optax.clip_by_global_norm(c), g) for c in (n, n / 2)], grads)
    return {"factor_at_c": clip_factor(at_c, grads), "factor_at_2c": clip_factor(at_2c, grads)}


def keras_clipnorm_per_variable() -> dict:
    """clip_by_global_norm(c) on CLIP_SCOPE's two leaves: the scope (reference.clip_scope) and the clipped values;
    "projection_l2_ball_scope": projection_l2_ball(u, c) mapped over the leaves (exact mode's per_tensor clip)."""
    c = CLIP_SCOPE["c"]
    per_leaf = optax.stateless(lambda u, _: jax.tree.map(lambda x: optax.projections.projection_l2_ball(x, c), u))
    clipped, leaves = _run64(
        lambda g: [_updates(optax.clip_by_global_norm(c), g), _updates(per_leaf, g)],
        _arrays({k: CLIP_SCOPE[k] for k in ("a", "b")}),
    )
    return {
        "scope": clip_scope(clipped["a"], clipped["b"]),
        **{k: v.tolist() for k, v in clipped.items()},
        "projection_l2_ball_scope": clip_scope(leaves["a"], leaves["b"]),
    }


def clip_before_decay() -> dict:
    """CLIP_DECAY's SGD step as an optax chain: chain(clip_by_global_norm(c), add_decayed_weights(λ), sgd(lr)) (a
    port's order) and chain(add_decayed_weights(λ), clip_by_global_norm(c), sgd(lr)) (exact mode's). Δw, order."""
    p = CLIP_DECAY
    clip, decay, sgd = optax.clip_by_global_norm(p["c"]), optax.add_decayed_weights(p["wd"]), optax.sgd(p["lr"])
    clip_first, decay_first = _run64(
        lambda g, w: [_updates(optax.chain(*chain), g, w) for chain in ((clip, decay, sgd), (decay, clip, sgd))],
        np.asarray(p["grad"], np.float64),
        np.asarray(p["w"], np.float64),
    )
    return {
        "update": clip_first.tolist(),
        "order": clip_decay_order(clip_first),
        "decay_first_update": decay_first.tolist(),
        "decay_first_order": clip_decay_order(decay_first),
    }


def _used_lrs(schedule, steps: int):
    """Traced: the lr each of `steps` optax.sgd(schedule) updates used, −update of g = 1 (float64); optax calls the
    schedule with the count before incrementing it."""
    tx, g = optax.sgd(schedule), jnp.ones(1, jnp.float64)
    state, used = tx.init(g), []
    for _ in range(steps):
        updates, state = tx.update(g, state, g)
        used.append(-updates[0])
    return jnp.stack(used)


def cosine_annealing_period() -> dict:
    """cosine_decay_schedule(lr₀, D, alpha = f/lr₀) with float64 values: the lr sgd used at t = 0, D, 1.5·D, 2·D."""
    s = SCHEDULE

    def run():
        alpha = np.float64(s["final_lr"] / s["lr"])
        schedule = optax.cosine_decay_schedule(np.float64(s["lr"]), s["decay_steps"], alpha=alpha)
        return _used_lrs(schedule, max(s["cosine_at"]) + 1)

    used = _run64(run)
    return {"lr": [float(used[t]) for t in s["cosine_at"]]}


def warmup_decay_steps() -> dict:
    """warmup_cosine_decay_schedule(0, lr₀, W, decay_steps = D, f), float64 values: the lr sgd used at SCHEDULE's
    warmup_at steps (a port passing the cosine's D); "decay_steps_w_plus_d": exact mode's decay_steps = W + D."""
    s = SCHEDULE
    steps = max(s["warmup_at"]) + 1

    def schedule(decay_steps):
        values = (np.float64(0.0), np.float64(s["lr"]), s["warmup_steps"], decay_steps, np.float64(s["final_lr"]))
        return optax.warmup_cosine_decay_schedule(*values)

    native, exact = _run64(
        lambda: [_used_lrs(schedule(d), steps) for d in (s["decay_steps"], s["warmup_steps"] + s["decay_steps"])]
    )
    return {
        "lr": [float(native[t]) for t in s["warmup_at"]],
        "decay_steps_w_plus_d": [float(exact[t]) for t in s["warmup_at"]],
    }


def schedule_float32() -> dict:
    """With x64 on: exponential_decay(0.1, staircase) and cosine_decay_schedule at count 0 (an int32, as optax's
    count) with a Python-float lr₀ (value and dtype), exponential_decay with np.float64(0.1), and the lr the first
    sgd update of a float64 gradient used with the Python-float schedule."""
    p = SCHEDULE_FLOAT32

    def exponential(lr0):
        return optax.exponential_decay(lr0, p["decay_steps"], p["decay_rate"], staircase=True)

    def run():
        count = jnp.zeros([], jnp.int32)
        return {
            "python": exponential(p["lr"])(count),
            "float64": exponential(np.float64(p["lr"]))(count),
            "cosine": optax.cosine_decay_schedule(p["lr"], p["decay_steps"])(count),
            "sgd": _used_lrs(exponential(p["lr"]), 1)[0],
        }

    out = _run64(run)
    return {
        "lr": float(out["python"]),
        "dtype": out["python"].dtype.name,
        "cosine_lr": float(out["cosine"]),
        "cosine_dtype": out["cosine"].dtype.name,
        "float64_lr": float(out["float64"]),
        "float64_dtype": out["float64"].dtype.name,
        "sgd_lr": float(out["sgd"]),
    }


PROBES = {
    "sparse_embedding_adam": sparse_embedding_adam,
    "rnn_padded_outputs": rnn_padded_outputs,
    "rnn_bias_vectors": rnn_bias_vectors,
    "shuffle_order": shuffle_order,
    "ragged_recompile": ragged_recompile,
    "masked_mean_loss": masked_mean_loss,
    "sample_weight_reduction": sample_weight_reduction,
    "dropout_scale": dropout_scale,
    "dropout_default_mode": dropout_default_mode,
    "dropout_rate_one": dropout_rate_one,
    "l2_vs_weight_decay": l2_vs_weight_decay,
    "penalty_in_loss": penalty_in_loss,
    "optimizer_weight_decay": optimizer_weight_decay,
    "adam_weight_decay_equivalence": adam_weight_decay_equivalence,
    "optax_decay_mask": optax_decay_mask,
    "abs_subgradient": abs_subgradient,
    "adam_eps_default": adam_eps_default,
    "keras_epsilon_hat": keras_epsilon_hat,
    "sgd_momentum_schedule": sgd_momentum_schedule,
    "default_init": default_init,
    "weight_layout": weight_layout,
    "loss_input_defaults": loss_input_defaults,
    "float64_conversion": float64_conversion,
    "tf32_defaults": tf32_defaults,
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
    "accumulator_dtype": accumulator_dtype,
    "sync_batchnorm_cpu": sync_batchnorm_cpu,
    "bn_jit_global_batch": bn_jit_global_batch,
    "bn_replica_stats": bn_replica_stats,
    "clip_epsilon": clip_epsilon,
    "keras_clipnorm_per_variable": keras_clipnorm_per_variable,
    "clip_before_decay": clip_before_decay,
    "cosine_annealing_period": cosine_annealing_period,
    "warmup_decay_steps": warmup_decay_steps,
    "schedule_float32": schedule_float32,
}
