"""The native input pipeline: tf.data fed with the shared BatchPlan's order (DESIGN §5, "Batching and order").

`tf.data.Dataset.shuffle` cannot reproduce the numpy order (and with buffer_size < N it is not even a uniform
permutation), so each epoch slices the rows in the plan's order with `from_tensor_slices` and lets tf.data's own
`.batch(B, drop_remainder=False)` cut the batches. `BatchPlan.slots` has already cut the remainder off under
"drop" and appended weight-0 filler under "pad"; under "keep" the ragged last batch is the one `.batch()` makes.
Each element is (x, y, w, ids); ids travel with the batch so the driver can check what the pipeline delivered.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from common.batching import BatchPlan


def epoch_dataset(x: np.ndarray, y: np.ndarray, plan: BatchPlan, epoch: int) -> tf.data.Dataset:
    """The epoch's batches (x, y, weights, ids); `x` already in the spec dtype, weights cast to it."""
    ids, weights = plan.slots(epoch)
    ds = tf.data.Dataset.from_tensor_slices((x[ids], y[ids], weights.astype(x.dtype), ids))
    return ds.batch(plan.batch_size, drop_remainder=False).prefetch(tf.data.AUTOTUNE)


def native_dataset(x: np.ndarray, y: np.ndarray, spec: dict) -> tf.data.Dataset:
    """Native mode (common.native): what a Keras user writes, iterated once per epoch.

    `shuffle(N, seed, reshuffle_each_iteration=True)` over the whole split (a full buffer, so a uniform
    permutation, new each epoch) then `.batch(B, drop_remainder=…)`: "drop" drops the ragged batch, "keep" and "pad"
    keep it (tf.data has no weight-0 filler idiom). All weights are 1; ids are the real rows.
    """
    b = spec["batching"]
    n = x.shape[0]
    ds = tf.data.Dataset.from_tensor_slices((x, y, np.ones(n, dtype=x.dtype), np.arange(n)))
    if b["shuffle"]:
        ds = ds.shuffle(n, seed=spec["seed"], reshuffle_each_iteration=True)
    return ds.batch(b["batch_size"], drop_remainder=b["last_batch"] == "drop").prefetch(tf.data.AUTOTUNE)
