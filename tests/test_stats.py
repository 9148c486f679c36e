import math

import numpy as np
import pytest

from common.stats import t_cdf, t_quantile, tost

pytestmark = pytest.mark.framework_free  # no ML framework: runs once, in the torch env (tox.ini)


@pytest.mark.parametrize(
    "t, df, expected",
    [
        (0.0, 5, 0.5),
        (2.015048373, 5, 0.95),  # standard t-table values
        (1.812461123, 10, 0.95),
        (2.228138852, 10, 0.975),
        (-1.697260887, 30, 0.05),
    ],
)
def test_t_distribution_against_tables(t, df, expected):
    assert math.isclose(t_cdf(t, df), expected, abs_tol=2e-7)
    assert math.isclose(t_quantile(expected, df), t, abs_tol=1e-5)


def test_tost_verdicts():
    rng = np.random.default_rng(0)
    same = tost(rng.normal(0.9, 0.01, 20), rng.normal(0.9, 0.01, 20), margin=0.02)
    assert same.verdict.startswith("equivalent") and same.p_tost < 0.05
    diff = tost(rng.normal(0.9, 0.01, 20), rng.normal(0.7, 0.01, 20), margin=0.02)
    assert diff.verdict == "different" and diff.ci_difference[0] > 0.02
    noisy = tost(rng.normal(0.9, 0.2, 3), rng.normal(0.9, 0.2, 3), margin=0.02)
    assert noisy.verdict == "inconclusive"
    with pytest.raises(ValueError):
        tost([1.0], [1.0, 2.0], 0.1)
