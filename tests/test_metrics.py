"""Aggregation: the weighted metric ignores the evaluation batching; the per-batch mean does not (banding)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.batching import eval_batches
from common.metrics import aggregate, cross_entropy, weighted_mean

pytestmark = pytest.mark.framework_free  # no ML framework: runs once, in the torch env (tox.ini)


def _per_batch(values, size):
    batches = eval_batches(len(values), size)
    return [float(values[b.ids].sum()) for b in batches], [b.rows for b in batches]


ROW_VALUES = st.one_of(
    st.lists(st.booleans(), min_size=2, max_size=50),  # per-row correctness (accuracy)
    st.lists(st.floats(0.0, 20.0), min_size=2, max_size=50),
)  # per-row cross-entropy (loss)


@settings(max_examples=80, deadline=None)
@given(correct=ROW_VALUES, size=st.integers(0, 60))
def test_weighted_metrics_independent_of_eval_batch_size(correct, size):
    values = np.array(correct, dtype=float)
    sums, counts = _per_batch(values, size)
    assert np.isclose(aggregate(sums, counts, "weighted"), values.mean(), rtol=1e-12)


@st.composite
def _unequal_batching(draw):
    """Outcomes and a batch size that leaves k >= 1 full batches and a shorter last one."""
    n = draw(st.integers(3, 50))
    size = draw(st.integers(2, n - 1).filter(lambda s: n % s != 0))
    row = draw(st.sampled_from([st.booleans(), st.floats(0.0, 20.0)]))  # correctness or per-row loss
    return draw(st.lists(row, min_size=n, max_size=n)), size


@settings(max_examples=80, deadline=None)
@given(case=_unequal_batching())
def test_per_batch_mean_depends_on_batching_when_batches_are_unequal(case):
    correct, size = case
    values = np.array(correct, dtype=float)
    n = len(values)
    sums, counts = _per_batch(values, size)
    k, r = n // size, n % size
    full, last = values[: k * size].mean(), values[k * size :].mean()
    assert np.isclose(aggregate(sums, counts, "per_batch_mean"), (k * full + last) / (k + 1))
    assert np.isclose(aggregate(sums, counts, "weighted"), (k * size * full + r * last) / n)
    if not np.isclose(last, full):
        assert not np.isclose(aggregate(sums, counts, "per_batch_mean"), aggregate(sums, counts, "weighted"))


def test_banding_quantisation_of_a_batch_of_two():
    batches = eval_batches(30, 28)
    last = batches[-1]
    assert last.rows == 2
    scores = {aggregate([c], [2], "per_batch_mean") for c in (0, 1, 2)}
    assert scores == {0.0, 0.5, 1.0}


def test_cross_entropy_matches_definition():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(5, 3)) * 10, rng.integers(0, 3, 5)
    expected = [np.log(np.exp(z).sum()) - z[y] for z, y in zip(logits, labels, strict=True)]
    assert np.allclose(cross_entropy(logits, labels), expected, rtol=1e-12)
    assert weighted_mean(np.array([1.0, 3.0, 100.0]), np.array([1.0, 1.0, 0.0])) == 2.0


def test_banding_detection_rule():
    from common.metrics import banding

    assert banding([78, 2], "weighted") is None
    assert banding([40, 40], "per_batch_mean") is None
    found = banding([78, 2], "per_batch_mean")
    assert found["smallest"] == 2 and found["levels"] == [0.0, 0.5, 1.0] and found["step"] == 0.25


def test_doughnuts_banding_is_reproduced_by_the_oracle():
    """Seeds 000/002: test batches of 78 and 2 averaged per batch give accuracies (j/78 + a₂)/2, a₂ ∈ {0, ½, 1}."""
    from benchmarks.presets import expand, load_preset
    from tests.support import run_in_process

    raw, sweep, _ = load_preset("doughnuts-banding", full=False)
    runs = {(r.point["metrics.aggregation"], r.point["batching.eval_batch_size"]): r for r in expand(raw, sweep)}
    banded = run_in_process("numpy", runs[("per_batch_mean", 78)].spec)[0]["epochs"]
    weighted = run_in_process("numpy", runs[("weighted", 78)].spec)[0]["epochs"]
    whole = run_in_process("numpy", runs[("weighted", 0)].spec)[0]["epochs"]
    for b, w, h in zip(banded, weighted, whole, strict=True):
        assert w["test_acc"] == h["test_acc"]  # weighted: independent of the evaluation batch size
        fits = [
            abs(round((2 * b["test_acc"] - a2) * 78) - (2 * b["test_acc"] - a2) * 78) < 1e-9 for a2 in (0.0, 0.5, 1.0)
        ]
        assert any(fits)
    assert any(b["test_acc"] != w["test_acc"] for b, w in zip(banded, weighted, strict=True))
