"""Oracle input pipeline: plain numpy indexing of a split with each plan batch's ids, as common.batching.Rows
(docs/design.md, "Batching and order", "Padding and masks").

Features: x (B, F) float64, weights = the plan weights (1 real, 0 filler). Tokens: x (B, T) int64 padded to the
plan's length T with common.padding.pad_batch on numpy's resolved sides, lengths = the kept lengths L_i,
weights m_i = common.padding.loss_weights(w_i, L_i, loss_norm). The token mask is not carried: token 0 is the pad,
so the embedding reads μ = [k ≠ 0] off the tokens.
"""

from __future__ import annotations

import numpy as np

from common.batching import Batch, BatchPlan, Rows
from common.datasets import Dataset
from common.padding import loss_weights, pad_batch, resolve_sides
from common.spec import Spec


def rows(spec: Spec, data: Dataset, split: str, batch: Batch) -> Rows:
    """The batch's rows of `split`."""
    y = getattr(data, f"{split}_y")[batch.ids]
    weights = batch.weights.astype(np.float64)
    if not data.is_sequence:
        return Rows(batch.ids, getattr(data, f"{split}_x")[batch.ids].astype(np.float64), y, weights)
    pad, truncate = resolve_sides(spec, "numpy")
    tokens, _, kept = pad_batch(data.sequences(split, batch.ids), pad, truncate, batch.length)
    return Rows(batch.ids, tokens, y, loss_weights(weights, kept, spec.sequence.loss_norm), kept)


def epoch_rows(spec: Spec, data: Dataset, plan: BatchPlan, epoch: int):
    """The epoch's training batches, in plan order."""
    for batch in plan.batches(epoch):
        yield rows(spec, data, "train", batch)
