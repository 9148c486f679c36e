"""The trap catalogue (common.traps; docs/design.md, "Traps") against the installed frameworks, and the matrix.

`test_probe_matches_catalogue[<trap>-<fw>]` imports `fw`'s probe module in this process (skipped when `fw` is not
installed) and asserts that what the probe measures is the catalogue's expected value, within the trap's own
rtol/atol (0 = exact; each non-zero tolerance is justified in common/traps/catalogue.py's docstring). When a
framework upgrade changes one of these behaviours, the test named after the trap fails: update the catalogue (and
check the conversion it names) rather than the probe.

The judge (matching, divergence, classifiers) is tested alone against the numpy references, and the matrix
builder, markdown and exit codes on fake measurements (no framework needed); the full
`parity conformance` command runs only where all three frameworks are installed (marked `cross`).
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import conformance
from benchmarks.cli import main
from benchmarks.conformance_worker import PROBE_MODULES, run_probes
from common import traps as T
from common.frameworks import REGISTRY
from common.traps import CATALOGUE, FRAMEWORKS, TRAPS, Trap, for_framework, matches, normalise
from tests.support import needs_all_frameworks

ROOT = Path(__file__).resolve().parent.parent
CASES = [(t.id, fw) for t in CATALOGUE for fw in FRAMEWORKS if fw in t.expected]


def probes_of(framework: str):
    for package in REGISTRY[framework].imports:
        pytest.importorskip(package)
    return importlib.import_module(PROBE_MODULES[framework])


# ------------------------------------------------------------------------------------ the catalogue itself
def test_catalogue_is_large_and_well_formed():
    assert len(CATALOGUE) >= 25
    assert len(TRAPS) == len(CATALOGUE), "trap ids must be unique"
    for trap in CATALOGUE:
        assert trap.expected and set(trap.expected) <= set(FRAMEWORKS), trap.id
        assert all(isinstance(v, dict) and v for v in trap.expected.values()), trap.id
        assert trap.conversion and trap.title and trap.section, trap.id
        json.dumps(normalise(trap.expected)), json.dumps(normalise(trap.canonical))
        for key in trap.compare:  # a compared key must be measured by some framework or be canonical
            assert any(key in v for v in trap.expected.values()) or key in (trap.canonical or {}), (trap.id, key)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_trap_has_exactly_one_probe(framework):
    module = probes_of(framework)
    assert set(module.PROBES) == {t.id for t in for_framework(framework)}
    assert set(module.versions())


@pytest.mark.parametrize("trap_id, framework", CASES, ids=[f"{t}-{fw}" for t, fw in CASES])
def test_probe_matches_catalogue(trap_id, framework):
    trap = TRAPS[trap_id]
    measured = normalise(probes_of(framework).PROBES[trap_id]())
    json.dumps(measured)
    assert matches(trap.expected[framework], measured, trap.rtol, trap.atol), (
        f"{framework} no longer behaves as common.traps records for '{trap_id}': measured {measured}, "
        f"expected {trap.expected[framework]} (rtol {trap.rtol}, atol {trap.atol})"
    )


# --------------------------------------------------------------------------------- matching and divergence
def test_matches_checks_expected_keys_types_and_tolerance():
    assert matches({"a": 1.0}, {"a": 1.0 + 1e-13, "extra": "ignored"}, rtol=1e-12)
    assert not matches({"a": 1.0}, {"a": 1.001}, rtol=1e-6)
    assert not matches({"a": 1.0}, {"b": 1.0})
    assert not matches({"flag": True}, {"flag": 1}), "a bool never equals a number"
    assert matches({"v": [1, 2]}, {"v": [1, 2]}) and not matches({"v": [1, 2]}, {"v": [1, 2, 3]})
    assert matches({"x": "nan"}, normalise({"x": float("nan")}))


def test_diverges_compares_keys_across_frameworks_and_the_canonical_value():
    trap = Trap("t", "t", "s", {"torch": {"k": 1}, "tf": {"k": 1}}, "c", compare=("k",))
    assert trap.diverges({"torch": {"k": 1}, "tf": {"k": 1}}) is False
    assert trap.diverges({"torch": {"k": 1}, "tf": {"k": 2}}) is True
    assert trap.diverges({"torch": {"k": 1}}) is None, "one value cannot diverge"
    canonical = Trap("t", "t", "s", {"tf": {"k": 1}}, "c", compare=("k",), canonical={"k": 0})
    assert canonical.diverges({"tf": {"k": 1}}) is True


def test_diverges_alone_whole_measurements_and_tolerance():
    assert T.diverges({"torch": {"a": 1}, "jax": {"a": 1}}) is False, "no compare keys: whole measurements"
    assert T.diverges({"torch": {"a": 1}, "jax": {"a": 2}}) is True
    assert T.diverges({"torch": {"k": 1.0}, "tf": {"k": 1.0 + 1e-9}}, ("k",), rtol=1e-6) is False
    assert T.diverges({"torch": {"k": 1.0}, "tf": {"k": 1.0 + 1e-9}}, ("k",)) is True
    assert T.diverges({"torch": {"other": 1}}, ("k",), canonical={"k": 0}) is None, "canonical alone: one value"


def test_normalise_makes_measurements_json_able():
    value = T.normalise(
        {
            1: (np.float32(0.5), np.int64(3)),
            "b": np.bool_(True),
            "x": np.array([1.0, np.inf]),
            "n": float("nan"),
            "m": -float("inf"),
        }
    )
    assert value == {"1": [0.5, 3], "b": True, "x": [1.0, "inf"], "n": "nan", "m": "-inf"}
    assert type(value["b"]) is bool and type(value["1"][1]) is int
    json.dumps(value)


# ---------------------------------------------------------------------- the judge's classifiers, alone
def test_classifiers_name_their_reference_values():
    per_row, w = np.array([1.0, 2.0, 3.0, 4.0]), T.LOSS_MASK.astype(np.float64)
    assert T.classify_reduction(per_row, per_row, w) == "per_example"
    assert T.classify_reduction((per_row * w).sum() / w.sum(), per_row, w) == "weighted_mean"
    assert T.classify_reduction((per_row * w).sum() / 4, per_row, w) == "sum_over_n"
    assert T.classify_reduction(per_row.mean(), per_row, w) == "plain_mean"
    assert T.classify_reduction(99.0, per_row, w) == "other"
    assert T.classify_decay(T.sgd_decay_reference(coupled=True)) == "coupled"
    assert T.classify_decay(T.sgd_decay_reference(coupled=False)) == "decoupled"
    assert T.classify_decay(T.DECAY["w0"]) == "none"
    assert T.classify_second_moment(0.001 * 9) == "squared_sum"
    assert T.classify_second_moment(0.001 * 5) == "sum_of_squares"
    assert T.classify_loss_input(-np.log(0.5)) == "probabilities"
    assert T.classify_loss_input(np.log(np.exp([0.2, 0.3, 0.5]).sum()) - 0.5) == "logits"
    state = [[0.1, 0.2], [0.3, 0.4]]
    assert T.classify_padded_output([[*state, [0.0, 0.0]]]) == "zero"
    assert T.classify_padded_output([[*state, [0.3, 0.4]]]) == "last_state"
    assert T.classify_padded_output([[*state, [0.5, 0.6]]]) == "computed"


@pytest.mark.parametrize("form", list(T.DROPOUT_FORMS))
def test_classify_dropout_recognises_each_rounding_form(form):
    x, rng = T.dropout_input(), np.random.default_rng(0)
    outputs = {
        p: np.where(rng.random(x.size) < 1 - p, T.DROPOUT_FORMS[form](x, p), np.float32(0)) for p in T.DROPOUT_RATES
    }
    measured = T.classify_dropout(x, outputs)
    assert form in measured["form"].split(" = ")
    assert measured["scale_0.45"] == float(T.DROPOUT_FORMS[form](np.float32(1.0), 0.45))
    assert abs(measured["kept_0.3"] - 0.7) <= 0.02


@pytest.mark.parametrize("eps", [1e-3, 1e-5, 1e-6, 1e-8])
@pytest.mark.parametrize("ddof, variance", [(0, "biased"), (1, "unbiased")])
def test_classify_layer_norm_recovers_eps_and_variance(eps, ddof, variance):
    measured = T.classify_layer_norm(T.layer_norm_reference(T.LAYER_NORM_INPUT, eps, ddof))
    assert measured["variance"] == variance
    assert abs(measured["measured_eps"] - eps) <= 1e-6 * eps, "the trap's rtol holds on the reference"


def test_effect_helpers():
    m = {"torch": {"k": 1.0, "s": "a"}, "tf": {"k": 4.0}, "jax": {"s": "b"}}
    assert T.values_of(m, "k") == {"torch": 1.0, "tf": 4.0}
    assert T.listing(m, "s") == "torch a, jax b"
    assert T.spread(m, "k")[0] == 3.0 and "max |Δ| = 3" in T.spread(m, "k")[1]
    assert T.effect_ratio("k", "ratio")(m) == (4.0, "ratio: torch 1, tf 4 (×4)")


def test_package_exports_every_name_the_probes_use():
    for framework in FRAMEWORKS:
        source = (ROOT / (PROBE_MODULES[framework].replace(".", "/") + ".py")).read_text(encoding="utf-8")
        used = set(re.findall(r"\bT\.(\w+)", source))
        assert used and not {n for n in used if not hasattr(T, n)}, framework
    assert set(T.__all__) <= set(dir(T))


def test_sections_and_citations_name_design_sections():
    sections = {
        "Architecture",
        "Spec",
        "Layer stacks",
        "Records",
        "Exit codes",
        "Batching and order",
        "Initialisation",
        "Dropout",
        "Regularisation",
        "Optimisers",
        "Losses and metrics",
        "Padding and masks",
        "Precision",
        "Native mode",
        "Randomness",
        "Tolerances",
        "Execution modes",
        "Performance methodology",
        "Traps",
        "Images and BatchNorm",
        "Data parallelism and accumulation",
        "Gradient clipping",
        "Learning-rate schedules",
    }
    for trap in CATALOGUE:
        assert trap.section in sections, trap.id
        assert "DESIGN" not in trap.conversion + trap.note + trap.title, trap.id
        assert "keras_l2_factor" not in trap.conversion, trap.id


# ------------------------------------------------------------------------------- layer_norm_eps, per framework
LAYER_NORM_DEFAULTS = {"torch": 1e-5, "tf": 1e-3, "jax": 1e-6}


def test_layer_norm_eps_trap_records_the_defaults_and_parity_s_canonical_eps():
    from common.spec import defaults

    trap = TRAPS["layer_norm_eps"]
    assert trap.canonical == {"eps": defaults()["model"]["norm_eps"], "variance": "biased"} and T.NORM_EPS == 1e-5
    assert {fw: e["eps"] for fw, e in trap.expected.items()} == LAYER_NORM_DEFAULTS
    assert all(e["variance"] == "biased" and e["explicit_eps"] == T.NORM_EPS for e in trap.expected.values())
    assert trap.conversion.startswith(
        "pass eps explicitly (torch nn.LayerNorm(eps=ε), Keras "
        "LayerNormalization(epsilon=ε), flax nn.LayerNorm(epsilon=ε, "
        "use_fast_variance=False))"
    )
    assert trap.diverges(trap.expected) is True
    assert trap.diverges({"torch": trap.expected["torch"]}) is False, "torch's default is Parity's ε"
    size, text = trap.effect_of(trap.expected)
    assert size > 0.4 and "×1e+03" in text


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_layer_norm_eps_measured(framework):
    """The layer's own default, the ε its output implies, the biased variance, and ε passed explicitly."""
    measured = normalise(probes_of(framework).PROBES["layer_norm_eps"]())
    assert measured["eps"] == LAYER_NORM_DEFAULTS[framework]
    assert abs(measured["measured_eps"] - measured["eps"]) <= 1e-6 * measured["eps"]
    assert measured["variance"] == "biased"
    assert abs(measured["explicit_eps"] - T.NORM_EPS) <= 1e-6 * T.NORM_EPS


# ------------------------------------------------------------------------- images and BatchNorm references
def test_window_pads_recovers_the_pads_a_window_reaches():
    from common.traps.inputs import CONV_KERNEL, conv_ramp
    from common.traps.reference import conv2d_reference, pool_reference, window_pads

    x = conv_ramp(8)

    def conv(pads):
        return conv2d_reference(x, CONV_KERNEL, 2, pads)

    def pool(pads):
        return pool_reference(x, 3, 2, pads, "max")

    for pads in ([0, 1, 0, 1], [1, 0, 1, 0], [2, 1, 0, 0]):
        assert window_pads(conv(tuple(pads)), conv, 3) == pads
        assert window_pads(pool(tuple(pads)), pool, 3) == pads
    assert window_pads(conv((1, 1, 1, 1)), conv, 3) == [1, 0, 1, 0], "a pad row no window reaches does not count"
    assert window_pads(np.zeros((4, 4)), conv, 3) is None
    assert conv((0, 0, 0, 0))[0, 0] == float(np.sum(x[:3, :3] * CONV_KERNEL))


def test_pool_and_batch_norm_references():
    from common.traps.reference import batch_norm_reference, named_match, pool_reference

    ones = np.ones((4, 4))
    assert pool_reference(ones, 3, 1, (1, 1, 1, 1), "avg_real")[0, 0] == 1.0
    assert pool_reference(ones, 3, 1, (1, 1, 1, 1), "avg_all")[0, 0] == 4 / 9
    assert pool_reference(-ones, 3, 1, (1, 1, 1, 1), "max")[0, 0] == -1.0, "a −∞ pad never wins"
    x = T.LAYER_NORM_INPUT.T
    for eps, ddof, variance in ((1e-3, 0, "biased"), (1e-5, 1, "unbiased")):
        measured = T.classify_layer_norm(batch_norm_reference(x, eps, ddof).T)
        assert measured["variance"] == variance and abs(measured["measured_eps"] - eps) <= 1e-6 * eps
    refs = {"biased": batch_norm_reference(x, 1e-5, 0), "unbiased": batch_norm_reference(x, 1e-5, 1)}
    assert named_match(refs["unbiased"], refs) == "unbiased" and named_match(refs["biased"] + 1, refs) == "other"


IMAGE_TRAPS = (
    "conv_same_stride2",
    "flatten_order",
    "bn_momentum_convention",
    "bn_eps_default",
    "bn_running_var",
    "bn_batch_of_one",
    "bn_fast_variance",
    "avg_pool_same_count",
    "default_layout",
    "max_pool_same_padding",
    "pool_default_stride",
    "bn_masked_statistics",
    "bn_statistics_dtype",
)


@pytest.mark.parametrize("trap_id", IMAGE_TRAPS)
def test_image_traps_diverge_and_state_an_effect_from_their_expected_values(trap_id):
    trap = TRAPS[trap_id]
    assert trap.section == "Images and BatchNorm" and set(trap.expected) == set(FRAMEWORKS)
    assert trap.diverges(trap.expected) is True
    _, text = trap.effect_of(trap.expected)
    assert text and not text.startswith("n/a"), text


def test_image_trap_effects_and_canonical_values():
    assert TRAPS["conv_same_stride2"].canonical == {"pads": [0, 1, 0, 1], "out_size": 4}
    size, text = TRAPS["conv_same_stride2"].effect_of(TRAPS["conv_same_stride2"].expected)
    assert size > 0.1 and "torch [1, 0, 1, 0]: 16 of 16 outputs differ" in text
    assert TRAPS["flatten_order"].effect_of(TRAPS["flatten_order"].expected)[0] == 10 / 12
    assert TRAPS["bn_momentum_convention"].canonical["fraction_at_0.9"] == pytest.approx(0.1)
    assert TRAPS["bn_running_var"].effect_of(TRAPS["bn_running_var"].expected)[0] == pytest.approx(4 / 3)
    assert TRAPS["avg_pool_same_count"].canonical == {"corner": 1.0}
    assert TRAPS["pool_default_stride"].canonical == {"out_size": 4, "default_stride": 2}
    assert TRAPS["bn_masked_statistics"].effect_of(TRAPS["bn_masked_statistics"].expected)[0] == pytest.approx(1e-7 / 3)
    masked = TRAPS["masked_mean_loss"]
    assert masked.effect_of(masked.expected)[1].startswith("all-masked batch"), "not the BatchNorm effect's"


# ------------------------------------------------------------------------ data parallelism and accumulation
DP_TRAPS = (
    "sampler_padding",
    "sampler_same_order",
    "mean_of_means",
    "average_loss_global_batch",
    "replica_regularization",
    "accumulator_dtype",
    "sync_batchnorm_cpu",
    "bn_jit_global_batch",
    "bn_replica_stats",
)


@pytest.mark.parametrize("trap_id", DP_TRAPS)
def test_data_parallel_traps_point_at_common_distributed_and_state_an_effect(trap_id):
    trap = TRAPS[trap_id]
    assert trap.section == "Data parallelism and accumulation" and "common.distributed" in trap.conversion
    # one replica in the probe process: scale_regularization_loss divides by 1, as penalty_scale does
    assert trap.diverges(trap.expected) is (trap_id != "replica_regularization")
    _, text = trap.effect_of(trap.expected)
    assert text and not text.startswith("n/a"), text


def test_data_parallel_canonical_values_come_from_the_layout():
    from common.traps.reference import accumulated_updates, layout_epoch

    assert layout_epoch() == {
        "per_rank": [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]],
        "total": 12,
        "counted": 10,
        "repeated_ids": [],
    }
    assert TRAPS["sampler_padding"].canonical == layout_epoch()
    assert accumulated_updates() == {"global_mean": -0.625, "mean_of_means": -0.75, "sum_of_means": -1.5}
    assert TRAPS["mean_of_means"].canonical == {"update": -0.625, "reduction": "global_mean"}
    assert TRAPS["mean_of_means"].effect_of(TRAPS["mean_of_means"].expected)[0] == 1.2
    assert TRAPS["average_loss_global_batch"].canonical == {
        "divisor_global_batch_size": 3.0,
        "divisor_sample_weight": 3.0,
    }
    assert TRAPS["replica_regularization"].effect_of(TRAPS["replica_regularization"].expected)[0] == 2.0


def test_batch_norm_split_references_and_canonical_values():
    from common.traps.reference import split_statistics, split_statistics_name

    stats = split_statistics()
    assert stats == {
        "first_replica": {"mean": [2.0, 2.0], "var": [2.5, 3.5]},
        "replica_mean": {"mean": [3.0, -1.0], "var": [6.25, 8.75]},
        "global_batch": {"mean": [3.0, -1.0], "var": [7.25, 17.75]},
    }, "BN_SPLIT: the three readings differ, the two means agree (equal replicas)"
    for name, s in stats.items():
        assert split_statistics_name(s["mean"], s["var"]) == name
    assert split_statistics_name([2.0, 2.0], [2.5, 3.5], replica_0="per_replica") == "per_replica"
    assert split_statistics_name([2.0, 2.0], [10 / 3, 14 / 3]) == "other", "an unbiased variance is not replica 0's"
    assert TRAPS["sync_batchnorm_cpu"].canonical == {"cpu_training": "runs"}
    assert TRAPS["bn_jit_global_batch"].canonical == {"statistics": "per_replica"}, "the spec's sync default: false"
    assert TRAPS["bn_replica_stats"].canonical == {"kept": "first_replica"}
    jax = TRAPS["bn_jit_global_batch"].expected["jax"]
    assert jax["running_mean"] == stats["global_batch"]["mean"]
    assert jax["per_replica_means"][0] == stats["first_replica"]["mean"]
    assert TRAPS["bn_replica_stats"].expected["jax"]["replica_average_mean"] == stats["replica_mean"]["mean"]
    assert TRAPS["bn_jit_global_batch"].effect_of(TRAPS["bn_jit_global_batch"].expected)[0] > 1.0


# ------------------------------------------------------------------- gradient clipping and learning-rate schedules
CLIP_SCHEDULE_TRAPS = (
    "clip_epsilon",
    "keras_clipnorm_per_variable",
    "clip_before_decay",
    "keras_clip_per_replica",
    "cosine_annealing_period",
    "warmup_decay_steps",
    "scheduler_step_first",
    "per_epoch_schedule",
    "schedule_float32",
)


@pytest.mark.parametrize("trap_id", CLIP_SCHEDULE_TRAPS)
def test_clip_and_schedule_traps_diverge_and_state_an_effect(trap_id):
    trap = TRAPS[trap_id]
    assert trap.section == ("Gradient clipping" if "clip" in trap_id else "Learning-rate schedules") and trap.canonical
    assert "common.clipping" in trap.conversion or "common.schedules" in trap.conversion or "float64" in trap.conversion
    assert trap.diverges(trap.expected) is True
    size, text = trap.effect_of(trap.expected)
    assert size and size > 0 and text and not text.startswith("n/a"), text


def test_clip_and_schedule_canonical_values_come_from_common():
    from common import clipping, schedules
    from common.traps import catalogue as C

    assert C.CLIP_N == 5.0 and TRAPS["clip_epsilon"].canonical == {"factor_at_c": 1.0, "factor_at_2c": 0.5}
    assert TRAPS["clip_before_decay"].canonical["update"] == [-0.25] * 4, "the regularized gradient clipped by 1/4"
    assert TRAPS["cosine_annealing_period"].canonical == {"lr": [1.0, 0.25, 0.25, 0.25]}
    assert TRAPS["scheduler_step_first"].canonical == {"step_first": [1.0, 0.5, 0.25]}
    assert TRAPS["per_epoch_schedule"].canonical == {"lrs": [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]}
    assert TRAPS["schedule_float32"].canonical == {"lr": 0.1}
    # exact mode's conversions, as measured, give the canonical values
    assert TRAPS["cosine_annealing_period"].expected["torch"]["lambda_lr"] == C.COSINE_CANONICAL_LRS
    assert TRAPS["warmup_decay_steps"].expected["jax"]["decay_steps_w_plus_d"] == C.WARMUP_CANONICAL_LRS
    assert TRAPS["warmup_decay_steps"].expected["tf"]["lr"] == C.WARMUP_CANONICAL_LRS
    assert TRAPS["clip_before_decay"].expected["torch"]["loss_term_update"] == C.DECAY_ORDERS["decay_then_clip"]
    assert TRAPS["clip_before_decay"].expected["jax"]["decay_first_update"] == C.DECAY_ORDERS["decay_then_clip"]
    assert TRAPS["clip_epsilon"].expected["torch"]["exact_form_at_c"] == 1.0
    # the idioms' formulas (common.clipping, common.schedules) reproduce what the frameworks were measured to do
    torch_clip = TRAPS["clip_epsilon"].expected["torch"]
    assert torch_clip["factor_at_c"] == clipping.torch_scale(C.CLIP_N, C.CLIP_N)
    assert torch_clip["factor_at_2c"] == clipping.torch_scale(C.CLIP_N, C.CLIP_N / 2)
    s = C.SCHEDULE
    annealing = [schedules.used(C.COSINE, s["lr"], t, 0, frozenset({"torch_cosine_annealing"})) for t in s["cosine_at"]]
    assert TRAPS["cosine_annealing_period"].expected["torch"]["lr"] == pytest.approx(annealing, rel=1e-12)
    optax = [
        schedules.used(C.WARMUP_COSINE, s["lr"], t, 0, frozenset({"optax_warmup_decay_steps"})) for t in s["warmup_at"]
    ]
    assert TRAPS["warmup_decay_steps"].expected["jax"]["lr"] == pytest.approx(optax, rel=1e-12)
    first = [schedules.used(C.STEP_FIRST_TABLE, 1.0, t, 0, frozenset({"scheduler_step_first"})) for t in range(3)]
    assert TRAPS["scheduler_step_first"].expected["torch"]["step_first"] == first
    per_epoch = C.PER_EPOCH["steps_per_epoch"]
    epochs = [
        schedules.used(C.PER_EPOCH_TABLE, 1.0, t, t // per_epoch, frozenset({"per_epoch_schedule"}))
        for t in range(C.PER_EPOCH_STEPS)
    ]
    assert TRAPS["per_epoch_schedule"].expected["torch"]["lrs"] == epochs


def test_clip_per_replica_references_and_canonical_values():
    from common import clipping
    from common.traps import catalogue as C
    from common.traps.reference import clip_replica_placement, clip_replica_references

    p, trap = C.CLIP_REPLICAS, TRAPS["keras_clip_per_replica"]
    for case in ("agree", "opposed"):
        refs = clip_replica_references(case)
        total = {"w": np.sum(p[case], axis=0)}
        # the canonical update is common.clipping's global clip of the replicas' summed gradient
        assert refs["reduced"] == (-p["lr"] * clipping.clip(total, p["c"], "global")[0]["w"]).tolist()
        assert len({tuple(v) for v in refs.values()}) == 3, "the three placements must be told apart"
        for name, update in refs.items():
            assert clip_replica_placement(update, case) == name
        assert clip_replica_placement([9.0] * 4, case) == "other"
    # each replica is clipped alone (norms 2, 4, 2 > c) while the sums (norms 4, 2) differ: every factor a power of 2
    assert clip_replica_references("agree") == {
        "reduced": [-0.5] * 4,
        "per_replica": [-1.0] * 4,
        "unclipped": [-2.0] * 4,
    }
    assert clip_replica_references("opposed") == {
        "reduced": [-0.5] * 4,
        "per_replica": [0.0] * 4,
        "unclipped": [-1.0] * 4,
    }
    assert trap.canonical["update"] == C.REPLICA_CLIPS["agree"]["reduced"]
    assert trap.canonical["opposed_update"] == C.REPLICA_CLIPS["opposed"]["reduced"]
    tf = trap.expected["tf"]
    assert tf["one_device_update"] == trap.canonical["update"], "the one-device Keras clip is the rule"
    assert tf["opposed_one_device_update"] == trap.canonical["opposed_update"]
    assert tf["update"] == C.REPLICA_CLIPS["agree"]["per_replica"]
    assert tf["opposed_update"] == C.REPLICA_CLIPS["opposed"]["per_replica"]
    assert tf["replicas"] == len(p["agree"]) == len(p["opposed"])
    assert trap.effect_of(trap.expected)[0] == tf["replicas"], "equal replicas: the clip acts at R·c"


def test_every_idiom_names_a_trap():
    from common.idioms import IDIOMS

    for idiom in IDIOMS.values():
        assert idiom.trap in TRAPS, (idiom.id, idiom.trap)


# ------------------------------------------------------------------------------------- the matrix builder
def _fake_report(framework: str, changed: str | None = None, crashed: str | None = None) -> dict:
    results = {}
    for trap in for_framework(framework):
        value = dict(trap.expected[framework])
        if trap.id == changed:
            value = {k: "something else" for k in value}
        results[trap.id] = (
            {"ok": False, "error": "RuntimeError: boom"}
            if trap.id == crashed
            else {"ok": True, "value": value, "seconds": 0.0}
        )
    return {"framework": framework, "status": "ok", "message": "", "versions": {framework: "0.0"}, "results": results}


def test_matrix_on_fake_measurements():
    reports = {
        "torch": _fake_report("torch", changed="adam_eps_default"),
        "tf": {
            "framework": "tf",
            "status": "not installed",
            "message": "tensorflow not installed",
            "versions": {},
            "results": {},
        },
        "jax": _fake_report("jax", crashed="abs_subgradient"),
    }
    matrix = conformance.build_matrix(reports)
    json.dumps(matrix)
    rows = {r["id"]: r for r in matrix["traps"]}
    assert len(rows) == len(CATALOGUE)
    assert rows["adam_eps_default"]["cells"]["torch"]["status"] == "changed"
    assert rows["adam_eps_default"]["cells"]["tf"]["status"] == "not installed"
    assert rows["abs_subgradient"]["cells"]["jax"]["status"] == "crashed"
    assert rows["optax_decay_mask"]["cells"]["torch"]["status"] == "n/a"
    assert rows["shuffle_order"]["diverges"] is True  # torch and jax orders differ (and from numpy's)
    assert rows["dropout_scale"]["diverges"] is True  # torch and flax round 1/(1−p) unlike common.dropout
    assert rows["l2_vs_weight_decay"]["diverges"] is False  # without Keras, torch and optax agree
    assert rows["adam_weight_decay_equivalence"]["diverges"] is False
    assert rows["keras_auto_jit"]["diverges"] is None  # tf alone, no canonical value: nothing to compare
    assert matrix["summary"]["changed"] == ["adam_eps_default/torch"]
    assert matrix["summary"]["crashed"] == ["abs_subgradient/jax"]
    assert matrix["summary"]["not_installed"] == ["tf"]
    assert matrix["exit_code"] == 3

    md = conformance.markdown(matrix)
    table = [l for l in md.splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert len(table) == len(CATALOGUE)
    assert all(l.count(" | ") == 7 for l in table), "every row has 8 cells (escaped pipes inside)"
    assert "**CHANGED**" in md and "**crashed**" in md and "not installed" in md
    assert "## Measurement notes" in md

    reports["tf"] = _fake_report("tf")
    reports["jax"] = _fake_report("jax")
    assert conformance.build_matrix(reports)["exit_code"] == 1
    reports["torch"] = _fake_report("torch")
    clean = conformance.build_matrix(reports)
    assert clean["exit_code"] == 0 and clean["summary"]["as_expected"] == clean["summary"]["probes"]
    assert rows["l2_vs_weight_decay"]["effect"] and clean["summary"]["diverging"] > 20


def test_worker_reports_a_missing_framework(tmp_path, monkeypatch):
    (tmp_path / "fake_probes.py").write_text("raise ModuleNotFoundError(\"No module named 'jax'\", name='jax')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(PROBE_MODULES, "jax", "fake_probes")
    report = run_probes("jax")
    assert report["status"] == "not installed" and "jax" in report["message"]
    assert conformance.build_matrix({"jax": report})["exit_code"] == 3


@pytest.mark.parametrize("argv", [["conformance", "--traps", "no_such_trap"], ["conformance", "--frameworks", "mxnet"]])
def test_bad_arguments_exit_2(argv, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    assert "parity: error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- the command
@pytest.mark.cross
@needs_all_frameworks
def test_parity_conformance_command(tmp_path):
    out = tmp_path / "conformance"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "conformance", "--out", str(out), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    matrix = json.loads((out / "conformance.json").read_text())
    assert matrix["summary"]["traps"] == len(CATALOGUE) >= 25
    assert matrix["summary"]["as_expected"] == matrix["summary"]["probes"]
    assert all(info["versions"] for info in matrix["frameworks"].values())
    assert (out / "conformance.md").read_text().count("\n| ") >= 25
