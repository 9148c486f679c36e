"""Oracle input pipeline: plain numpy indexing of the training split with each plan batch's ids; for sequence data
the rows are padded to the plan's length T with common.padding.pad_batch (numpy's resolved sides) and carry the
loss row weights m_i = common.padding.loss_weights(w_i, kept_lengths(n_i), loss_norm)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.batching import Batch, BatchPlan
from common.datasets import Dataset
from common.padding import kept_lengths, loss_weights, pad_batch, resolve_sides


@dataclass(frozen=True)
class ArrayBatch:
    ids: np.ndarray
    x: np.ndarray
    y: np.ndarray
    weights: np.ndarray


def split_arrays(x: np.ndarray, y: np.ndarray, batch: Batch) -> ArrayBatch:
    """The batch's rows of (x, y) in float64, with its weights."""
    return ArrayBatch(batch.ids, x[batch.ids].astype(np.float64), y[batch.ids], batch.weights.astype(np.float64))


def epoch_batches(plan: BatchPlan, epoch: int, x: np.ndarray, y: np.ndarray):
    """The epoch's plan batches as float64 arrays."""
    for batch in plan.batches(epoch):
        yield split_arrays(x, y, batch)


@dataclass(frozen=True)
class SequenceBatch:
    """One padded sequence batch: tokens (B, T) int64, token mask (B, T) bool, kept lengths L_i, labels, the
    plan weights w (1 real, 0 filler) and the loss row weights m (common.padding.loss_weights)."""

    ids: np.ndarray
    tokens: np.ndarray
    mask: np.ndarray
    kept: np.ndarray
    y: np.ndarray
    weights: np.ndarray
    row_weights: np.ndarray

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])


def sequence_batch(spec: dict, data: Dataset, split: str, batch: Batch) -> SequenceBatch:
    """The batch's rows of `split` padded to the plan's length with numpy's resolved sides (common.padding)."""
    seq = spec["sequence"]
    side, truncate = resolve_sides(spec, "numpy")
    tokens, mask, kept = pad_batch(data.sequences(split, batch.ids), side, truncate, batch.length)
    rows = kept_lengths(data.lengths(split)[batch.ids], seq["max_len"], seq["buckets"])
    weights = batch.weights.astype(np.float64)
    return SequenceBatch(batch.ids, tokens, mask, kept, getattr(data, f"{split}_y")[batch.ids], weights,
                         loss_weights(weights, rows, seq["loss_norm"]))


def sequence_epoch_batches(spec: dict, plan: BatchPlan, epoch: int, data: Dataset):
    """The epoch's plan batches of the training split, padded."""
    for batch in plan.batches(epoch):
        yield sequence_batch(spec, data, "train", batch)
