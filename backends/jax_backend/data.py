"""The JAX input pipeline: manual batching, the idiom of the flax examples (JAX has no loader of its own).

Each plan Batch's ids index the split's numpy arrays; the rows go to the device with `jax.device_put`, cast to the
spec dtype explicitly (without `jax_enable_x64`, float64 would silently become float32; with it, a float32 run
must still say float32). Under `last_batch = "pad"` every batch has the static shape B, so the jitted step compiles
once; the weight column (0 for filler rows) keeps the loss Σw·ℓ/Σw equal to the ragged batch's mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import jax
import numpy as np

from common.batching import Batch, BatchPlan


@dataclass(frozen=True)
class DeviceBatch:
    """One batch on the device: `ids` (numpy, filler rows included), x (rows, F), y (rows,), w (rows,)."""

    ids: np.ndarray
    x: jax.Array
    y: jax.Array
    w: jax.Array


def to_device(x: np.ndarray, y: np.ndarray, batch: Batch, dtype) -> DeviceBatch:
    """Gather the batch's rows of (x, y) in numpy and put them, with the weights, on the default device."""
    xb, yb, wb = jax.device_put((x[batch.ids].astype(dtype), y[batch.ids].astype(np.int32),
                                 batch.weights.astype(dtype)))
    return DeviceBatch(batch.ids, xb, yb, wb)


class Pipeline:
    """The training split batched by the shared BatchPlan, one epoch at a time."""

    def __init__(self, x: np.ndarray, y: np.ndarray, plan: BatchPlan, dtype):
        self.x, self.y, self.plan, self.dtype = x, y, plan, np.dtype(dtype)

    def epoch(self, epoch: int) -> Iterator[DeviceBatch]:
        for batch in self.plan.batches(epoch):
            yield to_device(self.x, self.y, batch, self.dtype)
