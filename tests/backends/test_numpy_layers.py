"""Each oracle layer kind's backward against central finite differences in float64, value tests that pin the image
and batch_norm formulas by hand, and the whole-stack gradient of layer_norm and CNN models (the MLP and sequence

pytestmark = pytest.mark.framework_free  # no ML framework: runs once, in the torch env (tox.ini)
stacks are in test_numpy_backend.py, test_numpy_sequences.py)."""

import numpy as np
import pytest

from backends.numpy_backend.model import LAYERS, Flow, build
from common.layers import Layer, init_params, is_state, stack
from common.padding import pad_batch
from tests.support import SEQ_BASE, make_spec, seq_spec

H = 1e-5  # central differences: truncation ~H², rounding ~1e-16·|f|/H, both well under atol here
SPEC = seq_spec()  # the sequence.mask setting of the embedding (true)


def _random_params(layers, seed=3):
    """Canonical parameters with every entry away from its init (scale ≠ 1, offset and biases ≠ 0)."""
    rng = np.random.default_rng(seed)
    return {
        k: v + 0.3 * rng.standard_normal(v.shape)
        for k, v in init_params(tuple(layers), "glorot_uniform", 0, np.float64).items()
    }


def _check_layer(layer, params, x, flow_args=None, spec=SPEC, seed=5, row_weights=None):
    """f = Σ y ⊙ r for a fixed random r (times `row_weights` per row, the loss weights of a training batch): the
    analytic backward(r) against central differences in x and the trained params (state gets no gradient)."""
    part = LAYERS[layer.kind](layer, spec)

    def f(p, inp):
        y, _ = part.forward(p, inp, Flow(**(flow_args or {})))
        return float(np.sum(y * r))

    y, cache = part.forward(params, x, Flow(**(flow_args or {})))
    r = np.random.default_rng(seed).standard_normal(y.shape)
    if row_weights is not None:
        r *= row_weights.reshape(-1, *[1] * (r.ndim - 1))
    dx, grads = part.backward(params, cache, r)
    trained = {k: v for k, v in params.items() if not is_state(k)}
    assert set(grads) == {k for k in trained if k.startswith(f"{layer.name}.")} if layer.name else grads == {}
    targets = dict(trained) if x.dtype.kind == "i" else {**trained, "<x>": x}
    for name, value in targets.items():
        numeric = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            up, down = value.copy(), value.copy()
            up[idx] += H
            down[idx] -= H
            if name == "<x>":
                numeric[idx] = (f(params, up) - f(params, down)) / (2 * H)
            else:
                numeric[idx] = (f({**params, name: up}, x) - f({**params, name: down}, x)) / (2 * H)
        got = dx if name == "<x>" else grads.get(name, np.zeros_like(value))
        assert got.shape == value.shape, name
        assert np.allclose(got, numeric, rtol=1e-6, atol=1e-9), name
    return y, dx, grads


@pytest.mark.parametrize("activation", ["relu", "tanh", "none"])
def test_dense(activation):
    layer = Layer("dense", 0, 0, "layer0", 4, 3, activation=activation)
    x = np.random.default_rng(0).standard_normal((6, 4))
    y, _, _ = _check_layer(layer, _random_params([layer]), x)
    if activation == "relu":
        assert np.any(y == 0.0) and np.any(y > 0.0)


def test_dropout_with_a_mask():
    layer = Layer("dropout", 1, 0, "", 5, 5, rate=0.4)
    rng = np.random.default_rng(1)
    mask = (rng.random((6, 5)) >= 0.4) / 0.6
    x = rng.standard_normal((6, 5))
    y, _, _ = _check_layer(layer, {}, x, {"masks": [mask]})
    assert np.array_equal(y, x * mask) and np.any(mask == 0.0)
    # evaluation (no masks, no rng): identity
    assert LAYERS["dropout"](layer, SPEC).forward({}, x, Flow())[0] is x


def test_dropout_native_draws_from_its_stream_in_call_order():
    layer = Layer("dropout", 1, 0, "", 5, 5, rate=0.4)
    x = np.ones((3, 5))
    y, mask = LAYERS["dropout"](layer, SPEC).forward({}, x, Flow(rng=np.random.default_rng(7)))
    expected = (np.random.default_rng(7).random((3, 5)) >= 0.4) * (1.0 / 0.6)
    assert np.array_equal(mask, expected) and np.array_equal(y, expected)


@pytest.mark.parametrize("kind", ["relu", "tanh"])
def test_activation(kind):
    layer = Layer(kind, 1, 0, "", 5, 5)
    _check_layer(layer, {}, np.random.default_rng(2).standard_normal((4, 5)))


@pytest.mark.parametrize("eps", [1e-5, 1e-1])
def test_layer_norm(eps):
    layer = Layer("layer_norm", 1, 0, "ln0", 5, 5, eps=eps)
    x = 2.0 + 3.0 * np.random.default_rng(3).standard_normal((6, 5))
    params = _random_params([layer])
    y, _, _ = _check_layer(layer, params, x)
    x_hat = (x - x.mean(axis=1, keepdims=True)) / np.sqrt(x.var(axis=1, keepdims=True) + eps)
    assert np.allclose(y, params["ln0.scale"] * x_hat + params["ln0.offset"], rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("masked", [True, False])
def test_embedding(masked):
    layer = Layer("embedding", 0, 0, "embed", 6, 3)
    spec = seq_spec(sequence={"mask": masked})
    tokens, mask, _ = pad_batch([np.array([1, 2, 2]), np.array([5]), np.array([3, 1])], "pre", "post", 4)
    flow = Flow()
    params = _random_params([layer])
    x, _ = LAYERS["embedding"](layer, spec).forward(params, tokens, flow)
    assert np.array_equal(x, params["embed.weight"][tokens])
    assert np.array_equal(flow.mu, mask if masked else np.ones(tokens.shape))
    _, dx, grads = _check_layer(layer, params, tokens, spec=spec)
    assert dx is None
    assert np.any(grads["embed.weight"][0] != 0.0)  # the pads are looked up: row 0 gets their share
    assert np.all(grads["embed.weight"][4] == 0.0)  # a token absent from the batch


def _mu(side):
    _, mask, _ = pad_batch([np.ones(3), np.ones(5), np.ones(0), np.ones(1)], side, "post", 5)
    return mask.astype(np.float64)


@pytest.mark.parametrize("side", ["post", "pre"])
def test_masked_mean_with_a_partial_mask(side):
    layer = Layer("masked_mean", 1, 0, "", 3, 3)
    mu = _mu(side)
    x = np.random.default_rng(4).standard_normal((4, 5, 3))
    y, dx, _ = _check_layer(layer, {}, x, {"mu": mu})
    assert np.allclose(y[0], x[0][mu[0] > 0].mean(axis=0)) and np.all(y[2] == 0.0)
    assert np.all(dx[mu == 0.0] == 0.0)


@pytest.mark.parametrize("side", ["post", "pre", "unmasked"])
def test_rnn_with_pre_and_post_padding_masks(side):
    layer = Layer("rnn", 1, 0, "rnn", 3, 4)
    mu = np.ones((4, 5)) if side == "unmasked" else _mu(side)
    x = np.random.default_rng(5).standard_normal((4, 5, 3))
    y, dx, _ = _check_layer(layer, _random_params([layer]), x, {"mu": mu})
    assert np.all(dx[mu == 0.0] == 0.0) and np.all(y[2] == 0.0) == (side != "unmasked")


def _stack_gradients(model, params, x, y, weights, masks):
    """The stack's gradients of every trained parameter against central differences of its loss."""
    _, grads = model.loss_and_grads(params, x, y, weights, masks)
    trained = {k: v for k, v in params.items() if not is_state(k)}
    assert set(grads) == set(trained)
    for name, value in trained.items():
        numeric = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            for sign in (1, -1):
                shifted = dict(params)
                shifted[name] = value.copy()
                shifted[name][idx] += sign * H
                numeric[idx] += sign * model.loss_and_grads(shifted, x, y, weights, masks)[0] / (2 * H)
        assert np.allclose(grads[name], numeric, rtol=1e-6, atol=1e-9), name


def test_whole_stack_mlp_with_layer_norm():
    spec = make_spec(
        model={
            "layers": [
                {"kind": "dense", "units": 6, "activation": "relu"},
                {"kind": "layer_norm"},
                {"kind": "dropout", "rate": 0.3},
                {"kind": "dense", "units": 5, "activation": "tanh"},
                {"kind": "layer_norm", "eps": 1e-3},
                {"kind": "dense"},
            ]
        }
    )
    layers = stack(spec, 4, 3)
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((7, 4)), rng.integers(0, 3, 7)
    masks = [(rng.random((7, 6)) >= 0.3) / 0.7]
    weights = np.array([1, 1, 1, 1, 1, 0, 0], dtype=float)
    _stack_gradients(build(layers, spec), _random_params(layers), x, y, weights, masks)


@pytest.mark.parametrize("side", ["post", "pre"])
@pytest.mark.parametrize("pool", ["rnn", "masked_mean"])
def test_whole_stack_sequence_with_layer_norm(pool, side):
    head = {"kind": "rnn", "units": 4} if pool == "rnn" else {"kind": "masked_mean"}
    spec = make_spec(
        data=SEQ_BASE["data"],
        model={
            "layers": [
                {"kind": "embedding", "dim": 3},
                head,
                {"kind": "layer_norm"},
                {"kind": "dropout", "rate": 0.3},
                {"kind": "dense"},
            ]
        },
    )
    layers = stack(spec, 7, 3)
    rng = np.random.default_rng(7)
    tokens, _, kept = pad_batch([rng.integers(1, 7, n) for n in (3, 5, 1, 4)], side, "post", 6)
    masks = [(rng.random((4, layers[1].width)) >= 0.3) / 0.7]
    _stack_gradients(
        build(layers, spec), _random_params(layers), tokens, rng.integers(0, 3, 4), kept.astype(np.float64), masks
    )


# Image layers and batch_norm (docs/design.md, "Images and BatchNorm")


def _layer(table, in_shape):
    """The resolved layer of one kind table reading `in_shape` (images (H, W, C) or features (F,)), through
    common.layers.stack, which fills its keys and resolves its pads."""
    images = len(in_shape) == 3
    tail = [{"kind": "flatten"}] if images and table["kind"] not in ("flatten", "global_avg_pool") else []
    spec = make_spec(data={"name": "digits", "images": images}, model={"layers": [table, *tail, {"kind": "dense"}]})
    return stack(spec, in_shape if images else in_shape[0], 3)[0]


def _images(shape, rows=3, seed=8):
    return np.random.default_rng(seed).standard_normal((rows, *shape))


@pytest.mark.parametrize(
    ("in_shape", "table", "pads"),
    [
        ((5, 5, 2), {"filters": 3, "kernel": 3, "padding": "same", "activation": "relu"}, (1, 1, 1, 1)),
        ((6, 7, 2), {"filters": 3, "kernel": 3, "stride": 2, "padding": "same", "activation": "tanh"}, (0, 1, 1, 1)),
        ((4, 5, 2), {"filters": 2, "kernel": 2, "padding": "same"}, (0, 1, 0, 1)),
        ((5, 6, 1), {"filters": 2, "kernel": 2, "stride": 2, "padding": "same"}, (0, 1, 0, 0)),
        ((5, 5, 2), {"filters": 2, "kernel": 3, "padding": "valid", "activation": "tanh"}, (0, 0, 0, 0)),
        ((7, 6, 2), {"filters": 2, "kernel": 3, "stride": 2, "padding": "valid"}, (0, 0, 0, 0)),
    ],
    ids=["same-s1", "same-s2-asym", "same-k2-asym", "same-k2-s2-bottom-only", "valid-s1", "valid-s2-unread-column"],
)
def test_conv2d(in_shape, table, pads):
    layer = _layer({"kind": "conv2d", **table}, in_shape)
    assert layer.pads == pads
    y, dx, _ = _check_layer(layer, _random_params([layer]), _images(in_shape))
    assert y.shape == (3, *layer.shape)
    if (layer.stride, layer.padding) == (2, "valid"):  # (6 − 3) // 2 + 1 = 2 windows never read column 5
        assert np.all(dx[:, :, 5] == 0.0) and np.all(dx[:, :, :5] != 0.0)


POOL_CASES = [
    ((4, 6, 3), {"size": 2}, (0, 0, 0, 0)),
    ((6, 5, 2), {"size": 3, "stride": 2, "padding": "same"}, (0, 1, 1, 1)),
    ((5, 5, 2), {"size": 2, "stride": 1, "padding": "same"}, (0, 1, 0, 1)),
    ((5, 4, 1), {"size": 3, "stride": 1}, (0, 0, 0, 0)),
]


@pytest.mark.parametrize("kind", ["max_pool", "avg_pool"])
@pytest.mark.parametrize(
    ("in_shape", "table", "pads"), POOL_CASES, ids=["valid-2", "same-3-s2-asym", "same-2-s1", "valid-3-s1-overlap"]
)
def test_pools(kind, in_shape, table, pads):
    layer = _layer({"kind": kind, **table}, in_shape)
    assert layer.pads == pads
    y, _, _ = _check_layer(layer, {}, _images(in_shape))
    assert y.shape == (3, *layer.shape) and np.all(np.isfinite(y))  # a −∞ pad never wins


def test_global_avg_pool_and_flatten():
    x = _images((3, 4, 2))
    y, _, _ = _check_layer(_layer({"kind": "global_avg_pool"}, (3, 4, 2)), {}, x)
    assert np.allclose(y, x.mean(axis=(1, 2)), rtol=1e-15, atol=0)
    y, dx, _ = _check_layer(_layer({"kind": "flatten"}, (3, 4, 2)), {}, x)
    assert y.shape == (3, 24) and dx.shape == x.shape


def test_conv2d_by_hand_same_pads_bottom_right():
    # 2×2 kernel, stride 1, "same" on 3×3: TF pads (0, 1) on both axes, the odd pixel at the bottom/right
    layer = _layer({"kind": "conv2d", "filters": 1, "kernel": 2, "padding": "same"}, (3, 3, 1))
    assert layer.pads == (0, 1, 0, 1)
    x = np.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    params = {"conv0.weight": np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(2, 2, 1, 1), "conv0.bias": np.array([0.5])}
    y, _ = LAYERS["conv2d"](layer, SPEC).forward(params, x, Flow())
    assert np.array_equal(y[0, :, :, 0], np.array([[37.0, 47.0, 21.0], [67.0, 77.0, 33.0], [23.0, 26.0, 9.0]]) + 0.5)


def test_conv2d_by_hand_same_at_stride_2():
    # 3×3 ones kernel, stride 2, "same" on 4×4: pads (0, 1), windows at rows/columns 0..2 and 2..4 (4 is the pad)
    layer = _layer({"kind": "conv2d", "filters": 1, "kernel": 3, "stride": 2, "padding": "same"}, (4, 4, 1))
    assert layer.pads == (0, 1, 0, 1)
    x = np.arange(1.0, 17.0).reshape(1, 4, 4, 1)
    params = {"conv0.weight": np.ones((3, 3, 1, 1)), "conv0.bias": np.zeros(1)}
    y, _ = LAYERS["conv2d"](layer, SPEC).forward(params, x, Flow())
    assert np.array_equal(y[0, :, :, 0], np.array([[54.0, 45.0], [72.0, 54.0]]))


def test_avg_pool_divides_by_the_real_pixels():
    layer = _layer({"kind": "avg_pool", "size": 3, "stride": 1, "padding": "same"}, (4, 4, 1))
    assert layer.pads == (1, 1, 1, 1)
    y, _ = LAYERS["avg_pool"](layer, SPEC).forward({}, np.arange(1.0, 17.0).reshape(1, 4, 4, 1), Flow())
    # corner: (1 + 2 + 5 + 6) / 4 real pixels (k² = 9 would give 14/9); edge: 24 / 6; inside: 54 / 9
    assert y[0, 0, 0, 0] == 3.5 and y[0, 0, 1, 0] == 4.0 and y[0, 1, 1, 0] == 6.0


def test_max_pool_pads_with_minus_infinity_and_breaks_ties_to_the_first():
    layer = _layer({"kind": "max_pool", "size": 2, "stride": 1, "padding": "same"}, (3, 3, 1))
    part = LAYERS["max_pool"](layer, SPEC)
    y, _ = part.forward({}, -np.arange(1.0, 10.0).reshape(1, 3, 3, 1), Flow())
    assert np.array_equal(y[0, :, :, 0], -np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]))
    tie = _layer({"kind": "max_pool", "size": 2}, (2, 2, 1))
    y, cache = LAYERS["max_pool"](tie, SPEC).forward({}, np.zeros((1, 2, 2, 1)), Flow())
    dx, _ = LAYERS["max_pool"](tie, SPEC).backward({}, cache, np.ones_like(y))
    assert np.array_equal(dx[0, :, :, 0], np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_flatten_order_is_nhwc():
    layer = _layer({"kind": "flatten"}, (2, 2, 3))
    h, w, c = np.meshgrid(np.arange(2), np.arange(2), np.arange(3), indexing="ij")
    y, _ = LAYERS["flatten"](layer, SPEC).forward({}, (100 * h + 10 * w + c)[None].astype(float), Flow())
    assert y[0].tolist() == [0, 1, 2, 10, 11, 12, 100, 101, 102, 110, 111, 112]


def test_dropout_native_on_images_draws_the_image_shape():
    layer = _layer({"kind": "dropout", "rate": 0.4}, (3, 3, 2))
    y, mask = LAYERS["dropout"](layer, SPEC).forward({}, np.ones((2, 3, 3, 2)), Flow(rng=np.random.default_rng(7)))
    assert np.array_equal(mask, (np.random.default_rng(7).random((2, 3, 3, 2)) >= 0.4) * (1.0 / 0.6))
    assert np.array_equal(y, mask)


@pytest.mark.parametrize("filler", [0, 2])
@pytest.mark.parametrize("shape", [(5,), (3, 4, 2)], ids=["features", "images"])
def test_batch_norm_training(shape, filler):
    layer = _layer({"kind": "batch_norm", "momentum": 0.8, "eps": 1e-3, "running_var": "unbiased"}, shape)
    real = np.arange(6) < 6 - filler
    x = 1.5 + 2.0 * _images(shape, rows=6)
    params = _random_params([layer])
    # the training case (filler rows carry loss weight 0), then any dy (the exact gradient of every output)
    y, _, _ = _check_layer(layer, params, x, {"real": real}, row_weights=real.astype(float))
    if filler:
        _check_layer(layer, params, x, {"real": real})
    values = x[real].reshape(-1, shape[-1])
    mu, var = values.mean(axis=0), values.var(axis=0)
    expected = params["bn0.scale"] * (x - mu) / np.sqrt(var + 1e-3) + params["bn0.offset"]
    assert np.allclose(y, expected, rtol=1e-13, atol=1e-13)  # filler rows too, with the real rows' statistics
    flow = Flow(real=real)
    LAYERS["batch_norm"](layer, SPEC).forward(params, x, flow)
    n = values.shape[0]
    assert np.allclose(flow.state["bn0.mean"], 0.8 * params["bn0.mean"] + 0.2 * mu, rtol=1e-14, atol=0)
    assert np.allclose(flow.state["bn0.var"], 0.8 * params["bn0.var"] + 0.2 * var * n / (n - 1), rtol=1e-14, atol=0)


@pytest.mark.parametrize("shape", [(5,), (3, 4, 2)], ids=["features", "images"])
def test_batch_norm_filler_rows_change_nothing_on_the_real_rows(shape):
    layer = _layer({"kind": "batch_norm"}, shape)
    part, params = LAYERS["batch_norm"](layer, SPEC), _random_params([layer])
    x = _images(shape, rows=6)
    real = np.arange(6) < 4
    dy = _images(shape, rows=6, seed=9) * real.reshape(-1, *[1] * len(shape))
    padded, keep = Flow(real=real), Flow(real=np.ones(4, bool))
    y_p, cache_p = part.forward(params, x, padded)
    y_k, cache_k = part.forward(params, x[:4], keep)
    (dx_p, grads_p), (dx_k, grads_k) = part.backward(params, cache_p, dy), part.backward(params, cache_k, dy[:4])
    assert np.allclose(y_p[:4], y_k, rtol=1e-14, atol=1e-14) and np.allclose(dx_p[:4], dx_k, rtol=1e-13, atol=1e-14)
    assert np.all(dx_p[4:] == 0.0)  # filler rows: dx = dy·γ/σ̂ = 0
    assert all(np.allclose(grads_p[k], grads_k[k], rtol=1e-13, atol=1e-14) for k in grads_k)
    assert all(np.array_equal(padded.state[k], keep.state[k]) for k in keep.state)


def test_batch_norm_evaluation_uses_the_running_statistics():
    layer = _layer({"kind": "batch_norm", "eps": 1e-3}, (3, 4, 2))
    params, x = _random_params([layer]), _images((3, 4, 2))
    params["bn0.var"] = np.array([0.5, 2.0])
    flow = Flow()
    y, _ = LAYERS["batch_norm"](layer, SPEC).forward(params, x, flow)
    expected = params["bn0.scale"] * (x - params["bn0.mean"]) / np.sqrt(params["bn0.var"] + 1e-3) + params["bn0.offset"]
    assert np.allclose(y, expected, rtol=1e-14, atol=1e-14) and flow.state == {}


@pytest.mark.parametrize(("running_var", "var"), [("biased", [1.15, 1.25]), ("unbiased", [0.9 + 1 / 3, 0.9 + 1.4 / 3])])
def test_batch_norm_running_statistics_after_one_step(running_var, var):
    # 4 real rows (n = 4 values per channel) and a filler row: means (2, 2), biased variances (2.5, 3.5), the
    # unbiased estimator 4/3 of them; from mean 0 and var 1 at momentum 0.9
    spec = make_spec(
        model={"layers": [{"kind": "batch_norm", "momentum": 0.9, "running_var": running_var}, {"kind": "dense"}]}
    )
    layers = stack(spec, 2, 3)
    params = init_params(layers, "glorot_uniform", 0, np.float64)
    x = np.array([[1.0, 2.0], [3.0, -1.0], [0.0, 4.0], [4.0, 3.0], [100.0, -100.0]])
    build(layers, spec).loss_and_grads(params, x, np.array([0, 1, 2, 0, 1]), np.array([1.0, 1.0, 1.0, 1.0, 0.0]))
    assert np.allclose(params["bn0.mean"], [0.2, 0.2], rtol=1e-15, atol=0)
    assert np.allclose(params["bn0.var"], var, rtol=1e-15, atol=0)
    factor = (params["bn0.var"] - 0.9) / (0.1 * np.array([2.5, 3.5]))
    assert np.allclose(factor, 4 / 3 if running_var == "unbiased" else 1.0, rtol=1e-14, atol=0)


CNN_TEST_STACK = [
    {"kind": "conv2d", "filters": 2, "kernel": 3, "padding": "same"},
    {"kind": "batch_norm", "momentum": 0.8},
    {"kind": "relu"},
    {"kind": "conv2d", "filters": 3, "kernel": 3, "stride": 2, "padding": "same", "activation": "tanh"},
    {"kind": "dropout", "rate": 0.3},
    {"kind": "avg_pool", "size": 2, "stride": 1, "padding": "same"},
    {"kind": "max_pool", "size": 2, "stride": 1},
    {"kind": "flatten"},
    {"kind": "dense", "units": 4, "activation": "relu"},
    {"kind": "batch_norm", "running_var": "unbiased"},
    {"kind": "dense"},
]


def _cnn(rows=6, seed=9):
    spec = make_spec(data={"name": "digits", "images": True}, model={"layers": CNN_TEST_STACK})
    layers = stack(spec, (5, 5, 1), 3)
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((rows, 5, 5, 1)), rng.integers(0, 3, rows)
    masks = [(rng.random((rows, *layers[4].shape)) >= 0.3) / 0.7]
    return build(layers, spec), _random_params(layers), x, y, masks


def test_whole_stack_cnn_with_batch_norm_and_filler_rows():
    model, params, x, y, masks = _cnn()
    _stack_gradients(model, params, x, y, np.array([1, 1, 1, 1, 0, 0], dtype=float), masks)


def test_whole_stack_cnn_filler_rows_equal_the_real_rows_alone():
    model, params, x, y, masks = _cnn()
    keep, pad = dict(params), dict(params)
    loss_k, grads_k = model.loss_and_grads(keep, x[:4], y[:4], np.ones(4), [masks[0][:4]])
    loss_p, grads_p = model.loss_and_grads(pad, x, y, np.array([1, 1, 1, 1, 0, 0], dtype=float), masks)
    assert loss_p == pytest.approx(loss_k, rel=1e-14)
    assert all(np.allclose(grads_p[k], grads_k[k], rtol=1e-12, atol=1e-15) for k in grads_k)
    assert all(np.allclose(pad[k], keep[k], rtol=1e-14, atol=0) for k in params if is_state(k))
    assert all(not np.array_equal(pad[k], params[k]) for k in params if is_state(k))  # the state was updated
