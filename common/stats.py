"""Statistical equivalence of final metrics across seeds (docs/design.md, "Tolerances"): Welch's TOST.

For samples a (n_a seeds) and b (n_b seeds) of a final metric:

    d = mean(a) − mean(b),   se = √(s_a²/n_a + s_b²/n_b),
    ν = se⁴ / ((s_a²/n_a)²/(n_a−1) + (s_b²/n_b)²/(n_b−1))          (Welch–Satterthwaite)

TOST with margin m at level α: p = max(P(T_ν ≥ (d + m)/se), P(T_ν ≤ (d − m)/se)), equivalently the
(1 − 2α) confidence interval d ± t_{1−α,ν}·se lies inside (−m, m). Verdict:
- "equivalent within ±m" when that interval lies inside (−m, m);
- "different" when the (1 − α) two-sided interval d ± t_{1−α/2,ν}·se excludes 0 and reaches beyond ±m;
- "inconclusive" otherwise (too few seeds or too much spread to say).
The t distribution is computed here (regularized incomplete beta by continued fraction) to keep common numpy-only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from common.spec import Spec


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the regularized incomplete beta (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T_df ≤ t)."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T_df ≤ t) = p, by bisection."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


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
