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
