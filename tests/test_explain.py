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
