import numpy as np
import pytest

from common.compare import compare_batch_ids, compare_values
from common.tolerance import FLOAT32_EXACT, FLOAT64_EXACT

pytestmark = pytest.mark.framework_free  # no ML framework: runs once, in the torch env (tox.ini)


def test_first_divergent_step_and_nan():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = a.copy()
    b[2] *= 1 + 1e-8
    out = compare_values(a, b, [1, 2, 3, 4], FLOAT64_EXACT)
    assert out["divergent"] and out["first_divergent_step"] == 3 and np.isclose(out["max_rel_diff"], 1e-8, rtol=1e-3)
    assert not compare_values(a, a * (1 + 1e-10), [1, 2, 3, 4], FLOAT64_EXACT)["divergent"]
    b[1] = np.nan
    assert compare_values(a, b, [1, 2, 3, 4], FLOAT64_EXACT)["first_divergent_step"] == 2


def test_parameter_tensors_are_scaled_by_the_tensor():
    a = np.array([1.0, -0.5, 1e-7])
    b = np.array([1.0, -0.5, 1e-7 + 5e-6])  # near-zero element off by 5e-6: tiny against the tensor's scale 1
    assert compare_values(a, b, [], FLOAT32_EXACT)["divergent"]
    assert not compare_values(a, b, [], FLOAT32_EXACT, tensor=True)["divergent"]
    c = np.array([1.0, -0.5 * (1 + 3e-4), 0.0])  # 1.5e-4 of the tensor scale: still caught
    assert compare_values(a, c, [], FLOAT32_EXACT, tensor=True)["divergent"]


def test_runs_of_different_length_diverge_at_the_first_missing_step():
    out = compare_values(np.ones(3), np.ones(5), [1, 2, 3, 4, 5], FLOAT64_EXACT)
    assert out["divergent"] and out["first_divergent_step"] == 4 and out["shape_mismatch"] == [[3], [5]]


def test_padded_lengths_are_compared_step_by_step():
    def rec(lengths):
        return {"steps": [{"step": i + 1, "batch_ids": [i], "padded_length": t} for i, t in enumerate(lengths)]}

    assert not compare_batch_ids(rec([4, 10]), rec([4, 10]), "padded_length")["divergent"]
    assert compare_batch_ids(rec([4, 10]), rec([4, 9]), "padded_length")["first_divergent_step"] == 2
