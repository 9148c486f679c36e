"""common.explain names a padding or truncation trap only when the records show it and it changes the result."""

import numpy as np

from common.explain import explain


def _record(pad, truncate, mask=True, max_len=0, buckets=()):
    spec = {"sequence": {"mask": mask, "max_len": max_len, "buckets": list(buckets)}}
    return {"spec": spec, "padding": {"pad": pad, "truncate": truncate}}, {"train_lengths": np.array([3, 9, 5])}


def test_unmasked_different_pad_sides_are_named():
    causes = explain({"tf": _record("pre", "post", mask=False), "torch": _record("post", "post", mask=False)})
    assert [(c["a"], c["b"], c["trap"]) for c in causes] == [("tf", "torch", "pad-side-unmasked")]
    assert "tf pads pre" in causes[0]["why"] and "torch pads post" in causes[0]["why"]


def test_masked_or_same_side_runs_have_no_cause():
    assert explain({"tf": _record("pre", "post"), "torch": _record("post", "post")}) == []
    assert explain({"a": _record("pre", "pre", mask=False), "b": _record("pre", "pre", mask=False)}) == []


def test_truncation_side_matters_only_when_a_row_is_cut():
    cut = explain({"tf": _record("post", "pre", max_len=6), "jax": _record("post", "post", max_len=6)})
    assert [c["trap"] for c in cut] == ["truncate-side"]
    assert explain({"tf": _record("post", "pre", max_len=9), "jax": _record("post", "post", max_len=9)}) == []
    assert explain({"tf": _record("post", "pre", buckets=(4, 8)), "jax": _record("post", "post", buckets=(4, 8))})


def test_feature_records_have_no_padding_and_no_cause():
    plain = ({"spec": {}}, {})
    assert explain({"numpy": plain, "torch": plain}) == []


def _loss_records(losses_a, losses_b, dtype="float64"):
    spec = {"mode": "exact", "dtype": dtype}
    return {
        "a": ({"spec": spec}, {"losses": np.asarray(losses_a)}),
        "b": ({"spec": spec}, {"losses": np.asarray(losses_b)}),
    }


def test_steady_growth_from_rounding_is_named_with_its_rate():
    steps = np.arange(300)
    base = 1.0 + 0.1 * np.sin(steps)
    grown = base * (1 + 2.2e-16 * 10 ** (steps / 30))  # ×10 every 30 steps from one ulp
    causes = explain(_loss_records(base, grown))
    assert [c["trap"] for c in causes] == ["rounding-growth"]
    first = int(np.argmax(np.abs(grown - base) / grown > 1e-9)) + 1
    assert f"at step {first}" in causes[0]["why"] and "every 30 steps" in causes[0]["why"]


def test_a_semantic_jump_is_not_called_rounding():
    base = np.linspace(1.0, 0.5, 200)
    jumped = base.copy()
    jumped[1:] *= 1 + 1e-3 * np.arange(1, 200)  # a wrong factor: 1e-3 at step 2
    assert explain(_loss_records(base, jumped)) == []
    small = base.copy()
    small[50:] *= 1 + 1e-8  # a 1e-8 difference appearing at once (e.g. a float32-cast hyperparameter)
    assert explain(_loss_records(base, small)) == []


def test_growth_needs_agreement_at_step_one_and_a_late_divergence():
    base = np.linspace(1.0, 0.5, 200)
    steady = 10 ** (np.arange(200) / 30)
    assert explain(_loss_records(base, base * (1 + 1e-12 * steady))) == []  # already 1e-12 apart at step 1
    early = base * (1 + 2.2e-16 * 10 ** np.arange(200))  # ×10 per step: crosses at step 8
    assert explain(_loss_records(base, early)) == []
