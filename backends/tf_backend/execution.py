"""How a TF training epoch executes: `spec.execution` (docs/design.md, "Execution modes").

The step is written once (`step_body`): `tf.GradientTape` over the model's training forward pass (the real rows
w > 0 go to the exact-mode batch_norm statistics), the loss Σw·ℓ/Σw (Keras "mean_with_sample_weight") plus
Σ model.losses (the regularizer penalties), and the Keras optimizer's `apply_gradients` on the trainable variables;
it returns the cross-entropy alone. The batch_norm moving statistics are non-trainable Keras variables that the
forward pass assigns, so every mode carries them: tf.function and XLA keep the assignments in the program. The
modes change only how TensorFlow runs it, always behind `run(epoch, first_step) -> common.driver.EpochRun`, with one
host sync per epoch:
- eager:    `Stepwise`, `tf.function` without XLA (TF's default for a custom loop), one call per pipeline batch;
            the input signature has None for B (and T), so ragged batches and new lengths reuse one graph;
            x is (None, F), (None, T) or (None, H, W, C), each dropout mask (None, *layer.shape).
- compiled: the same step under `tf.function(jit_compile=True)` (XLA compiles once per distinct shape).
- fused:    `Fused`, one `tf.function(jit_compile=True)` per epoch: the split and the epoch's plan (ids, weights,
            shared masks, ε̂_t) on the device, a `tf.while_loop` over the full batches gathered with `tf.gather`,
            the ragged "keep" batch as one more step in the same program; it returns the real per-step losses.
            Exact mode, feature and image data only (it needs the plan up front and static shapes).
AUTOGRAPH: the step (and the adapter's evaluation forward pass) is traced with `autograph=False`: it is
straight-line code, and Keras 3's layers and optimizers use `ops.cond`/`ops.while_loop`, never Python control
flow on tensors (they run under JAX's jit too), so autograph's source conversion buys nothing and cost 0.24 s of
every process's first trace (measured on the default run).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from backends.tf_backend.data import Features
from common.driver import EpochRun
from common.dropout import shared_masks
from common.spec import Spec

MODES = ("eager", "compiled", "fused")


def step_body(model, optimizer, loss_fn, dense_gradients: bool):
    """The train step as a Python function of (x, y, w, masks) → cross-entropy, for tf.function to trace.

    `dense_gradients` (the idiom sparse_embedding_adam off): turn an Embedding's sparse gradient
    (`tf.IndexedSlices`, one slice per token occurrence, duplicates unsummed) into the dense gradient first: Keras 3
    Adam/AdamW compute v with `ops.square` of the slices, i.e. Σ_k g_k² instead of (Σ_k g_k)² for a token seen k
    times (common.traps). Dense layers' gradients are dense already; the idiom keeps what a Keras user gets.
    """

    def body(x, y, w, masks):
        with tf.GradientTape() as tape:
            logits = model(x, masks=list(masks) if masks else None, real=w > 0, training=True)
            ce = loss_fn(y, logits, sample_weight=w)
            total = ce + sum(model.losses)
        variables = model.trainable_variables
        grads = tape.gradient(total, variables)
        if dense_gradients:
            grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return ce

    return body


class Stepwise:
    """eager / compiled: one tf.function step per pipeline batch (Rows)."""

    def __init__(self, body, execution: str, pipeline, optimizer, masks):
        self.pipeline, self.optimizer, self.masks = pipeline, optimizer, masks
        signature = [pipeline.x_spec, tf.TensorSpec((None,), tf.int64), tf.TensorSpec((None,), pipeline.dtype)]
        signature += [tf.TensorSpec((None, *shape), pipeline.dtype) for shape in masks.shapes]
        self.step = tf.function(
            lambda x, y, w, *keep: body(x, y, w, keep),
            input_signature=signature,
            jit_compile=execution != "eager",
            autograph=False,  # the module docstring, AUTOGRAPH
        )

    def inputs(self, epoch: int, first_step: int):
        """The epoch's batches from the tf.data pipeline (an iterator; `list()` of it holds them on the device)."""
        return self.pipeline.epoch(epoch)

    def run(self, epoch: int, first_step: int, inputs=None) -> EpochRun:
        ids, lengths, losses = [], [], []
        for k, rows in enumerate(self.inputs(epoch, first_step) if inputs is None else inputs):
            self.optimizer.before_step(first_step + k)
            losses.append(self.step(rows.x, rows.y, rows.weights, *self.masks(first_step + k, rows.ids.shape[0])))
            ids.append(rows.ids)
            lengths.append(rows.length)
        return EpochRun(ids, lengths, tf.stack(losses).numpy())


class Fused(Stepwise):
    """fused: one XLA program per epoch (module docstring); `step` is the compiled single step (bench)."""

    def __init__(self, body, execution: str, pipeline, optimizer, masks):
        if not isinstance(pipeline, Features):
            raise ValueError("tf: execution = 'fused' runs feature and image data only (static shapes)")
        super().__init__(body, "compiled", pipeline, optimizer, masks)
        self.body, self.plan = body, pipeline.plan
        self.x, self.y = tf.constant(pipeline.x["train"]), tf.constant(pipeline.y["train"])  # on the device once
        self.program = tf.function(self._epoch, jit_compile=True)

    def plan_inputs(self, epoch: int, first_step: int) -> tuple:
        """The epoch's plan as device tensors: (full, tail), each (ids, weights, masks, ε̂) or None.

        full stacks the S complete batches ([S, B] ids and weights, [S, B, *layer.shape] masks, [S] ε̂); tail is the
        ragged last batch under "keep" ([r] ids, ...). Masks are common.dropout's for global steps first_step,
        first_step + 1, …; ε̂ the optimizer's table (None when it has no ε̂).
        """
        ids, weights = self.plan.slots(epoch)
        b = self.plan.batch_size
        full_rows = (ids.shape[0] // b) * b
        eps = self.optimizer.epsilon_table(first_step, -(-ids.shape[0] // b))
        masks = [self.masks(first_step + k, min(b, ids.shape[0] - i)) for k, i in enumerate(range(0, ids.shape[0], b))]

        def part(lo: int, hi: int, steps: slice, shape: tuple):
            if hi <= lo:
                return None
            layer_masks = tuple(
                tf.constant(np.stack([m[j] for m in masks[steps]]).reshape((*shape, *layer)))
                for j, layer in enumerate(self.masks.shapes)
            )
            rows = weights[lo:hi].astype(self.pipeline.dtype).reshape(shape)
            return (
                tf.constant(ids[lo:hi].reshape(shape)),
                tf.constant(rows),
                layer_masks,
                None if eps is None else tf.constant(eps[steps]),
            )

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

            _, out = tf.while_loop(
                lambda i, _: i < n, loop, (tf.constant(0), tf.TensorArray(self.pipeline.dtype, size=n))
            )
            losses.append(out.stack())
        if tail is not None:
            ids, w, masks, eps = tail
            losses.append(self._one(ids, w, list(masks), None if eps is None else eps[0])[None])
        return tf.concat(losses, 0)

    def inputs(self, epoch: int, first_step: int) -> list:
        """[plan_inputs]: the program's one call's arguments, on the device."""
        return [self.plan_inputs(epoch, first_step)]

    def run(self, epoch: int, first_step: int, inputs=None) -> EpochRun:
        ((full, tail),) = self.inputs(epoch, first_step) if inputs is None else inputs
        losses = self.program(full, tail).numpy()
        slots, b = self.plan.slots(epoch)[0], self.plan.batch_size
        ids = [slots[i : i + b] for i in range(0, slots.shape[0], b)]
        return EpochRun(ids, [0] * len(ids), losses)


class Masks:
    """The shared dropout masks of each global step (common.dropout), as the step's extra inputs; `shapes` holds
    each mask's per-row shape (width,) or (H, W, C), empty when the stack draws none (`shared` False: the idiom
    dropout_rng, Keras's own Dropout; or no dropout layer with p > 0)."""

    def __init__(self, spec: Spec, layers, shared: bool):
        self.seed, self.layers, self.dtype = spec.seed, layers, spec.dtype
        drawn = shared_masks(self.seed, 1, layers, 0, self.dtype) if shared else None
        self.shapes = [m.shape[1:] for m in drawn] if drawn else []

    def __call__(self, step: int, rows: int) -> list[np.ndarray]:
        return shared_masks(self.seed, step, self.layers, rows, self.dtype) if self.shapes else []


def runner(execution: str, body, pipeline, optimizer, masks: Masks) -> Stepwise:
    """The epoch runner of an execution mode."""
    return (Fused if execution == "fused" else Stepwise)(body, execution, pipeline, optimizer, masks)
