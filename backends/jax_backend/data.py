"""The JAX input pipeline: manual batching, the idiom of the flax examples (JAX has no loader of its own).

Each Batch's ids index the split's numpy arrays; the rows go to the device with `jax.device_put`, cast to the
spec dtype explicitly (without `jax_enable_x64`, float64 would silently become float32; with it, a float32 run
must still say float32). Under `last_batch = "pad"` every batch has the static shape B, so the jitted step compiles
once; the weight column (0 for filler rows) keeps the loss Σw·ℓ/Σw equal to the ragged batch's mean.

Exact mode follows the shared BatchPlan. Native mode (common.native) draws its own order, what a JAX user writes:
`jax.random.permutation(jax.random.fold_in(PRNGKey(seed), epoch), N)`, brought to numpy to index the arrays
(`JaxOrderPlan`); the last-batch rules are the plan's, pad included (weight-0 filler, the static-shape idiom).

Loaders (LOADERS, timed alone by the throughput benchmark; all yield the same DeviceBatch for the same plan):
- "naive":      per-row Python indexing stacked into a batch, then three separate `jnp.asarray` transfers (the
                map-style "dataset[i]" idiom without a loader);
- "fast":       `Pipeline`, numpy fancy indexing of the whole batch + one `jax.device_put` per batch (the adapter's);
- "prefetched": the split `device_put` once (`on_device`); per batch only the ids and weights travel, and the rows
                are gathered on the device by one jitted `jnp.take` (`gather`), as the fused mode does inside its scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import jax
import jax.numpy as jnp
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


class NaivePipeline(Pipeline):
    """Loader "naive": each row indexed on its own in Python, stacked, then moved array by array."""

    def epoch(self, epoch: int) -> Iterator[DeviceBatch]:
        for batch in self.plan.batches(epoch):
            xb = np.stack([self.x[i].astype(self.dtype) for i in batch.ids])
            yb = np.array([self.y[i] for i in batch.ids], dtype=np.int32)
            yield DeviceBatch(batch.ids, batch.real_ids, jnp.asarray(xb), jnp.asarray(yb),
                              jnp.asarray(batch.weights.astype(self.dtype)))


def on_device(x: np.ndarray, y: np.ndarray, dtype) -> tuple[jax.Array, jax.Array]:
    """The whole split on the default device once: x in the spec dtype, y as int32."""
    return jax.device_put((x.astype(dtype), y.astype(np.int32)))


def take_rows(x: jax.Array, y: jax.Array, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rows `ids` (int32, in range by construction, hence mode "clip": no out-of-bounds fill) of a device split."""
    return jnp.take(x, ids, axis=0, mode="clip"), jnp.take(y, ids, axis=0, mode="clip")


gather = jax.jit(take_rows)


class PrefetchedPipeline(Pipeline):
    """Loader "prefetched": the split lives on the device; each batch is an on-device gather of the plan's ids."""

    def __init__(self, x: np.ndarray, y: np.ndarray, plan: BatchPlan, dtype):
        super().__init__(x, y, plan, dtype)
        self.x_dev, self.y_dev = on_device(x, y, self.dtype)

    def epoch(self, epoch: int) -> Iterator[DeviceBatch]:
        for batch in self.plan.batches(epoch):
            ids, w = jax.device_put((batch.ids.astype(np.int32), batch.weights.astype(self.dtype)))
            xb, yb = gather(self.x_dev, self.y_dev, ids)
            yield DeviceBatch(batch.ids, batch.real_ids, xb, yb, w)


LOADERS = {"naive": NaivePipeline, "fast": Pipeline, "prefetched": PrefetchedPipeline}
