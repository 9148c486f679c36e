"""Statistical equivalence of final metrics across seeds (docs/design.md, "Tolerances"): Welch's TOST.

For samples a (n_a seeds) and b (n_b seeds) of a final metric:

    d = mean(a) − mean(b),   se = √(s_a²/n_a + s_b²/n_b),
    ν = se⁴ / ((s_a²/n_a)²/(n_a−1) + (s_b²/n_b)²/(n_b−1))          (Welch–Satterthwaite)

TOST with margin m at level α: p = max(P(T_ν ≥ (d + m)/se), P(T_ν ≤ (d − m)/se)), equivalently the
(1 − 2α) confidence interval d ± t_{1−α,ν}·se lies inside (−m, m). Verdict:
- "equivalent within ±m" when that interval lies inside (−m, m);
- "different" when the (1 − α) two-sided interval d ± t_{1−α/2,ν}·se excludes 0 and reaches beyond ±m;
- "inconclusive" otherwise (too few seeds or too much spread to say).
The t distribution is scipy.stats.t (common stays free of ML frameworks, not of scipy).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from common.spec import Spec


def t_cdf(t: float, df: float) -> float:
    """P(T_df ≤ t)."""
    from scipy.stats import t as student  # imported here: scipy.stats takes seconds to import, few commands use it

    return float(student.cdf(t, df))


def t_quantile(p: float, df: float) -> float:
    """The t with P(T_df ≤ t) = p."""
    from scipy.stats import t as student

    return float(student.ppf(p, df))


@dataclass(frozen=True)
class Equivalence:
    verdict: str
    difference: float
    margin: float
    ci_equivalence: tuple[float, float]
    ci_difference: tuple[float, float]
    p_tost: float
    n_a: int
    n_b: int

    def to_json(self) -> dict:
        return asdict(self)


def tost(a, b, margin: float, alpha: float = 0.05) -> Equivalence:
    """Welch TOST of mean(a) − mean(b) against ±margin (see the module docstring)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError("TOST needs at least 2 seeds per group")
    d = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0.0:
        inside = abs(d) < margin
        ci = (d, d)
        return Equivalence(
            f"equivalent within ±{margin:g}" if inside else "different",
            d,
            margin,
            ci,
            ci,
            0.0 if inside else 1.0,
            a.size,
            b.size,
        )
    df = (va + vb) ** 2 / ((va**2 / (a.size - 1) if va else 0.0) + (vb**2 / (b.size - 1) if vb else 0.0))
    p_tost = max(1.0 - t_cdf((d + margin) / se, df), t_cdf((d - margin) / se, df))
    half_eq = t_quantile(1.0 - alpha, df) * se
    half_diff = t_quantile(1.0 - alpha / 2.0, df) * se
    ci_eq, ci_diff = (d - half_eq, d + half_eq), (d - half_diff, d + half_diff)
    if -margin < ci_eq[0] and ci_eq[1] < margin:
        verdict = f"equivalent within ±{margin:g}"
    elif (ci_diff[0] > 0 or ci_diff[1] < 0) and (ci_diff[1] > margin or ci_diff[0] < -margin):
        verdict = "different"
    else:
        verdict = "inconclusive"
    return Equivalence(verdict, d, margin, ci_eq, ci_diff, float(p_tost), a.size, b.size)


def seed_equivalence(finals: dict[str, dict[str, list[float]]], spec: Spec) -> list[dict]:
    """TOST for every backend pair on the final test accuracy and loss across seeds.

    `finals[backend][metric]` holds one value per seed; margins and α come from the spec's [equivalence] table.
    """
    eq = spec.equivalence
    margins = {"test_acc": eq.acc_margin, "test_loss": eq.loss_margin}
    names = sorted(finals)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for metric, margin in margins.items():
                result = tost(finals[a][metric], finals[b][metric], margin, eq.alpha)
                out.append({"a": a, "b": b, "metric": metric, **result.to_json()})
    return out
