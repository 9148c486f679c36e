"""Images and BatchNorm in common/ (no framework): "same" pads, shapes, image data, state, the batch-statistics
rule, native layer settings and the causes common.explain names from them (docs/design.md, "Images and
BatchNorm")."""

import numpy as np
import pytest

from benchmarks.report import cause_lines
from common import layers
from common.datasets import load_dataset
from common.driver import canonical_init, check_plan, model_layers
from common.dropout import shared_masks
from common.errors import InputError
from common.explain import biases_before_batch_norm, explain
from common.layers.image import nhwc_to_nchw_order, same_pads
from common.layers.norm import convert_running_var, running_var_factor
from common.native import LAYER_DEFAULTS, layer_settings, symmetric_pads
from tests.support import CNN_STACK, cnn_spec, make_spec


@pytest.mark.parametrize(
    ("n", "k", "s", "pads"),
    [
        (8, 3, 1, (1, 1)),
        (8, 3, 2, (0, 1)),  # the odd pixel at the bottom/right: the stride-2 trap
        (7, 2, 1, (0, 1)),
        (5, 4, 3, (1, 1)),  # out 2: (2 − 1)·3 + 4 − 5 = 2
        (8, 2, 2, (0, 0)),
        (3, 5, 1, (2, 2)),
    ],
)
def test_same_pads_follow_tensorflows_rule(n, k, s, pads):
    assert same_pads(n, k, s) == pads


def test_cnn_stack_shapes_pads_and_names():
    spec = cnn_spec()
    stack = model_layers(spec, load_dataset(spec))
    assert [layer.shape for layer in stack] == [
        (8, 8, 4),
        (8, 8, 4),
        (8, 8, 4),
        (4, 4, 6),
        (4, 4, 6),
        (2, 2, 6),
        (24,),
        (16,),
        (16,),
        (16,),
        (16,),
        (10,),
    ]
    assert [layer.name for layer in stack if layer.name] == ["conv0", "bn0", "conv1", "layer0", "bn1", "layer1"]
    assert not stack[0].bias and stack[3].bias and not stack[7].bias
    assert stack[0].pads == (1, 1, 1, 1) and stack[3].pads == (0, 1, 0, 1) and stack[5].pads == (0, 0, 0, 0)
    assert (stack[1].momentum, stack[1].eps, stack[1].running_var) == (0.8, 1e-5, "biased")
    assert (stack[8].momentum, stack[8].running_var) == (0.9, "unbiased")
    assert stack[5].kernel == 2 and stack[5].stride == 2  # pool stride defaults to its size


def test_digits_images_are_the_flat_digits_reshaped_and_standardised_per_channel():
    flat = load_dataset(make_spec(data={"name": "digits", "standardize": False}))
    images = load_dataset(cnn_spec(data={"standardize": False}))
    assert images.train_x.shape == (1438, 8, 8, 1) and images.input_shape == (8, 8, 1)
    np.testing.assert_array_equal(images.train_x.reshape(1438, 64), flat.train_x)
    std = load_dataset(cnn_spec())
    pixels = images.train_x.reshape(-1)
    expected = (images.test_x - pixels.mean()) / pixels.std()  # one channel: every pixel of the training split
    np.testing.assert_allclose(std.test_x, expected, rtol=1e-12)


def test_npz_with_4d_x_is_read_as_images_with_per_channel_statistics(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3, 3, 2)) * np.array([1.0, 100.0]) + np.array([0.0, 50.0])
    np.savez(tmp_path / "img.npz", x=x, y=np.arange(40) % 2)
    stack = [{"kind": "conv2d", "filters": 2, "kernel": 2}, {"kind": "flatten"}, {"kind": "dense"}]
    spec = make_spec(data={"name": "npz", "path": str(tmp_path / "img.npz")}, model={"layers": stack})
    data = load_dataset(spec)
    assert data.is_image and data.input_shape == (3, 3, 2)
    for c in range(2):
        channel = data.train_x[..., c]
        assert abs(channel.mean()) < 1e-12 and abs(channel.std() - 1.0) < 1e-12
    assert model_layers(spec, data)[1].shape == (8,)


def test_batch_norm_state_is_recorded_never_regularized():
    spec = cnn_spec()
    init = canonical_init(spec, load_dataset(spec))
    np.testing.assert_array_equal(init["bn0.mean"], np.zeros(4))
    np.testing.assert_array_equal(init["bn1.var"], np.ones(16))
    assert init["conv1.weight"].shape == (3, 3, 4, 6)
    bound = 1.0 / np.sqrt(3 * 3 * 4)  # torch_default: kaiming_uniform(a=√5) over fan_in = k·k·C_in
    assert np.abs(init["conv1.weight"]).max() <= bound and np.abs(init["conv1.weight"]).max() > 0.9 * bound
    assert layers.is_state("bn0.var") and not layers.is_state("bn0.scale")
    assert layers.regularized("conv0.weight", False)
    assert not layers.regularized("bn0.scale", False) and layers.regularized("bn0.scale", True)
    assert not layers.regularized("bn0.mean", True) and not layers.regularized("bn0.var", True)


def test_a_batch_norm_after_dense_needs_two_real_rows_per_step_but_one_image_row_has_enough():
    dense_bn = [{"kind": "flatten"}, {"kind": "dense", "units": 4}, {"kind": "batch_norm"}, {"kind": "dense"}]
    one_row_last = cnn_spec(stack=dense_bn, batching={"batch_size": 479})  # 1438 = 3·479 + 1
    with pytest.raises(InputError, match=r"batching.batch_size.*step 4 .*1 real row.*last_batch = \"drop\""):
        check_plan(one_row_last, load_dataset(one_row_last))
    padded = cnn_spec(stack=dense_bn, batching={"batch_size": 479, "last_batch": "pad"})  # filler is not real
    with pytest.raises(InputError, match="step 4"):
        check_plan(padded, load_dataset(padded))
    dropped = cnn_spec(stack=dense_bn, batching={"batch_size": 479, "last_batch": "drop"})
    check_plan(dropped, load_dataset(dropped))
    conv_bn = [{"kind": "batch_norm"}, {"kind": "flatten"}, {"kind": "dense"}]  # 1 row = 64 values per channel
    image_row = cnn_spec(stack=conv_bn, batching={"batch_size": 479})
    check_plan(image_row, load_dataset(image_row))


def test_running_variance_conversion_between_estimators():
    x = np.array([1.0, 2.0, 4.0, 7.0])  # n = 4: biased 5.25, unbiased 7.0
    old, m = 2.0, 0.75
    biased = m * old + (1 - m) * x.var()
    unbiased = m * old + (1 - m) * x.var(ddof=1)
    assert convert_running_var(old, biased, m, running_var_factor("biased", "unbiased", 4)) == pytest.approx(unbiased)
    assert convert_running_var(old, unbiased, m, running_var_factor("unbiased", "biased", 4)) == pytest.approx(biased)
    assert running_var_factor("biased", "biased", 4) == 1.0


def test_flatten_permutation_maps_nhwc_to_torchs_nchw_order():
    spec = cnn_spec()
    flatten = model_layers(spec, load_dataset(spec))[6]
    x = np.arange(2 * 2 * 6).reshape(1, 2, 2, 6)  # NHWC values = their NHWC flat index
    np.testing.assert_array_equal(x.reshape(1, -1)[0][nhwc_to_nchw_order(flatten)], x.transpose(0, 3, 1, 2).ravel())


def test_dropout_masks_on_images_have_the_image_shape():
    spec = cnn_spec()
    masks = shared_masks(0, 1, model_layers(spec, load_dataset(spec)), 7, "float64")
    assert [m.shape for m in masks] == [(7, 4, 4, 6), (7, 16)]
    assert set(np.unique(masks[0])) == {0.0, 1.25}


def test_torch_native_same_padding_is_symmetric_and_refuses_an_even_kernel_that_changes_the_size():
    spec = cnn_spec()
    stack = model_layers(spec, load_dataset(spec))
    assert symmetric_pads(stack[0]) == (1, 1, 1, 1) and symmetric_pads(stack[3]) == (1, 1, 1, 1)
    even = cnn_spec(
        stack=[{"kind": "conv2d", "filters": 2, "kernel": 2, "stride": 2, "padding": "same"}, *CNN_STACK[6:]]
    )
    with pytest.raises(InputError, match=r"model.layers\[0\].kernel"):
        symmetric_pads(model_layers(even, load_dataset(even))[0])


def _record(backend: str, spec) -> tuple[dict, dict]:
    stack = model_layers(spec, load_dataset(spec))
    return {"spec": spec.to_dict(), "layers": layer_settings(spec, backend, stack)}, {}


def test_layer_settings_are_canonical_in_exact_mode_and_each_frameworks_own_in_native_mode():
    exact = cnn_spec()
    rows = {b: _record(b, exact)[0]["layers"] for b in ("numpy", "torch", "tf", "jax")}
    assert len({str(r) for r in rows.values()}) == 1
    assert rows["torch"] == {
        "bn_momentum": 0.8,
        "bn_eps": 1e-5,
        "running_var": "biased",
        "flatten": "nhwc",
        "same_padding": "tf",
    }
    native = cnn_spec(mode="native")
    assert _record("tf", native)[0]["layers"]["bn_momentum"] == LAYER_DEFAULTS["tf"]["bn_momentum"] == 0.99
    assert layer_settings(make_spec(), "torch", model_layers(make_spec(), load_dataset(make_spec()))) is None
    assert not explain({b: _record(b, exact) for b in ("numpy", "torch", "tf")})


def test_explain_names_every_layer_trap_between_native_torch_and_tf():
    native = cnn_spec(mode="native")
    causes = explain({b: _record(b, native) for b in ("torch", "tf")})
    assert {c["trap"] for c in causes} == {
        "bn-momentum-convention",
        "bn-eps-default",
        "bn-running-var",
        "flatten-order",
        "same-padding-stride2",
    }
    momentum = next(c for c in causes if c["trap"] == "bn-momentum-convention")
    assert "0.9 (torch)" in momentum["why"] and "0.99 (tf)" in momentum["why"]
    jax_tf = {c["trap"] for c in explain({b: _record(b, native) for b in ("jax", "tf")})}
    assert jax_tf == {"bn-eps-default"}  # flax and Keras share the decay 0.99, the biased estimator, NHWC, TF's same


def test_a_bias_is_followed_to_a_batch_norm_through_what_carries_its_shift():
    """CNN_STACK's conv1 (relu) reaches bn1 through dropout, max_pool, flatten and a bias-free dense: a change of its
    bias is the same shift in every row where relu is active and the pooled maximum kept (docs/design.md, "A bias
    before a batch_norm"); a tanh on the way, as a layer or an activation, ends the path."""
    full = {**CNN_STACK[3], "bias": True}
    spec = cnn_spec("adam-l2-bias", stack=[*CNN_STACK[:3], full, *CNN_STACK[4:]], dtype="float32").to_dict()
    route = ["relu", "dropout", "max_pool", "flatten", "dense"]
    assert biases_before_batch_norm(spec) == {"conv1.bias": route}  # the final dense reaches no batch_norm
    near, far = np.array([0.1, -0.2, 0.3, 0.0, 0.5, 0.2]), np.array([0.1, -0.2, 0.3, 0.0, 0.45, 0.2])
    records = {b: ({"spec": spec}, {"final/conv1.bias": v}) for b, v in (("numpy", near), ("tf", far))}
    (cause,) = explain(records)
    assert cause["trap"] == "bias-before-batch-norm"
    assert cause["why"].startswith(
        "conv1.bias reaches a batch_norm through relu, dropout, max_pool, flatten, dense (relu passes it where active)"
    )
    for stack in (
        [*CNN_STACK[:3], {**full, "activation": "tanh"}, *CNN_STACK[4:]],  # conv1's own activation
        [*CNN_STACK[:3], full, {"kind": "tanh"}, *CNN_STACK[4:]],  # a tanh layer after it
    ):
        assert biases_before_batch_norm(cnn_spec("adam-l2-bias", stack=stack).to_dict()) == {}


def test_cause_lines_show_causes_of_pairs_found_different_over_seeds():
    cause = {"a": "jax", "b": "torch", "trap": "bn-momentum-convention", "why": "w"}
    comparison = {
        "pairs": [{"a": "jax", "b": "torch", "divergent": False}],
        "statistical": [{"a": "jax", "b": "torch", "verdict": "different"}],
        "causes": [cause],
    }
    assert cause_lines(comparison) == ["cause [bn-momentum-convention] jax vs torch: w"]
    comparison["statistical"][0]["verdict"] = "equivalent within ±0.1"
    comparison["pairs"][0]["divergent"] = True  # native runs part step by step: over seeds they are not different
    assert cause_lines(comparison) == []


def test_explain_names_a_bias_before_batch_norm_that_parted_under_adam():
    stack = [{"kind": "conv2d", "filters": 2, "kernel": 3}, {"kind": "batch_norm"}, *CNN_STACK[6:]]
    spec = cnn_spec("adam-l2-bias", stack=stack, dtype="float32").to_dict()
    assert biases_before_batch_norm(spec) == {"conv0.bias": []}  # layer0 has bias = false in CNN_STACK
    near, far = np.array([0.1, -0.2]), np.array([0.1, 0.05])
    records = {b: ({"spec": spec}, {"final/conv0.bias": v}) for b, v in (("numpy", near), ("torch", far))}
    assert [c["trap"] for c in explain(records)] == ["bias-before-batch-norm"]
    records["torch"][1]["final/conv0.bias"] = near * (1 + 1e-6)  # within float32's rtol: no cause
    assert explain(records) == []
    sgd = cnn_spec(stack=stack, dtype="float32").to_dict()  # SGD moves it by lr·noise only
    assert explain({b: ({"spec": sgd}, {"final/conv0.bias": v}) for b, v in (("numpy", near), ("torch", far))}) == []
