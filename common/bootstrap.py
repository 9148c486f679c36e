"""Paired timing ratios (docs/design.md, "Performance methodology"): the median over rounds of one variant's time
over another's, with a percentile bootstrap interval, and whether that interval decides a target.

    r_k = a_k / b_k over the rounds k where both ran;   ratio = median(r);
    interval: the rounds resampled with replacement B times, the (1 ± level)/2 percentiles of the B medians.
"""

from __future__ import annotations

import numpy as np


def paired_ratio(numerator, denominator, level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> dict:
    """The median over rounds of numerator_r / denominator_r (rounds where either is None are left out), with a
    percentile bootstrap interval at `level`: the rounds resampled with replacement `resamples` times, the median
    taken of each resample.

    Timing ratios (common.timing.paired_rounds): a mode's throughput relative to its reference is
    t_reference,r / t_mode,r, so pass the reference's seconds as the numerator."""
    pairs = [(a, b) for a, b in zip(numerator, denominator, strict=True) if a is not None and b is not None]
    if not pairs:
        return {"median": None, "ci": [None, None], "level": level, "rounds": 0}
    ratios = np.array([a / b for a, b in pairs], dtype=np.float64)
    rng = np.random.default_rng(seed)
    medians = np.median(ratios[rng.integers(0, ratios.size, (resamples, ratios.size))], axis=1)
    lo, hi = np.percentile(medians, [50 * (1 - level), 50 * (1 + level)])
    return {"median": float(np.median(ratios)), "ci": [float(lo), float(hi)], "level": level, "rounds": ratios.size}


def against_target(ratio: dict, target: float) -> str:
    """ "meets" when the whole interval of `ratio` (paired_ratio) is at or above `target`, "misses" when it is
    wholly below, "undecided" when the interval contains it (more rounds might decide)."""
    lo, hi = ratio["ci"]
    if lo is None:
        return "undecided"
    return "meets" if lo >= target else "misses" if hi < target else "undecided"
