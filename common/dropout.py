"""Shared dropout masks for exact mode (DESIGN §5, "Dropout").

All three frameworks use inverted dropout: kept units are scaled by 1/(1−p) in training, and evaluation applies no
dropout. Their RNGs differ, so exact mode draws the masks once in numpy and every backend applies

    h ← h · m,   m = keep · s,   keep ~ Bernoulli(1 − p),   s = 1/(1 − p)

as an explicit multiply by the pre-scaled mask m (the order torch uses: `x * (mask * (1/(1-p)))`). Masks are keyed by
(seed, global step, hidden layer), so they do not depend on which framework asks, or when.
"""

from __future__ import annotations

import numpy as np

MASK_STREAM = 3


def keep_scale(rate: float) -> float:
    """s = 1/(1 − p), the inverted-dropout scale for kept units (p < 1 by spec validation)."""
    return 1.0 / (1.0 - rate)


def shared_masks(seed: int, step: int, rate: float, rows: int, widths: list[int], dtype) -> list[np.ndarray] | None:
    """Pre-scaled masks m (rows × width, one per hidden layer) for global step `step`; None when p = 0.

    keep = U[0,1) ≥ p from `default_rng([seed, 3, step])`, drawn layer after layer.
    """
    if rate == 0.0:
        return None
    rng = np.random.default_rng([seed, MASK_STREAM, step])
    scale = keep_scale(rate)
    return [((rng.random((rows, width)) >= rate) * scale).astype(dtype) for width in widths]
