"""How the TF train step executes: `spec["execution"]` (common/spec.py, DESIGN §7).

The step itself is written once (`step_body`): a `tf.GradientTape` over the Keras model's training forward pass,
the cross-entropy Σw·ℓ/Σw plus Σ model.losses, and the Keras optimizer's `apply_gradients`. The modes only change
how TensorFlow runs it:

- eager:    `tf.function` without XLA, TF's default for a custom loop: one TF graph per step, run kernel by kernel
            by the TF executor. Its `input_signature` has a None batch dimension, so the ragged last batch under
            "keep" reuses the graph.
- compiled: the same step under `tf.function(jit_compile=True)`: forward, backward and the Keras optimizer update
            are one XLA executable. One trace; XLA specialises on shapes, so a ragged last batch costs one extra
            (cached) compilation, not a retrace.
- fused:    `FusedEpoch`, one `tf.function(jit_compile=True)` per epoch: the training split and the epoch's plan
            (row ids, row weights, shared dropout masks, Keras ε̂_t) are on the device, a `tf.while_loop` runs the
            full batches, each gathered on the device with `tf.gather`, and the ragged last batch ("keep") runs as
            one extra step after the loop inside the same program (its shape is static per epoch). Exact mode only:
            it needs the shared BatchPlan up front.

Keras Adam's per-step ε̂_t (backends.tf_backend.optim) is a Keras variable: eager and compiled read it at run time
after the adapter assigns it; the fused loop assigns it from a per-step table inside the program.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from common.batching import BatchPlan
from common.dropout import shared_masks

MODES = ("eager", "compiled", "fused")


def step_body(model, optimizer, loss_fn, dense_gradients: bool = False):
    """The train step as a Python function of (x, y, w, masks) → cross-entropy, for tf.function to trace.

    `dense_gradients` (exact-mode sequence models): turn the Embedding's sparse gradient (`tf.IndexedSlices`, one
    slice per token occurrence, duplicates unsummed) into the dense (vocab, E) gradient before the optimizer sees
    it. Keras 3 Adam/AdamW on TF compute v ← v + (1−β2)·(ops.square(g) − v), and `ops.square` of IndexedSlices
    squares each occurrence's slice before the duplicates are summed: v gets Σ_k g_k² instead of (Σ_k g_k)² for a
    token seen k times in the batch (SGD and momentum are linear in g and unaffected). Whenever a penalty touches
    the embedding, TF's gradient aggregation densifies it anyway, which is why the trap hides behind l1/l2.
    """

    def body(x, y, w, masks):
        with tf.GradientTape() as tape:
            logits = model(x, masks=list(masks) if masks else None, training=True)
            ce = loss_fn(y, logits, sample_weight=w)
            total = ce + sum(model.losses)
        variables = model.trainable_variables
        grads = tape.gradient(total, variables)
        if dense_gradients:
            grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        optimizer.apply_gradients(zip(grads, variables))
        return ce

    return body


def compile_step(body, execution: str, n_features: int, dtype: str, mask_widths: list[int],
                 x_spec: tf.TensorSpec | None = None):
    """The single step as a tf.function: graph only for "eager", XLA (`jit_compile=True`) otherwise.

    `x_spec` replaces the (None, n_features) feature signature; sequence models pass (None, None) int64 tokens, so
    neither the ragged last batch nor a new padded length T retraces the graph (under XLA each new (B, T) shape is
    one more cached XLA compilation of the same trace).
    """
    x_spec = tf.TensorSpec((None, n_features), dtype) if x_spec is None else x_spec
    signature = [x_spec, tf.TensorSpec((None,), tf.int64),
                 tf.TensorSpec((None,), dtype)] + [tf.TensorSpec((None, w), dtype) for w in mask_widths]

    def step(x, y, w, *masks):
        return body(x, y, w, masks)

    return tf.function(step, input_signature=signature, jit_compile=execution != "eager")


class FusedEpoch:
    """One XLA program per epoch (see the module docstring); `run(epoch, first_step)` → the epoch's losses."""

    def __init__(self, body, x: np.ndarray, y: np.ndarray, plan: BatchPlan, spec: dict, mask_widths: list[int],
                 optimizer):
        self.body, self.plan, self.optimizer = body, plan, optimizer
        self.dtype, self.seed = spec["dtype"], spec["seed"]
        self.rate, self.widths = spec["regularization"]["dropout"], mask_widths
        self.x, self.y = tf.constant(x), tf.constant(y)  # the training split, placed once on the current device
        self.program = tf.function(self._epoch, jit_compile=True)

    def plan_inputs(self, epoch: int, first_step: int) -> tuple:
        """The epoch's plan as device tensors: (full, tail), each (ids, weights, masks, ε̂) or None.

        full stacks the S complete batches ([S, B] ids and weights, [S, B, width] masks, [S] ε̂); tail is the
        ragged last batch under "keep" ([r] ids, ...). Masks come from common.dropout for global steps
        first_step, first_step + 1, …; ε̂ from the optimizer's table (None when it has no ε̂).
        """
        ids, weights = self.plan.slots(epoch)
        b = self.plan.batch_size
        full_rows = (ids.shape[0] // b) * b
        eps = self.optimizer.epsilon_table(first_step, -(-ids.shape[0] // b))
        masks = [shared_masks(self.seed, first_step + k, self.rate, min(b, ids.shape[0] - i), self.widths, self.dtype)
                 for k, i in enumerate(range(0, ids.shape[0], b))]

        def part(lo: int, hi: int, steps: slice, shape: tuple):
            if hi <= lo:
                return None
            layer_masks = tuple(tf.constant(np.stack([m[j] for m in masks[steps]]).reshape(shape + (w,)))
                                for j, w in enumerate(self.widths)) if self.widths else ()
            rows = weights[lo:hi].astype(self.dtype).reshape(shape)
            return (tf.constant(ids[lo:hi].reshape(shape)), tf.constant(rows), layer_masks,
                    None if eps is None else tf.constant(eps[steps]))

        s = full_rows // b
        return part(0, full_rows, slice(0, s), (s, b)), part(full_rows, ids.shape[0], slice(s, s + 1), (-1,))

    def _one(self, ids, w, masks, eps):
        if eps is not None:
            self.optimizer.epsilon_hat.assign(eps)
        return self.body(tf.gather(self.x, ids), tf.gather(self.y, ids), w, masks)

    def _epoch(self, full, tail):
        losses = []
        if full is not None:
            ids, w, masks, eps = full
            n = ids.shape[0]

            def loop(i, out):
                ce = self._one(ids[i], w[i], [m[i] for m in masks], None if eps is None else eps[i])
                return i + 1, out.write(i, ce)

            _, out = tf.while_loop(lambda i, _: i < n, loop, (tf.constant(0), tf.TensorArray(self.dtype, size=n)))
            losses.append(out.stack())
        if tail is not None:
            ids, w, masks, eps = tail
            losses.append(self._one(ids, w, list(masks), None if eps is None else eps[0])[None])
        return tf.concat(losses, 0)

    def run(self, epoch: int, first_step: int) -> tf.Tensor:
        """Run epoch `epoch` (0-based) whose first step is global step `first_step`; the per-step losses, unsynced."""
        self.optimizer.check_next_step(first_step)
        full, tail = self.plan_inputs(epoch, first_step)
        return self.program(full, tail)
