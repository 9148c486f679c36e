"""common.spec.Spec: the typed, immutable view of a validated spec (attribute access for every schema key, frozen
tables, read-only free-form tables, the JSON round trip, variants by dataclasses.replace)."""

import dataclasses
import json
from collections.abc import Mapping

import pytest

from common.spec import SCHEMA, Field, Spec, apply_overrides, defaults, load_spec, typed, validate
from tests.support import make_spec, seq_spec

pytestmark = pytest.mark.framework_free  # no ML framework: runs once, in the torch env (tox.ini)

NORM_STACK_SECTIONS = {
    "model": {
        "layers": [
            {"kind": "dense", "units": 6, "activation": "relu"},
            {"kind": "layer_norm"},
            {"kind": "dropout", "rate": 0.25},
            {"kind": "dense", "units": 5},
            {"kind": "layer_norm", "eps": 1e-3},
            {"kind": "tanh"},
            {"kind": "dense"},
        ]
    },
    "regularization": {"dropout": 0.5},
}


def _keys(schema: dict, prefix: tuple[str, ...] = ()):
    """Every dotted key of SCHEMA as a tuple path, leaves only."""
    for key, sub in schema.items():
        if isinstance(sub, dict):
            yield from _keys(sub, (*prefix, key))
        else:
            assert isinstance(sub, Field)
            yield (*prefix, key)


def _frozen(value):
    """What the typed view holds for a JSON value: lists as tuples, tables as read-only mappings."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    return value


SPECS = {
    "default": lambda: validate(defaults()),
    "built-in run": lambda: load_spec(None).to_dict(),
    "sequence": lambda: seq_spec(
        model={"kind": "rnn"},
        sequence={"pad": "pre", "buckets": [4, 10]},
        data={"params": {"n": 90, "min_len": 2, "max_len": 10, "vocab": 16, "classes": 3}},
    ).to_dict(),
    "layer stack": lambda: make_spec(**NORM_STACK_SECTIONS).to_dict(),
    "doughnuts params": lambda: validate(
        apply_overrides(defaults(), ['data.name="doughnuts"', "data.params={n = 40, noise = 0.1, radii = [1.0, 3.0]}"])
    ),
}


@pytest.mark.parametrize("name", SPECS)
def test_every_schema_key_reads_as_an_attribute(name):
    plain = SPECS[name]()
    spec = typed(plain)
    assert isinstance(spec, Spec)
    paths = list(_keys(SCHEMA))
    assert len(paths) == 61  # every leaf of SCHEMA (a new key shows up here and in docs/design.md, "Spec")
    for path in paths:
        node, value = spec, plain
        for part in path:
            node, value = getattr(node, part), value[part]
        assert node == _frozen(value), ".".join(path)
        assert not isinstance(node, list | dict), ".".join(path)  # immutable containers only
    # each table is a dataclass with exactly the schema's keys, in the schema's order
    assert [f.name for f in dataclasses.fields(spec)] == list(SCHEMA)
    for table in (k for k, v in SCHEMA.items() if isinstance(v, dict)):
        assert [f.name for f in dataclasses.fields(getattr(spec, table))] == list(SCHEMA[table])


@pytest.mark.parametrize("name", SPECS)
def test_the_json_form_round_trips(name):
    plain = SPECS[name]()
    spec = typed(plain)
    assert spec.to_dict() == plain
    assert json.loads(json.dumps(spec.to_dict())) == plain  # plain JSON types only (lists, dicts)
    assert typed(validate(spec.to_dict())) == spec  # a record's spec validates again to the same view


def test_the_view_is_immutable():
    spec = make_spec(data={"name": "doughnuts", "params": {"n": 40, "radii": [1.0, 3.0]}}, **NORM_STACK_SECTIONS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.optimizer.lr = 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.sequence.buckets = (3,)
    with pytest.raises(TypeError):
        spec.data.params["n"] = 4  # free-form tables are read-only mappings
    with pytest.raises(TypeError):
        spec.model.layers[0]["units"] = 2  # so are the layer tables
    with pytest.raises(AttributeError):
        spec.model.hidden.append(4)  # lists are tuples
    assert isinstance(spec.data.params, Mapping) and spec.data.params["radii"] == (1.0, 3.0)
    assert spec.model.layers[1] == {"kind": "layer_norm"}


def test_replace_makes_a_variant_and_leaves_the_original():
    spec = make_spec()
    variant = dataclasses.replace(spec, seed=7, optimizer=dataclasses.replace(spec.optimizer, lr=0.5))
    assert (variant.seed, variant.optimizer.lr) == (7, 0.5)
    assert (spec.seed, spec.optimizer.lr) == (0, 0.01)
    assert variant.optimizer.name == spec.optimizer.name and variant.data is spec.data  # untouched tables shared
    assert variant != spec and dataclasses.replace(variant, seed=0, optimizer=spec.optimizer) == spec
    assert variant.to_dict() == {**spec.to_dict(), "seed": 7, "optimizer": {**spec.to_dict()["optimizer"], "lr": 0.5}}
    # a variant through an override path goes through validation again
    assert typed(validate(apply_overrides(spec.to_dict(), ["seed=7", "optimizer.lr=0.5"]))) == variant


def test_load_spec_returns_the_typed_view():
    spec = load_spec(None, ["optimizer.lr=0.05"])
    assert isinstance(spec, Spec) and spec.optimizer.lr == 0.05 and spec.dtype == "float64"
    assert spec.optimizer.momentum == 0.9 and spec.regularization.dropout == 0.5
