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
- compiled: the same step under `tf.function(jit_compile=True)` (XLA compiles once per distinct shape). On feature
            and image data `Looped`, one `tf.function` call per epoch over a tf.data pipeline and ONE iterator
            made once, with the runner (`Features.batches`: the eager mode's `.batch(B)` of the same slots, read
            from tf.Variables that hold the current epoch's flat plan, each batch made when `get_next` asks for
            it). The call's inputs are the epoch's flat plan on the device (ids, weights, shared masks row by row,
            ε̂_t per step: `Planned.slots`); the program assigns them to those variables, then a `tf.while_loop`
            takes the epoch's S batches from the iterator, assigns ε̂_t and calls the compiled step per batch,
            recording each batch's ids (the pipeline and iterator cost nothing to build per epoch). On token data
            (padded or bucketed batches of varying T) and in native mode (tf.data's own shuffle, the idiom order)
            `Stepwise` as eager.
- fused:    `Fused`, one `tf.function(jit_compile=True)` per epoch: the split and the same plan cut into [S, B]
            full batches and the ragged "keep" batch on the device, a `tf.while_loop` over the full batches
            gathered with `tf.gather` (no tf.data: its iterator ops do not compile under XLA), the ragged batch
            as one more step in the same program; it returns the real per-step losses and records the ids it was
            given. Exact mode, feature and image data only (it needs the plan up front and static shapes).
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


class Planned(Stepwise):
    """What the one-call-per-epoch runners share: the epoch's plan as device tensors (`plan_inputs`), made on the
    host once per epoch; `step` stays the compiled single step (bench)."""

    def __init__(self, body, execution: str, pipeline, optimizer, masks):
        if not isinstance(pipeline, Features):
            raise ValueError(f"tf: execution = '{execution}' runs its epoch as one call on feature and image data only")
        super().__init__(body, "compiled", pipeline, optimizer, masks)
        self.body, self.plan = body, pipeline.plan

    def slots(self, epoch: int, first_step: int) -> tuple:
        """The epoch's flat plan (numpy): ids, weights (`BatchPlan.slots`), ε̂ of each step (None without ε̂) and
        each layer's shared dropout masks row by row ([slots, *layer.shape], step k's rows from common.dropout's
        draw for global step first_step + k), so `.batch(B)` of the rows gives every step its own."""
        ids, weights = self.plan.slots(epoch)
        b = self.plan.batch_size
        starts = range(0, ids.shape[0], b)
        eps = self.optimizer.epsilon_table(first_step, len(starts))
        masks = ()  # no draw per step where the stack has no shared masks (410 calls an epoch at B = 32)
        if self.masks.shapes:
            drawn = [self.masks(first_step + k, min(b, ids.shape[0] - i)) for k, i in enumerate(starts)]
            masks = tuple(np.concatenate([m[j] for m in drawn]) for j in range(len(self.masks.shapes)))
        return ids, weights.astype(self.pipeline.dtype), eps, masks

    def inputs(self, epoch: int, first_step: int) -> list:
        """[plan_inputs]: the program's one call's arguments, on the device."""
        return [self.plan_inputs(epoch, first_step)]

    def _record(self, ids: np.ndarray, losses: np.ndarray) -> EpochRun:
        """The epoch as fed: the flat `ids` cut into the plan's batches of B (the last one ragged under keep)."""
        b = self.plan.batch_size
        steps = [ids[i : i + b] for i in range(0, ids.shape[0], b)]
        return EpochRun(steps, [0] * len(steps), losses)


class Looped(Planned):
    """compiled on feature and image data: one `tf.function` (graph) per epoch over a tf.data pipeline and ONE
    iterator made once (module docstring). The program assigns the epoch's flat slots to the variables the pipeline
    reads (`Features.batches`), then a `tf.while_loop` takes S batches from the iterator, each into the
    XLA-compiled `step`; it returns the per-step losses and the ids each batch delivered. No Python runs between
    steps. The slot count, hence S and the variables' shapes, is the same every epoch (unbucketed plan)."""

    def __init__(self, body, execution: str, pipeline, optimizer, masks):
        super().__init__(body, execution, pipeline, optimizer, masks)
        n = self.plan.slots(0)[0].shape[0]
        self.steps = -(-n // self.plan.batch_size)

        def held(dtype, shape=()):
            return tf.Variable(tf.zeros((n, *shape), dtype), trainable=False)

        self.slots_held = {"ids": held(tf.int64), "weights": held(pipeline.dtype)}
        if masks.shapes:
            self.slots_held["masks"] = tuple(held(pipeline.dtype, shape) for shape in masks.shapes)
        self.batches = iter(pipeline.batches(self.slots_held, self.steps))
        self.program = tf.function(self._epoch, autograph=False)  # the module docstring, AUTOGRAPH

    def plan_inputs(self, epoch: int, first_step: int) -> tuple:
        """(ids, weights, ε̂ or None, masks) of `slots` as device tensors."""
        ids, weights, eps, masks = self.slots(epoch, first_step)
        return (
            tf.constant(ids),
            tf.constant(weights),
            None if eps is None else tf.constant(eps),
            tuple(tf.constant(m) for m in masks),
        )

    def _epoch(self, ids, weights, eps, masks):
        given = {"ids": ids, "weights": weights, **({"masks": masks} if masks else {})}
        assigned = tf.nest.map_structure(lambda held, t: held.assign(t, read_value=False), self.slots_held, given)

        def loop(k, losses, fed):
            batch = self.batches.get_next()
            if eps is not None:
                self.optimizer.epsilon_hat.assign(eps[k])
            ce = self.step(batch["x"], batch["y"], batch["weights"], *batch.get("masks", ()))
            return k + 1, losses.write(k, ce), fed.write(k, batch["ids"])

        with tf.control_dependencies(tf.nest.flatten(assigned)):  # every batch of this epoch reads this epoch's slots
            _, losses, fed = tf.while_loop(
                lambda k, *_: k < self.steps,
                loop,
                (
                    tf.constant(0),
                    tf.TensorArray(self.pipeline.dtype, size=self.steps),
                    tf.TensorArray(tf.int64, size=self.steps, infer_shape=False, element_shape=(None,)),
                ),
            )
        return losses.stack(), fed.concat()

    def run(self, epoch: int, first_step: int, inputs=None) -> EpochRun:
        ((ids, weights, eps, masks),) = self.inputs(epoch, first_step) if inputs is None else inputs
        losses, fed = self.program(ids, weights, eps, masks)
        return self._record(fed.numpy(), losses.numpy())


class Fused(Planned):
    """fused: one XLA program per epoch (module docstring)."""

    def __init__(self, body, execution: str, pipeline, optimizer, masks):
        super().__init__(body, execution, pipeline, optimizer, masks)
        self.x, self.y = pipeline.train["x"], pipeline.train["y"]
        self.program = tf.function(self._epoch, jit_compile=True)

    def plan_inputs(self, epoch: int, first_step: int) -> tuple:
        """The epoch's plan as device tensors: (full, tail), each (ids, weights, masks, ε̂) or None.

        full stacks the S complete batches ([S, B] ids and weights, [S, B, *layer.shape] masks, [S] ε̂); tail is the
        ragged last batch under "keep" ([r] ids, ...); both cut from `slots`.
        """
        ids, weights, eps, masks = self.slots(epoch, first_step)
        b = self.plan.batch_size
        s = ids.shape[0] // b

        def part(rows: slice, steps: slice, shape: tuple):
            if rows.stop <= rows.start:
                return None
            return (
                tf.constant(ids[rows].reshape(shape)),
                tf.constant(weights[rows].reshape(shape)),
                tuple(tf.constant(m[rows].reshape((*shape, *m.shape[1:]))) for m in masks),
                None if eps is None else tf.constant(eps[steps]),
            )

        return part(slice(0, s * b), slice(0, s), (s, b)), part(slice(s * b, ids.shape[0]), slice(s, s + 1), (-1,))

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

    def run(self, epoch: int, first_step: int, inputs=None) -> EpochRun:
        ((full, tail),) = self.inputs(epoch, first_step) if inputs is None else inputs
        losses = self.program(full, tail).numpy()
        fed = [part[0].numpy().reshape(-1) for part in (full, tail) if part is not None]  # the program's ids
        return self._record(np.concatenate(fed), losses)


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


def runner(execution: str, body, pipeline, optimizer, masks: Masks, planned: bool) -> Stepwise:
    """The epoch runner of an execution mode; `planned`: the epoch follows the shared BatchPlan (exact mode, no
    idiom order). Compiled stays `Stepwise` on token data and on tf.data's own shuffle (module docstring)."""
    if execution == "fused":
        return Fused(body, execution, pipeline, optimizer, masks)
    if execution == "compiled" and planned and isinstance(pipeline, Features):
        return Looped(body, execution, pipeline, optimizer, masks)
    return Stepwise(body, execution, pipeline, optimizer, masks)
