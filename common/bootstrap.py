"""Paired timing statistics (docs/design.md, "Performance methodology"): per-round values of two variants timed in
the same rounds (common.timing.paired_rounds), their median with a percentile bootstrap interval, and whether that
interval decides a target.

    v_k = f(a_k, b_k) over the rounds k where both ran (a ratio a/b, a difference a − b, a share (a − b)/a);
    estimate: median(v);  interval: the rounds resampled with replacement B times, the (1 ± level)/2 percentiles
    of the B medians.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def paired(a, b, f: Callable[[float, float], float]) -> list[float]:
    """f(a_k, b_k) over the rounds where neither is None (a variant past its cap has None)."""
    return [f(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]


def median_interval(values, level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> dict:
    """{"median", "ci": [lo, hi], "level", "rounds"} of per-round `values` (module docstring); no values: None."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"median": None, "ci": [None, None], "level": level, "rounds": 0}
    rng = np.random.default_rng(seed)
    medians = np.median(values[rng.integers(0, values.size, (resamples, values.size))], axis=1)
    lo, hi = np.percentile(medians, [50 * (1 - level), 50 * (1 + level)])
    return {"median": float(np.median(values)), "ci": [float(lo), float(hi)], "level": level, "rounds": values.size}


def paired_ratio(numerator, denominator, **kwargs) -> dict:
    """median_interval of numerator_k / denominator_k. A mode's throughput relative to its reference is
    t_reference,k / t_mode,k: pass the reference's seconds as the numerator."""
    return median_interval(paired(numerator, denominator, lambda a, b: a / b), **kwargs)


def loader_overhead(end_to_end, placed, **kwargs) -> dict:
    """The loader's cost in an epoch: d_k = t_end_to_end,k − t_placed,k (the same loop over inputs already on the
    device) in ms, and its share d_k / t_end_to_end,k of the epoch, each with its interval."""
    ms = median_interval(paired(end_to_end, placed, lambda a, b: 1000.0 * (a - b)), **kwargs)
    share = median_interval(paired(end_to_end, placed, lambda a, b: (a - b) / a), **kwargs)
    return {
        "ms_per_epoch": ms["median"],
        "ms_ci": ms["ci"],
        "share": share["median"],
        "share_ci": share["ci"],
        "rounds": ms["rounds"],
    }


MIN_ROUNDS = 6
"""Fewest rounds that decide a target. Below 6 no distribution-free 95% interval of a median exists (the widest,
from the smallest to the largest of n values, covers it with probability 1 − 2·2⁻ⁿ: 93.75% at n = 5, 96.9% at
n = 6), and the bootstrap's interval collapses (one round: a point); a variant capped after a few slow rounds
stays undecided."""


def against_target(estimate: dict, target: float, at_most: bool = False) -> str:
    """Whether `estimate`'s interval (median_interval, over `rounds` ≥ MIN_ROUNDS) decides the target: "meets"
    when it lies wholly at or above `target` (`at_most`: at or below it), "misses" when wholly on the other side,
    "undecided" when it contains the target or has too few rounds (more rounds might decide)."""
    lo, hi = estimate["ci"]
    if lo is None or estimate["rounds"] < MIN_ROUNDS:
        return "undecided"
    if at_most:
        return "meets" if hi <= target else "misses" if lo > target else "undecided"
    return "meets" if lo >= target else "misses" if hi < target else "undecided"
