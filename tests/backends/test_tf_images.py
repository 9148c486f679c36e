"""The Keras 3 image and BatchNorm layers of the TF backend against small numpy references written here
(common.layers.image and common.layers.norm give the formulas): conv2d with TF's asymmetric "same" padding, the
pools (average over the real pixels), global average pooling, NHWC flatten, and batch_norm in training (real rows
only, both running-variance estimators, pad equals keep) and in evaluation (running statistics)."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from backends.tf_backend import image, norm  # noqa: E402
from backends.tf_backend.core import Build  # noqa: E402
from common.layers import stack  # noqa: E402
from common.layers.norm import values_per_channel  # noqa: E402
from tests.support import make_spec  # noqa: E402

EXACT, NATIVE = Build("float64", native=False, seed=0), Build("float64", native=True, seed=0)


def _layer(table: dict, in_shape: tuple[int, ...]):
    """The resolved common.layers.Layer of `table` reading rows of `in_shape` (a dense head closes the stack)."""
    images = len(in_shape) == 3
    flatten = [{"kind": "flatten"}] if images and table["kind"] not in ("flatten", "global_avg_pool") else []
    data = {"data": {"name": "digits", "images": True}} if images else {}
    spec = make_spec(model={"layers": [table, *flatten, {"kind": "dense"}]}, **data)
    return stack(spec, in_shape if images else in_shape[0], 3)[0]


def _rows(shape, rows=5, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, *shape))


def _windows(x, k, s, pads, fill):
    """(B, H', W', k, k, C) windows of x zero- (or `fill`-) padded by pads = (top, bottom, left, right)."""
    t, b, left, r = pads
    xp = np.pad(x, ((0, 0), (t, b), (left, r), (0, 0)), constant_values=fill)
    oh, ow = (xp.shape[1] - k) // s + 1, (xp.shape[2] - k) // s + 1
    return np.stack(
        [np.stack([xp[:, i * s : i * s + k, j * s : j * s + k] for j in range(ow)], 1) for i in range(oh)], 1
    )


def _built(make, layer, build, x):
    native = make(layer, build)
    native(x[:1])
    return native


# conv2d: "same" at stride 1 (pads 1, 1), stride 2 on 8 and 7 pixels (pads 0, 1: the odd pixel at the bottom/right)
CONVS = [
    ({"kernel": 3, "padding": "same"}, (8, 8, 1), (1, 1, 1, 1)),
    ({"kernel": 3, "stride": 2, "padding": "same"}, (8, 8, 2), (0, 1, 0, 1)),
    ({"kernel": 2, "stride": 2, "padding": "same"}, (7, 6, 2), (0, 1, 0, 0)),
    ({"kernel": 4, "stride": 3, "padding": "same"}, (7, 7, 1), (1, 2, 1, 2)),
    ({"kernel": 3, "stride": 2, "padding": "valid"}, (7, 8, 2), (0, 0, 0, 0)),
]


@pytest.mark.parametrize(("keys", "in_shape", "pads"), CONVS)
def test_conv2d_is_keras_conv2d_with_tf_same_padding(keys, in_shape, pads):
    layer = _layer({"kind": "conv2d", "filters": 3, "activation": "tanh", **keys}, in_shape)
    assert layer.pads == pads
    x = _rows(in_shape)
    native = _built(image.conv2d, layer, EXACT, x)
    assert isinstance(native, keras.layers.Conv2D) and native.name == "conv0"
    rng = np.random.default_rng(1)
    weights = {suffix: rng.standard_normal(var.shape) for suffix, var in image.VARIABLES["conv2d"](native).items()}
    assert weights["weight"].shape == (layer.kernel, layer.kernel, in_shape[2], 3)  # canonical (k, k, in, out)
    for suffix, var in image.VARIABLES["conv2d"](native).items():
        var.assign(weights[suffix])
    got = native(x).numpy()
    want = np.tanh(
        np.einsum("bijuvc,uvco->bijo", _windows(x, layer.kernel, layer.stride, layer.pads, 0.0), weights["weight"])
        + weights["bias"]
    )
    assert got.shape == (x.shape[0], *layer.shape)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


def test_native_conv_init_is_keras_glorot_on_its_own_seed():
    layer = _layer({"kind": "conv2d", "filters": 3, "kernel": 3}, (8, 8, 1))
    x = _rows((8, 8, 1))
    a, b = _built(image.conv2d, layer, NATIVE, x), _built(image.conv2d, layer, NATIVE, x)
    np.testing.assert_array_equal(a.kernel.numpy(), b.kernel.numpy())  # seeded
    bound = np.sqrt(6.0 / (9 * 1 + 9 * 3))  # glorot_uniform: fan_in = k²·C_in, fan_out = k²·filters
    assert np.abs(a.kernel.numpy()).max() <= bound and np.all(a.bias.numpy() == 0.0)
    dense = keras.initializers.GlorotUniform(seed=NATIVE.keras_seed(7, 0))((9, 3))  # dense layer 0's stream
    assert not np.allclose(a.kernel.numpy().reshape(9, 3), dense.numpy())


POOLS = [
    ({"size": 2}, (8, 8, 2)),
    ({"size": 2, "padding": "same"}, (5, 7, 2)),
    ({"size": 3, "stride": 2, "padding": "same"}, (6, 5, 1)),
    ({"size": 2, "stride": 1, "padding": "same"}, (4, 4, 3)),
]


@pytest.mark.parametrize(("keys", "in_shape"), POOLS)
@pytest.mark.parametrize("kind", ["max_pool", "avg_pool"])
def test_pools_are_keras_pools_and_average_over_real_pixels(kind, keys, in_shape):
    layer = _layer({"kind": kind, **keys}, in_shape)
    x = _rows(in_shape)
    native = _built(image.LAYERS[kind], layer, EXACT, x)
    windows = _windows(x, layer.kernel, layer.stride, layer.pads, np.nan)
    want = np.nanmax(windows, axis=(3, 4)) if kind == "max_pool" else np.nanmean(windows, axis=(3, 4))
    got = native(x).numpy()
    assert got.shape == (x.shape[0], *layer.shape)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14)
    if kind == "avg_pool" and any(layer.pads):  # a zero-padded window divided by k² is not what Keras does
        by_window = np.nan_to_num(windows).sum(axis=(3, 4)) / layer.kernel**2
        assert not np.allclose(got, by_window, rtol=1e-6)


def test_global_avg_pool_and_flatten_in_nhwc_order():
    x = _rows((3, 4, 2))
    pooled = _built(image.LAYERS["global_avg_pool"], _layer({"kind": "global_avg_pool"}, (3, 4, 2)), EXACT, x)
    np.testing.assert_allclose(pooled(x).numpy(), x.mean(axis=(1, 2)), rtol=1e-14)
    flat = _built(image.LAYERS["flatten"], _layer({"kind": "flatten"}, (3, 4, 2)), EXACT, x)
    np.testing.assert_array_equal(flat(x).numpy(), x.reshape(5, -1))  # y[b, (h·W + w)·C + c] = x[b, h, w, c]
    assert not np.array_equal(flat(x).numpy(), x.transpose(0, 3, 1, 2).reshape(5, -1))  # torch's NCHW flatten


# batch_norm


def _bn(shape, **keys):
    """An exact-mode Keras batch_norm on rows of `shape` with random γ, β and running statistics."""
    layer = _layer({"kind": "batch_norm", "eps": 1e-3, **keys}, shape)
    native = _built(norm.batch_norm, layer, EXACT, _rows(shape))
    rng = np.random.default_rng(3)
    channels = shape[-1]
    start = {
        "scale": rng.uniform(0.5, 2.0, channels),
        "offset": rng.standard_normal(channels),
        "mean": rng.standard_normal(channels),
        "var": rng.uniform(0.5, 2.0, channels),
    }
    for suffix, var in norm.VARIABLES["batch_norm"](native).items():
        var.assign(start[suffix])
    return layer, native, start


def _train(native, x, real):
    """One training call with the real rows (B,) as the Stack passes them: Keras's mask over x's non-channel axes."""
    return native(x, training=True, mask=norm.row_mask(tf.constant(real), tf.constant(x))).numpy()


def _state(native):
    return {suffix: var.numpy() for suffix, var in norm.VARIABLES["batch_norm"](native).items()}


@pytest.mark.parametrize("running_var", ["biased", "unbiased"])
@pytest.mark.parametrize("shape", [(5,), (3, 4, 2)], ids=["features", "images"])
def test_batch_norm_training_uses_the_real_rows_and_the_specs_estimator(shape, running_var):
    layer, native, start = _bn(shape, momentum=0.8, running_var=running_var)
    assert isinstance(native, norm.BatchNorm) and (native.momentum, native.epsilon) == (0.8, 1e-3)
    x = _rows(shape, rows=7)
    real = np.arange(7) < 4  # three filler rows at the end, as `last_batch = "pad"` appends them
    x[~real] *= 100.0  # filler rows far off: any leak into the statistics shows
    y = _train(native, x, real)
    values = x[real].reshape(-1, shape[-1])
    mu, var, n = values.mean(axis=0), values.var(axis=0), values.shape[0]
    want = start["scale"] * (x - mu) / np.sqrt(var + 1e-3) + start["offset"]
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)  # filler rows too, with the real rows' statistics
    state = _state(native)
    estimate = var * n / (n - 1) if running_var == "unbiased" else var
    np.testing.assert_allclose(state["mean"], 0.8 * start["mean"] + 0.2 * mu, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(state["var"], 0.8 * start["var"] + 0.2 * estimate, rtol=1e-14, atol=0)
    assert n == values_per_channel(layer, 4)


@pytest.mark.parametrize("running_var", ["biased", "unbiased"])
@pytest.mark.parametrize("shape", [(5,), (3, 4, 2)], ids=["features", "images"])
@pytest.mark.parametrize("execution", ["eager", "graph", "xla"])
def test_batch_norm_pad_equals_keep_in_every_execution(shape, running_var, execution):
    """The same batch as 4 real rows alone (keep) and with 3 filler rows (pad): equal outputs on the real rows,
    equal gradients and equal running statistics, under tf.function and XLA as in eager mode."""
    x = _rows(shape, rows=7)
    real = np.arange(7) < 4
    dy = _rows(shape, rows=7, seed=5) * real.reshape(-1, *[1] * len(shape))
    out = {}
    for name, rows in (("keep", slice(0, 4)), ("pad", slice(0, 7))):
        _, native, _ = _bn(shape, running_var=running_var)

        def step(x, real, dy, native=native):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = native(x, training=True, mask=norm.row_mask(real, x))
                loss = tf.reduce_sum(y * dy)
            return (y, *tape.gradient(loss, [x, native.gamma.value, native.beta.value]))

        if execution != "eager":
            step = tf.function(step, jit_compile=execution == "xla")
        y, dx, dgamma, dbeta = (t.numpy() for t in step(tf.constant(x[rows]), real[rows], tf.constant(dy[rows])))
        out[name] = (y[:4], dx[:4], dgamma, dbeta, *_state(native).values())
    for keep, pad in zip(out["keep"], out["pad"], strict=True):
        np.testing.assert_allclose(pad, keep, rtol=1e-13, atol=1e-14)


def test_keras_masked_moments_add_keras_epsilon_to_the_count():
    """The trap norm.BatchNorm converts: Keras's masked moments divide by Σ mask + keras.config.epsilon() (1e-7),
    a relative 1e-7/n error in μ and σ²_b, 2.5e-8 here (n = 4), outside float64's 1e-9; the exact-mode layer
    divides by the count."""
    x = _rows((5,), rows=7)
    real = np.arange(7) < 4
    plain = keras.layers.BatchNormalization(momentum=0.5, epsilon=1e-3, dtype="float64")
    plain(x[:1])
    _, exact, _ = _bn((5,), momentum=0.5)
    for native in (plain, exact):
        for suffix, var in norm.VARIABLES["batch_norm"](native).items():
            var.assign(np.ones(5) if suffix in ("scale", "var") else np.zeros(5))
    mask = norm.row_mask(tf.constant(real), tf.constant(x))
    y_plain, y_exact = plain(x, training=True, mask=mask).numpy(), exact(x, training=True, mask=mask).numpy()
    mu = x[real].mean(axis=0)
    np.testing.assert_allclose(exact.moving_mean.numpy(), 0.5 * mu, rtol=1e-15, atol=1e-17)
    fuzz = np.abs(plain.moving_mean.numpy() / (0.5 * mu) - 1.0)
    np.testing.assert_allclose(fuzz, 1e-7 / 4, rtol=1e-6)
    assert np.abs(y_plain - y_exact).max() > 1e-9
    assert keras.config.epsilon() == 1e-7  # restored after the exact layer traced


def test_batch_norm_mask_stays_inside_the_layer():
    """The real-row mask selects the statistics' rows only: nothing downstream gets it as a Keras mask."""
    _, native, _ = _bn((3, 4, 2))
    plain = keras.layers.BatchNormalization(dtype="float64")
    x = tf.constant(_rows((3, 4, 2), rows=7))
    mask = norm.row_mask(tf.constant(np.arange(7) < 4), x)
    assert getattr(plain(x, training=True, mask=mask), "_keras_mask", None) is not None  # Keras passes it on
    assert getattr(native(x, training=True, mask=mask), "_keras_mask", None) is None


def test_batch_norm_evaluation_uses_the_running_statistics():
    _, native, start = _bn((3, 4, 2), running_var="unbiased")
    x = _rows((3, 4, 2))
    want = start["scale"] * (x - start["mean"]) / np.sqrt(start["var"] + 1e-3) + start["offset"]
    np.testing.assert_allclose(native(x, training=False).numpy(), want, rtol=1e-13, atol=1e-14)
    assert all(np.array_equal(v, start[k]) for k, v in _state(native).items())  # evaluation updates nothing


def test_native_batch_norm_is_keras_with_its_defaults():
    layer = _layer({"kind": "batch_norm", "momentum": 0.8, "eps": 1e-5, "running_var": "unbiased"}, (3, 4, 2))
    native = _built(norm.batch_norm, layer, NATIVE, _rows((3, 4, 2)))
    assert type(native) is keras.layers.BatchNormalization
    assert (native.axis, native.momentum, native.epsilon) == (-1, 0.99, 1e-3)  # common.native.LAYER_DEFAULTS["tf"]
    assert not native.moving_mean.trainable and not native.moving_variance.trainable
