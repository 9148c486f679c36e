"""JAX image layers and batch_norm (backends/jax_backend/image.py, norm.py) against numpy references written here
(docs/design.md, "Images and BatchNorm"): nn.Conv with TF's "same" padding (asymmetric at stride 2, explicit in
exact mode, XLA's "SAME" in native mode: the same windows), max_pool's −∞ padding, avg_pool's real-pixel divisor
(exact) against flax's k² default (native), NHWC flatten, global_avg_pool; nn.BatchNorm's training output over the
real rows, its running statistics in the decay convention with either estimator, pad == keep, evaluation on the
running statistics, flax's defaults in native mode, the fast-variance cancellation on large-mean data, and the
canonical ⇄ flax routing of the state into `batch_stats` (never seen by the optimizer)."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")

import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from backends.jax_backend import norm  # noqa: E402
from backends.jax_backend.core import Call, Options  # noqa: E402
from backends.jax_backend.model import (  # noqa: E402
    LAYERS,
    build,
    load_canonical,
    split_state,
    to_canonical,
    to_native,
)
from backends.jax_backend.optim import trainable  # noqa: E402
from common.layers import Layer, init_params, is_state, stack  # noqa: E402
from tests.support import make_spec  # noqa: E402

EXACT, NATIVE = Options(jnp.float64), Options(jnp.float64, native=True)


@pytest.fixture(autouse=True, scope="module")
def x64():
    """Every spec switches x64 on (backends/jax_backend/adapter.py); these tests build modules directly."""
    jax.config.update("jax_enable_x64", True)


def resolved(table: dict, in_shape: tuple[int, ...]) -> Layer:
    """The resolved first layer of [table, (flatten,) dense] on images (H, W, C) or features (F,), as
    common.layers.stack gives it."""
    flat = [{"kind": "flatten"}] if len(in_shape) == 3 and table["kind"] not in ("flatten", "global_avg_pool") else []
    spec = make_spec(
        data={"name": "digits", "images": len(in_shape) == 3}, model={"layers": [table, *flat, {"kind": "dense"}]}
    )
    return stack(spec, in_shape if len(in_shape) == 3 else in_shape[0], 10)[0]


class One(nn.Module):
    """One layer of a stack, as model.Stack runs it."""

    layer: Layer
    options: Options

    @nn.compact
    def __call__(self, x, train: bool = False, real=None):
        return LAYERS[self.layer.kind](self.layer, self.options)(x, Call(train, None, real))


def images(shape, seed=0, loc=0.0):
    return np.random.default_rng(seed).normal(loc, 1.0, shape)


def padded(x, pads, value):
    top, bottom, left, right = pads
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


def windows(x, k, s):
    """win[b, i, j] = x[b, s·i : s·i + k, s·j : s·j + k, :] of an already padded x, as a list of lists."""
    oh, ow = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    return [[x[:, s * i : s * i + k, s * j : s * j + k, :] for j in range(ow)] for i in range(oh)]


def conv_reference(x, kernel, bias, pads, s):
    rows = windows(padded(x, pads, 0.0), kernel.shape[0], s)
    return np.stack([np.stack([np.einsum("buvc,uvco->bo", w, kernel) + bias for w in r], 1) for r in rows], 1)


def pool_reference(x, k, s, pads, kind, divisor="real"):
    """max over the window padded with −∞, or the window sum over the real pixels' count ("real") or k² ("k²")."""
    if kind == "max_pool":
        rows = windows(padded(x, pads, -np.inf), k, s)
        return np.stack([np.stack([w.max(axis=(1, 2)) for w in r], 1) for r in rows], 1)
    sums = windows(padded(x, pads, 0.0), k, s)
    counts = windows(padded(np.ones_like(x), pads, 0.0), k, s) if divisor == "real" else None
    out = [
        [w.sum(axis=(1, 2)) / (k * k if counts is None else counts[i][j].sum(axis=(1, 2))) for j, w in enumerate(r)]
        for i, r in enumerate(sums)
    ]
    return np.stack([np.stack(r, 1) for r in out], 1)


# ---- image layers --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table, in_shape, pads",
    [
        ({"kernel": 3, "stride": 2, "padding": "same"}, (8, 7, 2), (0, 1, 1, 1)),  # odd total at the bottom only
        ({"kernel": 4, "padding": "same"}, (8, 8, 2), (1, 2, 1, 2)),  # even kernel: the extra pixel after
        ({"kernel": 3, "stride": 2, "padding": "valid"}, (8, 7, 2), (0, 0, 0, 0)),
    ],
)
def test_conv2d_is_nn_conv_with_tf_same_padding(table, in_shape, pads):
    layer = resolved({"kind": "conv2d", "filters": 3, "activation": "tanh", **table}, in_shape)
    assert layer.pads == pads
    x, draw = images((5, *in_shape)), np.random.default_rng(1)
    kernel, bias = draw.normal(size=(layer.kernel, layer.kernel, 2, 3)), draw.normal(size=3)
    variables = to_native({"conv0.weight": kernel, "conv0.bias": bias})
    want = np.tanh(conv_reference(x, kernel, bias, pads, layer.stride))
    assert want.shape[1:] == layer.shape
    exact = np.asarray(One(layer, EXACT).apply(variables, x))
    np.testing.assert_allclose(exact, want, rtol=1e-12, atol=1e-12)
    # native mode writes padding="SAME" / "VALID": XLA resolves "SAME" by TF's rule, so the windows are the same
    np.testing.assert_allclose(np.asarray(One(layer, NATIVE).apply(variables, x)), exact, rtol=1e-13, atol=1e-13)
    init = One(layer, EXACT).init(jax.random.key(0), x)
    assert jax.tree.map(np.shape, init) == {"params": {"conv0": {"kernel": kernel.shape, "bias": (3,)}}}


@pytest.mark.parametrize("kind", ["max_pool", "avg_pool"])
@pytest.mark.parametrize(
    "keys, in_shape, pads",
    [
        ({"size": 3, "stride": 2, "padding": "same"}, (8, 7, 2), (0, 1, 1, 1)),
        ({"size": 2, "stride": 1, "padding": "same"}, (5, 5, 3), (0, 1, 0, 1)),
        ({"size": 2}, (8, 7, 2), (0, 0, 0, 0)),  # stride defaults to the size, valid
    ],
)
def test_pools_match_numpy_and_divide_by_real_pixels(kind, keys, in_shape, pads):
    layer = resolved({"kind": kind, **keys}, in_shape)
    assert layer.pads == pads
    x = images((4, *in_shape), loc=-5.0)  # all negative: a zero pad would win every border max
    assert x.max() < 0
    want = pool_reference(x, layer.kernel, layer.stride, pads, kind)
    exact = np.asarray(One(layer, EXACT).apply({}, x))
    np.testing.assert_allclose(exact, want, rtol=1e-13, atol=0)
    native = np.asarray(One(layer, NATIVE).apply({}, x))
    if kind == "max_pool" or pads == (0, 0, 0, 0):
        np.testing.assert_allclose(native, exact, rtol=1e-13, atol=0)
    else:  # flax's default count_include_pad=True divides every window by k²: the border windows shrink
        want_native = pool_reference(x, layer.kernel, layer.stride, pads, kind, divisor="k²")
        np.testing.assert_allclose(native, want_native, rtol=1e-13, atol=0)
        assert np.abs(native - exact).max() > 0.5


def test_avg_pool_float32_stays_float32():
    """flax's count_include_pad=False pools a count from `jnp.ones` (float64 under x64) and promotes a float32
    input; the exact-mode pool (same formula, ones in the input's dtype) keeps every value float32."""
    layer = resolved({"kind": "avg_pool", "size": 3, "stride": 2, "padding": "same"}, (8, 7, 2))
    x = jnp.asarray(images((2, 8, 7, 2)), jnp.float32)
    pool = {"window_shape": (3, 3), "strides": (2, 2), "padding": ((0, 1), (1, 1))}
    assert nn.avg_pool(x, **pool, count_include_pad=False).dtype == jnp.float64  # the flax trap under x64
    closed = jax.make_jaxpr(lambda v: One(layer, Options(jnp.float32)).apply({}, v))(x)
    dtypes = {str(v.aval.dtype) for eqn in closed.jaxpr.eqns for v in eqn.outvars}
    assert dtypes == {"float32"}
    np.testing.assert_allclose(
        np.asarray(One(layer, Options(jnp.float32)).apply({}, x)),
        np.asarray(nn.avg_pool(x, **pool, count_include_pad=False)),
        rtol=1e-7,
    )


def test_global_avg_pool_and_flatten_are_nhwc():
    x = images((3, 4, 5, 2))
    flat = np.asarray(One(resolved({"kind": "flatten"}, (4, 5, 2)), EXACT).apply({}, x))
    for h, w, c in np.ndindex(4, 5, 2):
        np.testing.assert_array_equal(flat[:, (h * 5 + w) * 2 + c], x[:, h, w, c])
    layer = resolved({"kind": "global_avg_pool"}, (4, 5, 2))
    np.testing.assert_allclose(np.asarray(One(layer, EXACT).apply({}, x)), x.mean(axis=(1, 2)), rtol=1e-14)


# ---- batch_norm ----------------------------------------------------------------------------------------------------

SHAPES = [(6, 5), (6, 3, 4, 2)]  # features (B, F) and images (B, H, W, C)


def bn_layer(shape, **keys) -> Layer:
    return resolved({"kind": "batch_norm", **keys}, shape[1:])


def bn_variables(layer: Layer, seed=2) -> dict:
    """scale, offset and a nonzero running state, so the momentum convention shows in the update."""
    draw = np.random.default_rng(seed)
    c = layer.width
    canonical = {
        "bn0.scale": draw.uniform(0.5, 1.5, c),
        "bn0.offset": draw.normal(size=c),
        "bn0.mean": draw.normal(size=c),
        "bn0.var": draw.uniform(0.5, 2.0, c),
    }
    return to_native(canonical)


def train_bn(layer, options, variables, x, real):
    """(y, batch_stats after the step) of one training pass, through norm.running_stats as execution.py does."""
    y, updated = One(layer, options).apply(variables, x, train=True, real=real, mutable=["batch_stats"])
    _, state = split_state(variables)
    return np.asarray(y), norm.running_stats((layer,), options, state, updated, real)["batch_stats"]["bn0"]


@pytest.mark.parametrize("running_var", ["biased", "unbiased"])
@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_trains_on_the_real_rows_with_the_specs_estimator(shape, running_var):
    """Normalisation: biased σ²_b of the real rows, ε = layer.eps; running statistics in the decay convention
    mean ← m·mean + (1 − m)·μ (torch's argument would be 1 − m), var ← m·var + (1 − m)·f·σ²_b, f = n/(n − 1) for
    "unbiased" (n the real values per channel); the filler rows of a pad batch change nothing (pad == keep)."""
    layer = bn_layer(shape, momentum=0.8, eps=1e-3, running_var=running_var)
    variables = bn_variables(layer)
    x = images(shape, loc=3.0)
    real = np.array([True] * 4 + [False] * 2)
    y, stats = train_bn(layer, EXACT, variables, x, jnp.asarray(real))
    axes = tuple(range(len(shape) - 1))
    mu, var = x[real].mean(axis=axes), x[real].var(axis=axes)
    p = {k: np.asarray(v) for k, v in to_canonical(variables).items()}
    want = p["bn0.scale"] * (x - mu) / np.sqrt(var + 1e-3) + p["bn0.offset"]
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)  # filler rows: normalised with the real rows' stats
    n = 4 * int(np.prod(shape[1:-1]))
    f = n / (n - 1) if running_var == "unbiased" else 1.0
    np.testing.assert_allclose(stats["mean"], 0.8 * p["bn0.mean"] + 0.2 * mu, rtol=1e-13)
    np.testing.assert_allclose(stats["var"], 0.8 * p["bn0.var"] + 0.2 * f * var, rtol=1e-13)
    # keep: the same four rows alone, every row real
    y_keep, keep = train_bn(layer, EXACT, variables, x[:4], jnp.ones(4, bool))
    np.testing.assert_allclose(y[:4], y_keep, rtol=1e-13, atol=1e-13)
    for key in ("mean", "var"):
        np.testing.assert_allclose(stats[key], keep[key], rtol=1e-13)


@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_evaluates_on_the_running_statistics(shape):
    layer = bn_layer(shape, eps=1e-3)
    variables = bn_variables(layer)
    x = images(shape)
    p = {k: np.asarray(v) for k, v in to_canonical(variables).items()}
    want = p["bn0.scale"] * (x - p["bn0.mean"]) / np.sqrt(p["bn0.var"] + 1e-3) + p["bn0.offset"]
    np.testing.assert_allclose(np.asarray(One(layer, EXACT).apply(variables, x)), want, rtol=1e-13, atol=1e-13)


def intercepted(layer, options, x, real) -> list[tuple]:
    """(momentum, epsilon, use_fast_variance, mask shape) of every nn.BatchNorm call in one training pass."""
    seen = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
            m = context.module
            mask = kwargs.get("mask")
            seen.append((m.momentum, m.epsilon, m.use_fast_variance, None if mask is None else mask.shape))
        return next_fun(*args, **kwargs)

    variables = One(layer, options).init(jax.random.key(0), x)
    with nn.intercept_methods(record):
        One(layer, options).apply(variables, x, train=True, real=real, mutable=["batch_stats"])
    return seen


def test_batch_norm_settings_per_mode():
    """Exact mode: the spec's momentum and ε, the two-pass variance, the real rows as a mask of the input's shape;
    native mode: flax's defaults (momentum 0.99, ε 1e-5, fast variance), the same mask (a port that pads a batch
    masks it with flax's own argument), and flax's biased running variance kept as it is."""
    shape = (6, 3, 4, 2)
    layer = bn_layer(shape, momentum=0.8, eps=1e-3, running_var="unbiased")
    x, real = images(shape), jnp.asarray([True] * 5 + [False])
    assert (nn.BatchNorm.momentum, nn.BatchNorm.epsilon, nn.BatchNorm.use_fast_variance) == (0.99, 1e-5, True)
    assert intercepted(layer, EXACT, x, real)[-1] == (0.8, 1e-3, False, shape)
    assert intercepted(layer, NATIVE, x, real)[-1] == (0.99, 1e-5, True, shape)
    variables = bn_variables(layer)
    _, stats = train_bn(layer, NATIVE, variables, x, real)
    old = {k: np.asarray(v) for k, v in to_canonical(variables).items()}
    np.testing.assert_allclose(stats["var"], 0.99 * old["bn0.var"] + 0.01 * x[:5].var(axis=(0, 1, 2)), rtol=1e-9)


def test_fast_variance_cancels_on_large_mean_data():
    """E[x²] − μ² (flax's default, use_fast_variance=True) against the two-pass mean((x − μ)²) on data with mean
    1e6 and unit spread: the fast form is off by far more than float64 exact mode's 1e-9, the two-pass one is not."""
    shape = (8, 4, 4, 3)
    x = images(shape, loc=1e6)
    want = x.var(axis=(0, 1, 2))
    errors = {}
    for fast in (True, False):
        module = nn.BatchNorm(momentum=0.0, use_fast_variance=fast, param_dtype=jnp.float64)
        variables = module.init(jax.random.key(0), x, use_running_average=True)
        _, stats = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
        errors[fast] = np.abs(np.asarray(stats["batch_stats"]["var"]) / want - 1.0).max()
    layer = bn_layer(shape, momentum=0.0)
    _, exact = train_bn(layer, EXACT, bn_variables(layer), x, jnp.ones(8, bool))
    np.testing.assert_allclose(exact["var"], want, rtol=1e-11)
    assert errors[False] < 1e-11 < 1e-9 < 1e-6 < errors[True]


def test_state_lives_in_batch_stats_and_the_optimizer_never_sees_it():
    spec = make_spec(
        dtype="float64",
        data={"name": "digits", "images": True},
        model={
            "layers": [
                {"kind": "conv2d", "filters": 2, "kernel": 3},
                {"kind": "batch_norm"},
                {"kind": "flatten"},
                {"kind": "dense"},
            ]
        },
    )
    layers = stack(spec, (8, 8, 1), 10)
    canonical = init_params(layers, "torch_default", 0, np.float64)
    variables = to_native(canonical)
    assert set(variables) == {"params", "batch_stats"}
    assert set(variables["batch_stats"]["bn0"]) == {"mean", "var"}
    assert set(variables["params"]["bn0"]) == {"scale", "bias"}
    back = to_canonical(variables)
    assert list(back) == list(canonical)  # layer order, each batch_norm's state after its params
    params, state = split_state(variables)
    assert set(params) == {"params"} and set(state) == {"batch_stats"}
    assert (
        set(trainable(canonical))
        == {n for n in canonical if not is_state(n)}
        == {
            "conv0.weight",
            "conv0.bias",
            "bn0.scale",
            "bn0.offset",
            "layer0.weight",
            "layer0.bias",
        }
    )
    loaded = load_canonical(build(layers, spec), canonical)
    assert jax.tree.map(lambda a: a.dtype, loaded)["batch_stats"]["bn0"] == {"mean": np.float64, "var": np.float64}
