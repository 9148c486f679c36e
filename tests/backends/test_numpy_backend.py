"""The oracle itself: its whole-stack gradients against finite differences, its updates against the written
formulas, and the layer_norm stack and the CNN (tests.support.cnn_spec) through the driver."""

import numpy as np
import pytest

from backends.numpy_backend.model import build
from backends.numpy_backend.optim import CanonicalOptimizer
from common.layers import init_params, is_state, stack
from common.regularization import Regularization
from tests.support import CNN_RUNS, CNN_STACK, LAYER_NORM_STACK, cnn_spec, make_spec, run_in_process

pytestmark = pytest.mark.framework_free  # no ML framework: runs once, in the torch env (tox.ini)


def _mlp(hidden, activation, init, dropout=0.0):
    spec = make_spec(
        model={"hidden": hidden, "activation": activation, "init": init}, regularization={"dropout": dropout}
    )
    layers = stack(spec, 4, 3)
    return build(layers, spec), init_params(layers, init, 0, np.float64)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_gradients_match_finite_differences(activation):
    rng = np.random.default_rng(0)
    model, params = _mlp([5, 3], activation, "torch_default", dropout=0.3)
    x, y = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)
    weights = np.array([1, 1, 1, 1, 0, 0], dtype=float)
    masks = [(rng.random((6, 5)) > 0.3) / 0.7, (rng.random((6, 3)) > 0.3) / 0.7]
    _, grads = model.loss_and_grads(params, x, y, weights, masks)
    h = 1e-6
    for name, w in params.items():
        numeric = np.zeros_like(w)
        for idx in np.ndindex(w.shape):
            for sign in (1, -1):
                shifted = {k: v.copy() for k, v in params.items()}
                shifted[name][idx] += sign * h
                numeric[idx] += sign * model.loss_and_grads(shifted, x, y, weights, masks)[0] / (2 * h)
        assert np.allclose(grads[name], numeric, rtol=1e-6, atol=1e-8), name


def test_padded_rows_do_not_change_loss_or_gradients():
    rng = np.random.default_rng(1)
    model, params = _mlp([5], "relu", "glorot_uniform")
    x, y = rng.normal(size=(4, 4)), rng.integers(0, 3, 4)
    loss, grads = model.loss_and_grads(params, x[:3], y[:3], np.ones(3))
    loss_p, grads_p = model.loss_and_grads(params, x, y, np.array([1.0, 1.0, 1.0, 0.0]))
    assert np.isclose(loss, loss_p, rtol=1e-14)
    assert all(np.allclose(grads[k], grads_p[k], rtol=1e-13, atol=1e-16) for k in grads)


def _one_tensor_steps(spec, grads_seq, w0):
    opt = CanonicalOptimizer(spec, Regularization.from_spec(spec))
    params = {"layer0.weight": np.array(w0, dtype=float)}
    out = []
    for g in grads_seq:
        opt.step(params, {"layer0.weight": np.array(g, dtype=float)})
        out.append(params["layer0.weight"].copy())
    return out


def test_sgd_nesterov_with_coupled_decay_unrolled_by_hand():
    spec = make_spec(
        optimizer={"lr": 0.1, "momentum": 0.9, "nesterov": True}, regularization={"weight_decay": 0.01, "l2": 0.02}
    )
    w1, w2 = _one_tensor_steps(spec, [[1.0], [2.0]], [0.5])
    c = 0.01 + 2 * 0.02
    g1 = 1.0 + c * 0.5
    b1 = g1
    assert np.isclose(w1[0], 0.5 - 0.1 * (g1 + 0.9 * b1))
    g2 = 2.0 + c * w1[0]
    b2 = 0.9 * b1 + g2
    assert np.isclose(w2[0], w1[0] - 0.1 * (g2 + 0.9 * b2))


def test_adamw_first_step_and_l1_sign():
    spec = make_spec(
        optimizer={"name": "adamw", "lr": 0.1}, regularization={"weight_decay": 0.5, "decay": "decoupled", "l1": 0.3}
    )
    (w1,) = _one_tensor_steps(spec, [[0.0, 0.2]], [0.0, -1.0])
    # g = ∇ + (l1/n)·sign(w): sign(0) = 0, so the zero weight has g = 0 and only decays (0 stays 0)
    assert w1[0] == 0.0
    g = 0.2 + 0.3 / 2 * -1.0
    m_hat, v_hat = g, g * g
    assert np.isclose(w1[1], -1.0 - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8) - 0.1 * 0.5 * -1.0)


def test_layer_norm_scale_and_offset_follow_regularize_bias():
    # γ and β are bias-like: only regularize_bias puts them under l2 (common.layers.regularized)
    for regularize_bias in (False, True):
        spec = make_spec(optimizer={"lr": 0.1}, regularization={"l2": 0.5, "regularize_bias": regularize_bias})
        opt = CanonicalOptimizer(spec, Regularization.from_spec(spec))
        params = {"ln0.scale": np.array([2.0]), "ln0.offset": np.array([1.0]), "layer0.weight": np.array([1.0])}
        opt.step(params, {k: np.zeros(1) for k in params})
        shrink = 1.0 - 0.1 * 2 * 0.5
        assert params["layer0.weight"][0] == pytest.approx(shrink)
        assert params["ln0.scale"][0] == pytest.approx(2.0 * shrink if regularize_bias else 2.0)
        assert params["ln0.offset"][0] == pytest.approx(shrink if regularize_bias else 1.0)


@pytest.mark.parametrize("mode", ["exact", "native"])
def test_layer_norm_stack_trains_through_the_driver(mode):
    spec = make_spec(
        dtype="float64",
        mode=mode,
        model={"layers": LAYER_NORM_STACK},
        optimizer={"name": "adam", "lr": 0.01},
        regularization={"dropout": 0.3, "l2": 1e-3},
        batching={"batch_size": 16},
        train={"epochs": 8},
    )
    rec, arrays = run_in_process("numpy", spec)
    assert {f"final/ln{i}.{s}" for i in (0, 1) for s in ("scale", "offset")} <= set(arrays)
    assert not np.allclose(arrays["final/ln1.scale"], 1.0)  # γ is trained
    losses = [e["train_loss"] for e in rec["epochs"]]
    assert np.all(np.isfinite([s["loss"] for s in rec["steps"]]))
    assert losses[-1] < 0.5 * losses[0], losses
    assert rec["epochs"][-1]["test_acc"] > 0.8


def test_batch_norm_state_is_never_trained_nor_regularized():
    spec = make_spec(
        optimizer={"lr": 0.1, "momentum": 0.9},
        regularization={"l2": 0.5, "l1": 0.1, "weight_decay": 0.1, "regularize_bias": True},
    )
    opt = CanonicalOptimizer(spec, Regularization.from_spec(spec))
    params = {"bn0.scale": np.array([2.0]), "bn0.offset": np.array([1.0]), "bn0.mean": np.array([3.0])}
    params["bn0.var"] = np.array([4.0])
    opt.step(params, {"bn0.scale": np.zeros(1), "bn0.offset": np.zeros(1)})  # the stack gives no state gradient
    assert params["bn0.mean"][0] == 3.0 and params["bn0.var"][0] == 4.0
    assert params["bn0.scale"][0] != 2.0 and params["bn0.offset"][0] != 1.0  # regularize_bias: scale, offset
    assert set(opt.state) == {"bn0.scale", "bn0.offset"}


@pytest.mark.parametrize("run", sorted(CNN_RUNS))
def test_cnn_trains_through_the_driver_and_records_the_state(run):
    rec, arrays = run_in_process("numpy", cnn_spec(run))
    losses = arrays["losses"]
    assert losses.shape == (206,) and np.all(np.isfinite(losses))  # 1438 rows at batch 7: the last batch has 3
    assert losses[-20:].mean() < 0.8 * losses[:20].mean(), (losses[:20].mean(), losses[-20:].mean())
    assert rec["epochs"][-1]["test_acc"] > 0.5
    for i in (0, 1):
        assert np.array_equal(arrays[f"init/bn{i}.mean"], np.zeros_like(arrays[f"init/bn{i}.mean"]))
        assert np.array_equal(arrays[f"init/bn{i}.var"], np.ones_like(arrays[f"init/bn{i}.var"]))
        assert not np.allclose(arrays[f"final/bn{i}.mean"], 0.0) and not np.allclose(arrays[f"final/bn{i}.var"], 1.0)
    assert {k for k in arrays if k.startswith("final/")} == {f"final/{k}" for k in cnn_params(run)}


def cnn_params(run: str = "sgd-momentum-wd"):
    """The canonical names of the CNN's parameters and state."""
    conv1 = CNN_RUNS[run].get("model", {}).get("layers", CNN_STACK)[3]  # the Adam run drops its bias
    return [  # conv0 and layer0 feed a batch_norm: no bias (tests.support.CNN_STACK)
        "conv0.weight",
        "conv1.weight",
        *(["conv1.bias"] if conv1.get("bias", True) else []),
        *(f"bn{i}.{s}" for i in (0, 1) for s in ("scale", "offset", "mean", "var")),
        "layer0.weight",
        "layer1.weight",
        "layer1.bias",
    ]


@pytest.mark.parametrize("run", sorted(CNN_RUNS))
def test_cnn_pad_equals_keep(run):
    (_, keep), (_, pad) = (run_in_process("numpy", cnn_spec(run, batching={"last_batch": b})) for b in ("keep", "pad"))
    np.testing.assert_allclose(pad["losses"], keep["losses"], rtol=0, atol=1e-12)
    for key in (k for k in keep if k.startswith("final/")):
        np.testing.assert_allclose(pad[key], keep[key], rtol=0, atol=1e-12, err_msg=key)
    assert any(is_state(k.split("/", 1)[1]) for k in keep if k.startswith("final/"))
