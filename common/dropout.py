"""Shared dropout masks for exact mode (docs/design.md, "Dropout").

All three frameworks use inverted dropout: kept units are scaled by 1/(1−p) in training, and evaluation applies no
dropout. Their RNGs differ, so exact mode draws the masks once in numpy and every backend applies

    h ← h · m,   m = keep · s,   keep ~ Bernoulli(1 − p),   s = 1/(1 − p)

as an explicit multiply by the pre-scaled mask m (the order torch uses: `x * (mask * (1/(1-p)))`). Masks are keyed by
(seed, global step, dropout layer), so they do not depend on which framework asks, or when.
"""

from __future__ import annotations

import numpy as np

from common import rng as streams
from common.layers import Layer, dropout_layers


def keep_scale(rate: float) -> float:
    """s = 1/(1 − p), the inverted-dropout scale for kept units (p < 1 by spec validation)."""
    return 1.0 / (1.0 - rate)


def shared_masks(seed: int, step: int, layers: tuple[Layer, ...], rows: int, dtype) -> list[np.ndarray] | None:
    """Pre-scaled masks m (rows, *layer.shape), i.e. (rows, width) on features and (rows, H, W, C) on images, one
    per dropout layer of the stack in order, for global step `step`; None when no dropout layer has p > 0. A layer
    with p = 0 gets ones and draws nothing.

    keep = U[0,1) ≥ p from `default_rng([seed, rng.MASKS, step, k])` for the k-th dropout layer: one stream per
    layer, filled row after row, so the mask of row i does not depend on how many rows the batch has. A `pad`
    batch (its real rows first, then filler) therefore gives its real rows exactly the masks the same rows get
    under `keep`, in every layer.
    """
    drops = dropout_layers(layers)
    if not any(layer.rate > 0.0 for layer in drops):
        return None
    return [
        (
            (
                (
                    np.random.default_rng([seed, streams.MASKS, step, layer.number]).random((rows, *layer.shape))
                    >= layer.rate
                )
                * keep_scale(layer.rate)
            )
            if layer.rate > 0.0
            else np.ones((rows, *layer.shape))
        ).astype(dtype)
        for layer in drops
    ]
