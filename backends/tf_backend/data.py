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


def naive_epoch_dataset(x: np.ndarray, y: np.ndarray, plan: BatchPlan, epoch: int) -> tf.data.Dataset:
    """The same epoch as `epoch_dataset`, the way a naive port writes it (benchmarks only: the "naive" loader).

    `Dataset.from_generator` over a Python generator yielding one row (x, y, w, id) at a time, then `.batch(B)`,
    no prefetch: every row crosses the Python ⇄ TF boundary on its own.
    """
    ids, weights = plan.slots(epoch)
    weights = weights.astype(x.dtype)

    def rows():
        for k, i in enumerate(ids):
            yield x[i], y[i], weights[k], i

    signature = (tf.TensorSpec((x.shape[1],), x.dtype), tf.TensorSpec((), tf.int64),
                 tf.TensorSpec((), x.dtype), tf.TensorSpec((), tf.int64))
    return tf.data.Dataset.from_generator(rows, output_signature=signature).batch(plan.batch_size)
