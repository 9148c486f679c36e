import numpy as np

from common.compare import compare_values
from common.tolerance import FLOAT32_EXACT, FLOAT64_EXACT


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
