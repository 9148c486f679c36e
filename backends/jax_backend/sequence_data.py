"""The JAX input pipeline for token sequences: manual batching and padding to static shapes (JAX has no loader).

Per plan batch (common.batching.Batch: ids, weights, padded length T) the raw token arrays of its rows are padded
in numpy with `common.padding.pad_batch(seqs, pad_side, truncate_side, T)` — the sides resolved for "jax"
(`resolve_sides`; "native" is post/post: manual padding writes the tokens from position 0 and cuts at the end) —
and moved with one `jax.device_put`. T is always the plan's length (max_len, the bucket bound, or the batch's
longest row), never recomputed here, so the set of (B, T) shapes a jitted step sees is the plan's: with length
buckets and last_batch "pad" at most one shape per bucket (one compile each), without buckets and max_len one per
distinct batch maximum.

The row weights are the masked-loss weights m_i = common.padding.loss_weights(w_i, L_i, loss_norm) with the
per-row kept lengths L_i = common.padding.kept_lengths(n_i, max_len, buckets) (w_i = 0 for pad filler rows), so the
step's loss Σ m·ℓ / max(Σ m, 1) is the canonical masked mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import jax
import numpy as np

from common.batching import Batch, BatchPlan
from common.datasets import Dataset
from common.padding import kept_lengths, loss_weights, pad_batch


@dataclass(frozen=True)
class SeqBatch:
    """One padded sequence batch on the device: `ids` (numpy, filler included), `real_ids` (numpy, weight > 0),
    tokens (rows, T) int32, mask (rows, T) int32 (1 on kept tokens), y (rows,) int32, w (rows,) the loss weights m_i
    in the spec dtype; `length` = T as delivered."""

    ids: np.ndarray
    real_ids: np.ndarray
    tokens: jax.Array
    mask: jax.Array
    y: jax.Array
    w: jax.Array
    length: int


def pad_rows(data: Dataset, split: str, batch: Batch, sides: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, mask) of `batch`'s rows of `split` padded/truncated to `batch.length` on the given sides."""
    tokens, mask, _ = pad_batch(data.sequences(split, batch.ids), sides[0], sides[1], batch.length)
    return tokens, mask


def to_device(data: Dataset, split: str, batch: Batch, sides: tuple[str, str], weights: np.ndarray,
              dtype) -> SeqBatch:
    """Pad the batch in numpy and put tokens, mask, labels and `weights` on the default device."""
    tokens, mask = pad_rows(data, split, batch, sides)
    y = getattr(data, f"{split}_y")[batch.ids]
    tb, mb, yb, wb = jax.device_put((tokens.astype(np.int32), mask.astype(np.int32), y.astype(np.int32),
                                     np.asarray(weights, dtype=dtype)))
    return SeqBatch(batch.ids, batch.real_ids, tb, mb, yb, wb, int(tokens.shape[1]))


class SequencePipeline:
    """The training split batched by a BatchPlan (the shared one, or data.JaxOrderPlan in native mode) and padded
    to each batch's planned length, one epoch at a time."""

    def __init__(self, data: Dataset, plan: BatchPlan, spec: dict, sides: tuple[str, str], dtype):
        seq = spec["sequence"]
        self.data, self.plan, self.sides, self.dtype = data, plan, sides, np.dtype(dtype)
        self.loss_norm = seq["loss_norm"]
        self.kept = kept_lengths(data.lengths("train"), seq["max_len"], seq["buckets"])

    def weights(self, batch: Batch) -> np.ndarray:
        """m_i = loss_weights(w_i, L_i, loss_norm) for the batch's rows."""
        return loss_weights(batch.weights, self.kept[batch.ids], self.loss_norm)

    def epoch(self, epoch: int) -> Iterator[SeqBatch]:
        for batch in self.plan.batches(epoch):
            yield to_device(self.data, "train", batch, self.sides, self.weights(batch), self.dtype)
