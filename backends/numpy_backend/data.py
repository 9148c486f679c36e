"""Oracle input pipeline: plain numpy indexing of the training split with each plan batch's ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.batching import Batch, BatchPlan


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
