"""The JAX input pipeline: manual batching, the idiom of the flax examples (JAX has no loader of its own).

Each Batch's ids index the split's numpy arrays; the rows go to the device with `jax.device_put`, cast to the
spec dtype explicitly (without `jax_enable_x64`, float64 would silently become float32; with it, a float32 run
must still say float32). Under `last_batch = "pad"` every batch has the static shape B, so the jitted step compiles
once; the weight column (0 for filler rows) keeps the loss Σw·ℓ/Σw equal to the ragged batch's mean.

Exact mode follows the shared BatchPlan. Native mode (common.native) draws its own order, what a JAX user writes:
`jax.random.permutation(jax.random.fold_in(PRNGKey(seed), epoch), N)`, brought to numpy to index the arrays
(`JaxOrderPlan`); the last-batch rules are the plan's, pad included (weight-0 filler, the static-shape idiom).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import jax
import numpy as np

from common.batching import Batch, BatchPlan


@dataclass(frozen=True)
class DeviceBatch:
    """One batch on the device: `ids` (numpy, filler rows included), `real_ids` (numpy, weight > 0 only),
    x (rows, F), y (rows,), w (rows,)."""

    ids: np.ndarray
    real_ids: np.ndarray
    x: jax.Array
    y: jax.Array
    w: jax.Array


def to_device(x: np.ndarray, y: np.ndarray, batch: Batch, dtype) -> DeviceBatch:
    """Gather the batch's rows of (x, y) in numpy and put them, with the weights, on the default device."""
    xb, yb, wb = jax.device_put((x[batch.ids].astype(dtype), y[batch.ids].astype(np.int32),
                                 batch.weights.astype(dtype)))
    return DeviceBatch(batch.ids, batch.real_ids, xb, yb, wb)


def native_order(seed: int, epoch: int, n_rows: int) -> np.ndarray:
    """The native-mode shuffle of epoch `epoch` (0-based): jax.random's permutation, as numpy row ids."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), epoch)
    return np.asarray(jax.random.permutation(key, n_rows))


@dataclass(frozen=True)
class JaxOrderPlan(BatchPlan):
    """A BatchPlan whose shuffled order is `native_order` instead of the shared numpy one (native mode); keep,
    drop and pad cut the batches exactly as the shared plan does."""

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n_rows)
        return native_order(self.seed, epoch, self.n_rows)


class Pipeline:
    """The training split batched by a BatchPlan (the shared one, or JaxOrderPlan), one epoch at a time."""

    def __init__(self, x: np.ndarray, y: np.ndarray, plan: BatchPlan, dtype):
        self.x, self.y, self.plan, self.dtype = x, y, plan, np.dtype(dtype)

    def epoch(self, epoch: int) -> Iterator[DeviceBatch]:
        for batch in self.plan.batches(epoch):
            yield to_device(self.x, self.y, batch, self.dtype)
