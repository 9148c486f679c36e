"""common.layers: shorthand expansion, resolved stacks, canonical names and init, regularized roles, shared masks."""

import numpy as np
import pytest

from common import InputError
from common.dropout import shared_masks
from common.layers import init_params, param_shapes, regularized, stack, tables
from common.spec import is_sequence, typed, validate
from tests.support import make_spec

pytestmark = pytest.mark.framework_free  # no ML framework: runs once, in the torch env (tox.ini)

NORM_STACK = [
    {"kind": "dense", "units": 6, "activation": "relu"},
    {"kind": "layer_norm"},
    {"kind": "dropout"},
    {"kind": "dense", "units": 5},
    {"kind": "layer_norm", "eps": 1e-3},
    {"kind": "tanh"},
    {"kind": "dense"},
]


def _kinds(layers):
    return [(layer.kind, layer.name, layer.in_width, layer.width) for layer in layers]


def test_mlp_shorthand_expands_to_dense_dropout_pairs_and_a_logit_layer():
    spec = make_spec(model={"hidden": [8, 4], "activation": "tanh"}, regularization={"dropout": 0.2})
    layers = stack(spec, 4, 3)
    assert _kinds(layers) == [
        ("dense", "layer0", 4, 8),
        ("dropout", "", 8, 8),
        ("dense", "layer1", 8, 4),
        ("dropout", "", 4, 4),
        ("dense", "layer2", 4, 3),
    ]
    assert [layer.activation for layer in layers if layer.kind == "dense"] == ["tanh", "tanh", "none"]
    assert {layer.rate for layer in layers if layer.kind == "dropout"} == {0.2}


def test_mlp_shorthand_without_dropout_has_no_dropout_layers():
    assert [t["kind"] for t in tables(make_spec(model={"hidden": [8]}))] == ["dense", "dense"]


def test_sequence_shorthands():
    pool = make_spec(data={"name": "sequences"}, model={"kind": "seq_pool", "hidden": [6], "embed_dim": 3})
    rnn = make_spec(data={"name": "sequences"}, model={"kind": "rnn", "hidden": [7]}, regularization={"dropout": 0.5})
    assert _kinds(stack(pool, 20, 2)) == [
        ("embedding", "embed", 20, 3),
        ("masked_mean", "", 3, 3),
        ("dense", "layer0", 3, 6),
        ("dense", "layer1", 6, 2),
    ]
    assert _kinds(stack(rnn, 20, 2)) == [
        ("embedding", "embed", 20, 8),
        ("rnn", "rnn", 8, 7),
        ("dropout", "", 7, 7),
        ("dense", "layer0", 7, 2),
    ]
    assert is_sequence(pool) and is_sequence(rnn) and not is_sequence(make_spec())


def test_explicit_layers_number_each_kind_and_fill_defaults():
    spec = make_spec(model={"layers": NORM_STACK, "norm_eps": 1e-4}, regularization={"dropout": 0.25})
    layers = stack(spec, 4, 3)
    assert _kinds(layers) == [
        ("dense", "layer0", 4, 6),
        ("layer_norm", "ln0", 6, 6),
        ("dropout", "", 6, 6),
        ("dense", "layer1", 6, 5),
        ("layer_norm", "ln1", 5, 5),
        ("tanh", "", 5, 5),
        ("dense", "layer2", 5, 3),
    ]
    assert [layer.eps for layer in layers if layer.kind == "layer_norm"] == [1e-4, 1e-3]
    assert layers[2].rate == 0.25
    assert param_shapes(layers) == {
        "layer0.weight": (4, 6),
        "layer0.bias": (6,),
        "ln0.scale": (6,),
        "ln0.offset": (6,),
        "layer1.weight": (6, 5),
        "layer1.bias": (5,),
        "ln1.scale": (5,),
        "ln1.offset": (5,),
        "layer2.weight": (5, 3),
        "layer2.bias": (3,),
    }


def test_a_resolved_spec_validates_to_itself():
    spec = make_spec(model={"layers": NORM_STACK})
    assert validate(spec.to_dict()) == spec.to_dict() and typed(validate(spec.to_dict())) == spec
    assert spec.model.layers[1] == {"kind": "layer_norm"}  # defaults are filled by stack, not stored


def test_last_dense_units_must_be_the_classes():
    spec = make_spec(model={"layers": [{"kind": "dense", "units": 4}]})
    with pytest.raises(InputError, match=r"model.layers\[0\].units.*3 units"):
        stack(spec, 4, 3)
    assert stack(spec, 4, 4)[-1].width == 4


def test_init_of_layer_norm_is_ones_and_zeros_and_dense_keeps_its_stream():
    layers = stack(make_spec(model={"layers": NORM_STACK}), 4, 3)
    params = init_params(layers, "torch_default", 3, np.float32)
    assert np.array_equal(params["ln0.scale"], np.ones(6, np.float32))
    assert np.array_equal(params["ln1.offset"], np.zeros(5, np.float32))
    assert params["layer1.weight"].dtype == np.float32
    # dense layer i draws from default_rng([seed, 4, i]), weight then bias, U(±1/√fan_in) under torch_default
    rng = np.random.default_rng([3, 4, 1])
    assert np.array_equal(
        params["layer1.weight"], rng.uniform(-1 / np.sqrt(6), 1 / np.sqrt(6), (6, 5)).astype(np.float32)
    )


@pytest.mark.parametrize(
    "name, plain, with_bias",
    [
        ("layer0.weight", True, True),
        ("layer3.bias", False, True),
        ("ln0.scale", False, True),
        ("ln2.offset", False, True),
        ("embed.weight", True, True),
        ("rnn.input.weight", True, True),
        ("rnn.recurrent.weight", True, True),
        ("rnn.bias", False, True),
    ],
)
def test_kernels_are_always_regularized_bias_like_vectors_only_on_request(name, plain, with_bias):
    assert regularized(name, False) is plain
    assert regularized(name, True) is with_bias


def test_shared_masks_follow_the_dropout_layers_and_a_zero_rate_draws_nothing():
    table = [
        {"kind": "dense", "units": 6},
        {"kind": "dropout", "rate": 0.5},
        {"kind": "dense", "units": 5},
        {"kind": "dropout", "rate": 0.0},
        {"kind": "dense"},
    ]
    layers = stack(make_spec(model={"layers": table}), 4, 3)
    masks = shared_masks(7, 2, layers, 9, np.float64)
    assert [m.shape for m in masks] == [(9, 6), (9, 5)]
    assert set(np.unique(masks[0])) <= {0.0, 2.0} and np.array_equal(masks[1], np.ones((9, 5)))
    keep = np.random.default_rng([7, 3, 2, 0]).random((9, 6)) >= 0.5
    assert np.array_equal(masks[0], keep * 2.0)
    assert shared_masks(7, 2, stack(make_spec(), 4, 3), 9, np.float64) is None


def test_a_rows_shared_masks_do_not_depend_on_the_batch_size_in_any_layer():
    """A pad batch (3 real rows + 4 filler) gives its real rows the masks a keep batch of 3 gives them."""
    table = [{"kind": "dropout", "rate": 0.3}, {"kind": "dense", "units": 5}, {"kind": "dropout", "rate": 0.6}]
    layers = stack(make_spec(model={"layers": [*table, {"kind": "dense"}]}), 4, 3)
    ragged, padded = shared_masks(1, 9, layers, 3, np.float64), shared_masks(1, 9, layers, 7, np.float64)
    for small, full in zip(ragged, padded, strict=True):
        np.testing.assert_array_equal(full[:3], small)
    assert not np.array_equal(padded[0][:, :4], padded[1][:, :4])  # the layers draw from different streams
