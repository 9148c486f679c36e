"""common.attribution on hand-made records (docs/design.md, "parity explain"): which variants run, and the shares,
spreads and first steps it reports, against values worked out by hand."""

import numpy as np
import pytest

from common.attribution import attribute, relevant, variant_spec, variants
from common.idioms import NATIVE_SET, on
from tests.support import make_spec

PAIR = ("torch", "tf")


@pytest.fixture
def spec():
    # the built-in experiment's knobs: dropout, coupled weight decay, SGD momentum, float64
    return make_spec(
        dtype="float64",
        regularization={"dropout": 0.5, "weight_decay": 0.001},
        optimizer={"momentum": 0.9},
        train={"epochs": 2},
    )


def test_relevant_idioms_are_those_the_spec_gives_something_to_change(spec):
    ids = [i.id for i in relevant(spec, PAIR)]
    assert ids == [
        "order",
        "default_init",
        "dropout_rng",
        "l2_as_written",
        "bias_decay",
        "float32_hyper",
        "fit_epoch_loss",
    ]
    # Adam brings Keras's ε (tf only); torch vs jax never sees it
    adam = make_spec(optimizer={"name": "adam"})
    assert "keras_adam_eps" in [i.id for i in relevant(adam, PAIR)]
    assert "keras_adam_eps" not in [i.id for i in relevant(adam, ("torch", "jax"))]


def test_random_variants_run_k_seeds_and_deterministic_ones_one(spec):
    runs = {v.key: v for v in variants(spec, [PAIR], 4)}
    assert runs["exact"].seeds == (0,) and runs["exact+l2_as_written"].seeds == (0,)
    assert runs["exact+order"].seeds == (0, 1, 2, 3) and runs["native"].seeds == (0, 1, 2, 3)
    assert runs["native-l2_as_written"].idioms == NATIVE_SET - {"l2_as_written"}
    one = variant_spec(spec, runs["exact+l2_as_written"], 0)
    assert one.mode == "exact" and on(one, "l2_as_written") and not on(one, "order")
    assert len(runs) == 2 + 2 * 7


def _rec(test_loss: float, test_acc: float = 0.5, losses=(1.0, 0.9, 0.8)) -> dict:
    return {
        "spec": {"dtype": "float64"},
        "steps": [{"loss": v} for v in losses],
        "epochs": [{"test_loss": test_loss, "test_acc": test_acc}],
    }


def test_shares_spreads_and_first_steps(spec):
    runs = variants(spec, [PAIR], 4)
    records = {"torch": {}, "tf": {}}
    noise = {
        "order": [0.01, -0.01, 0.03, -0.03],  # mean 0; std (ddof 1) = √(0.002/3) = 0.0258199
        # mean 0.055, std 0.00577, SE 0.00289; t(0.975, 3) = 3.182: the interval ±0.0092 excludes the mean
        "default_init": [0.05, 0.06, 0.05, 0.06],
    }

    def put(key, seed, gap, losses_b=(1.0, 0.9, 0.8)):
        records["torch"][key, seed] = _rec(1.0 + gap)
        records["tf"][key, seed] = _rec(1.0, losses=losses_b)

    for v in runs:
        for k, seed in enumerate(v.seeds):
            if v.key == "native":
                put(v.key, seed, 0.10)
            elif v.key == "native-l2_as_written":
                put(v.key, seed, 0.06)  # off = 0.10 − 0.06 = 0.04
            elif v.key == "exact+l2_as_written":
                put(v.key, seed, 0.05, losses_b=(1.0, 0.9, 0.7))  # on = 0.05; apart from step 3
            elif v.key.startswith("native-"):
                put(v.key, seed, 0.10)  # off = 0
            elif v.key in ("exact+order", "exact+default_init"):
                put(v.key, seed, noise[v.key.removeprefix("exact+")][k])
            else:
                put(v.key, seed, 0.0)
    result = attribute(spec, PAIR, runs, records)
    rows = {r["id"]: r for r in result["idioms"]}
    assert result["native_gap"]["test_loss"]["mean"] == pytest.approx(0.10, abs=1e-12)
    assert result["native_gap"]["test_loss"]["se"] == pytest.approx(0.0, abs=1e-12)
    l2 = rows["l2_as_written"]
    assert l2["on"]["test_loss"] == pytest.approx(0.05) and l2["off"]["test_loss"] == pytest.approx(0.04)
    assert l2["share"]["test_loss"] == pytest.approx(0.45)  # ½(0.05 + 0.04) / 0.10
    assert l2["share"]["test_acc"] is None  # no accuracy gap to share
    assert l2["first_step"] == 3 and l2["end_step_loss_gap"] == pytest.approx(0.1)
    assert l2["class"] == "semantic" and l2["touches"] == ["tf"]  # a coupled wd as written: Keras L2(wd)
    assert rows["order"]["class"] == "noise"
    assert rows["order"]["spread"]["test_loss"] == pytest.approx(np.sqrt(0.002 / 3))
    assert rows["bias_decay"]["first_step"] is None and rows["bias_decay"]["share"]["test_loss"] == pytest.approx(0.0)
    # a random idiom whose draws move the mean is semantic, ranked by its mean shift with the deterministic ones
    assert rows["default_init"]["class"] == "semantic" and "first_step" not in rows["default_init"]
    assert rows["default_init"]["on"]["test_loss"] == pytest.approx(0.055)
    assert result["ranking"]["semantic"][:2] == ["default_init", "l2_as_written"]
    assert result["ranking"]["noise"][0] == "order"
    assert result["unexplained"]["test_loss"] == pytest.approx(-0.005)  # 0.10 − (0.05 + 0.055 + 0 (order) + …)
