"""Each oracle layer kind's backward against central finite differences in float64, and the whole-stack gradient
of layer_norm models (the MLP and sequence stacks are in test_numpy_backend.py, test_numpy_sequences.py)."""

import numpy as np
import pytest

from backends.numpy_backend.model import LAYERS, Flow, build
from common.layers import Layer, init_params, stack
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


def _check_layer(layer, params, x, flow_args=None, spec=SPEC, seed=5):
    """f = Σ y ⊙ r for a fixed random r: the analytic backward(r) against central differences in x and params."""
    part = LAYERS[layer.kind](layer, spec)

    def f(p, inp):
        y, _ = part.forward(p, inp, Flow(**(flow_args or {})))
        return float(np.sum(y * r))

    y, cache = part.forward(params, x, Flow(**(flow_args or {})))
    r = np.random.default_rng(seed).standard_normal(y.shape)
    dx, grads = part.backward(params, cache, r)
    assert set(grads) == {k for k in params if k.startswith(f"{layer.name}.")} if layer.name else grads == {}
    targets = dict(params) if x.dtype.kind == "i" else {**params, "<x>": x}
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
    _, grads = model.loss_and_grads(params, x, y, weights, masks)
    assert set(grads) == set(params)
    for name, value in params.items():
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
