"""The JAX backend as a common.driver.Adapter: flax.linen MLP + optax, trained by ONE pure step function

    step(params, opt_state, x, y, w, masks, step) → (params, opt_state, loss),
    loss = Σ w·ℓ / Σ w,  ℓ = optax.softmax_cross_entropy_with_integer_labels (per row; optax does not reduce),

executed as `spec["execution"]` says (common.spec; each mode reproduces the oracle in exact mode):
- eager:    the step is NOT jitted: JAX dispatches it op by op (each primitive, or library function that is itself
            jitted such as jax.nn.relu, runs as its own small XLA computation). Slow but honest: what an un-jitted
            JAX loop costs.
- compiled: `jax.jit(step)`, one XLA program per step, fed batch by batch by the manual numpy pipeline (data.py).
- fused:    `jax.jit` of a `lax.scan` over a whole epoch: the training split is put on the device once
            (data.on_device), the epoch's plan ids, weights, shared dropout masks (exact mode: the very numpy masks
            of common.dropout, stacked to (steps, rows, width)) and step numbers travel as device arrays, and the
            scanned body gathers its rows on the device (`jnp.take`) before the same step function. Under
            last_batch "keep" the ragged last batch is a second, one-step scan of shape (1, r). The driver still
            calls train_step once per step: the first call of an epoch runs the fused epoch and every call returns
            its step's loss (epoch_batches yields the plan's batches, so the driver still checks the ids).
            Evaluation is jitted in every mode (it is not what the modes compare).

jit compiles once per distinct input shape: under last_batch "pad" every batch has the shape B (one compile), a
ragged "keep" batch adds one more (compiled and fused alike). `compile_count` counts them: it is incremented by the
Python body of the jitted function, which only runs when JAX traces a new signature (eager: always 0).

Native mode (common.native, jax column): order `jax.random.permutation(fold_in(PRNGKey(seed), epoch), N)` with
the plan's last-batch cuts (data.JaxOrderPlan; pad keeps its weight-0 filler, so one compile, but `batch_ids`
reports the real rows only), flax's default init `model.init(PRNGKey(seed), x)`, `nn.Dropout` with the key
`fold_in(fold_in(PRNGKey(seed), DROPOUT_STREAM), step)` (its own stream: `fold_in(PRNGKey(seed), step)` would be
the very key that shuffled epoch `step`), folded inside the step from the step number, which is an argument (not
a closure constant), so it triggers no recompiles and, once jitted, no per-step dispatch (fused: the scanned step
numbers), the optax chain "as written" (optim.build_native) and L1 as a jnp.abs loss term. The loss is still
returned as the cross-entropy alone (the L1 term is differentiated, not recorded).

`jax_enable_x64` is process-global (one reason each backend runs in its own process). make_adapter turns it on for
EVERY spec, and every array is given its dtype explicitly (data.py, model.load, the masks), so a float32 run stays
float32. Why float32 too: (1) the worker runs many jobs in one process, so a float32 job after a float64 one would
otherwise run under different rules than one before it; (2) with x64 off optax evaluates Adam's bias correction
1 − β^t in float32 from β2 rounded to float32 (relative error ≈ 2e-5 for β2 = 0.999), which alone drives
float32 Adam runs past the 1e-4 tolerance against the oracle within ~20 steps; with x64 on, the Python-scalar math
is float64 (as in torch, which computes 1 − β^t in Python floats) and only the result is cast to float32.
What x64 costs a float32 run: nothing in the tensor math. Parameters, data, masks and optimizer moments are float32,
so XLA emits float32 matmuls; only scalars become 64-bit (Adam's bias correction, the step counters; the plan ids
are passed as int32). tests/backends/test_jax_backend.py checks on the fused scan's jaxpr that every non-scalar
floating value is float32.

Sequence models (model.kind seq_pool / rnn; sequence_model.py, sequence_data.py): the same structure with the step

    seq_step(params, opt_state, tokens, mask, y, m, masks, step) → (params, opt_state, loss),
    loss = Σ m·ℓ / max(Σ m, 1),  m = common.padding.loss_weights(plan weights, kept lengths, loss_norm),

fed by the manual padding pipeline (sequence_data.SequencePipeline: common.padding.pad_batch to the plan's T with
the sides resolved for "jax"). jit compiles once per (B, T) shape: with length buckets and last_batch "pad" at most
one compile per bucket; `compile_count` counts these train-step compiles too (eager: 0). Executions eager and
compiled only ("fused" is refused by common.spec validation for sequences: no static epoch shape). Native mode as
for the MLP: JaxOrderPlan order (bucketed the same way), flax's default init, nn.Dropout, optax as written.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from backends.jax_backend import data as pipeline
from backends.jax_backend import model as mlp
from backends.jax_backend import optim
from backends.jax_backend import sequence_data
from backends.jax_backend import sequence_model as seqm
from common.padding import resolve_sides
from common.spec import execution_of, is_sequence
from common.dropout import shared_masks
from common.regularization import Regularization

DROPOUT_STREAM = 0x64726F70  # "drop": native dropout keys fold_in(fold_in(PRNGKey(seed), this), step)
EXECUTIONS = ("eager", "compiled", "fused")


class JaxAdapter:
    name = "jax"

    def __init__(self, spec: dict):
        self.spec = spec
        self.dtype = np.dtype(spec["dtype"])
        self.execution = execution_of(spec, "jax")
        if self.execution not in EXECUTIONS:
            raise ValueError(f"jax: unknown execution mode '{self.execution}' (modes: {', '.join(EXECUTIONS)})")
        self.compile_count = 0
        self.sequence = is_sequence(spec)
        if self.sequence and self.execution == "fused":
            raise ValueError("jax: sequence models run execution 'eager' or 'compiled' (no static epoch shape)")

    def versions(self) -> dict[str, str]:
        import flax
        import jaxlib

        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
                "optax": optax.__version__}

    def device(self) -> str:
        d = jax.devices()[0]
        return "cpu" if d.platform == "cpu" else f"{d.platform}:{d.id} ({d.device_kind})"

    def prepare(self, spec, data, plan, params):
        self.data = data
        self.native = spec["mode"] == "native"
        reg = Regularization.from_spec(spec)
        if self.sequence:
            return self._prepare_sequence(spec, data, plan, params, reg)
        if self.native:
            plan = pipeline.JaxOrderPlan.from_spec(spec, data.train_x.shape[0])
        self.plan = plan
        self.pipeline = pipeline.Pipeline(data.train_x, data.train_y, plan, self.dtype)
        self.mask_rate = 0.0 if self.native else spec["regularization"]["dropout"]
        native_rate = spec["regularization"]["dropout"] if self.native else 0.0
        self.model = mlp.MLP(tuple(spec["model"]["hidden"]), data.n_classes, spec["model"]["activation"],
                             native_rate, jnp.dtype(self.dtype))
        if self.native:
            self.params = mlp.native_init(self.model, spec["seed"], data.train_x[:1])
            names = mlp.to_canonical(self.params)
            self.tx = optim.build_native(spec, reg, names)
            self.penalty = optim.native_l1_penalty(spec, reg, names)
        else:
            self.params = mlp.load(self.model, params, data.n_features)
            self.tx = optim.build(spec, reg, params)
            self.penalty = None
        self.opt_state = self.tx.init(self.params)
        self.key = jax.random.fold_in(jax.random.PRNGKey(spec["seed"]), DROPOUT_STREAM)
        self._eval = jax.jit(self._eval_batch)
        self._step = self._train_step if self.execution == "eager" else jax.jit(self._counted(self._train_step))
        if self.execution == "fused":
            self._fused = jax.jit(self._counted(self._scan_steps))
            self.split = pipeline.on_device(data.train_x, data.train_y, self.dtype)
            self._epoch_losses = None

    def _prepare_sequence(self, spec, data, plan, params, reg):
        if self.native:
            plan = pipeline.JaxOrderPlan.from_spec(spec, data.train_x.shape[0], data.train_lengths)
        self.plan = plan
        self.sides = resolve_sides(spec, "jax")
        self.pipeline = sequence_data.SequencePipeline(data, plan, spec, self.sides, self.dtype)
        self.mask_rate = 0.0 if self.native else spec["regularization"]["dropout"]
        native_rate = spec["regularization"]["dropout"] if self.native else 0.0
        self.model = seqm.build(spec, data.vocab, data.n_classes, native_rate, self.dtype)
        if self.native:
            self.params = seqm.native_init(self.model, spec["seed"])
            names = seqm.to_canonical(self.params)
            self.tx = optim.build_native(spec, reg, names, seqm.to_native)
            self.penalty = optim.native_l1_penalty(spec, reg, names, seqm.to_native)
        else:
            self.params = seqm.load(self.model, params)
            self.tx = optim.build(spec, reg, params, seqm.to_native)
            self.penalty = None
        self.opt_state = self.tx.init(self.params)
        self.key = jax.random.fold_in(jax.random.PRNGKey(spec["seed"]), DROPOUT_STREAM)
        self._eval = jax.jit(self._seq_eval_batch)
        self._step = (self._seq_train_step if self.execution == "eager"
                      else jax.jit(self._counted(self._seq_train_step)))

    def _seq_train_step(self, params, opt_state, tokens, mask, y, m, masks, step):
        rngs = {"dropout": self.dropout_key(step)} if self.model.dropout > 0.0 else None

        def loss_fn(p):
            logits = self.model.apply(p, tokens, mask, masks, train=True, rngs=rngs)
            ce = (jnp.sum(m * optax.softmax_cross_entropy_with_integer_labels(logits, y))
                  / jnp.maximum(jnp.sum(m), 1.0))
            return (ce if self.penalty is None else ce + self.penalty(p)), ce

        (_, loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def _seq_eval_batch(self, params, tokens, mask, y, w):
        logits = self.model.apply(params, tokens, mask)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(w * ce), jnp.sum(w * (jnp.argmax(logits, axis=-1) == y))

    def _counted(self, fn):
        def traced(*args):
            self.compile_count += 1  # Python side effect: runs at trace time only
            return fn(*args)

        return traced

    def _train_step(self, params, opt_state, x, y, w, masks, step):
        # native nn.Dropout only (exact mode multiplies by `masks`); traced, so no per-step dispatch once jitted
        rngs = {"dropout": self.dropout_key(step)} if self.model.dropout > 0.0 else None

        def loss_fn(p):
            logits = self.model.apply(p, x, masks, train=True, rngs=rngs)
            ce = jnp.sum(w * optax.softmax_cross_entropy_with_integer_labels(logits, y)) / jnp.sum(w)
            return (ce if self.penalty is None else ce + self.penalty(p)), ce

        (_, loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def _scan_steps(self, params, opt_state, x_all, y_all, ids, w, masks, steps):
        """lax.scan of _train_step over stacked steps: ids (S, B) int32, w (S, B), masks [(S, B, width)] or None,
        steps (S,) the global step numbers (native dropout keys); rows gathered on the device."""

        def body(state, xs):
            ids_t, w_t, masks_t, step_t = xs
            x, y = pipeline.take_rows(x_all, y_all, ids_t)
            params, opt_state, loss = self._train_step(*state, x, y, w_t, masks_t, step_t)
            return (params, opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (ids, w, masks, steps))
        return params, opt_state, losses

    def _eval_batch(self, params, x, y, w):
        logits = self.model.apply(params, x)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(w * ce), jnp.sum(w * (jnp.argmax(logits, axis=-1) == y))

    def epoch_batches(self, epoch):
        if self.execution == "fused":  # the rows are gathered on the device inside the scan
            return self.plan.batches(epoch)
        return self.pipeline.epoch(epoch)

    def batch_ids(self, batch):
        return batch.real_ids if self.native else batch.ids  # native: the real rows only (no pad filler)

    def batch_length(self, batch) -> int:
        """T of a sequence batch as padded by the pipeline; 0 for feature batches."""
        return int(batch.length) if self.sequence else 0

    def train_step(self, batch, step, masks):
        if self.sequence:
            if masks is not None:
                masks = [jnp.asarray(m, dtype=self.dtype) for m in masks]
            self.params, self.opt_state, loss = self._step(self.params, self.opt_state, batch.tokens, batch.mask,
                                                           batch.y, batch.w, masks, step)
            return float(loss)
        if self.execution == "fused":
            return self._fused_train_step(batch, step, masks)
        if masks is not None:
            masks = [jnp.asarray(m, dtype=self.dtype) for m in masks]
        return float(self.advance(batch.x, batch.y, batch.w, masks, step))

    def _fused_train_step(self, batch, step, masks) -> float:
        epoch, index = divmod(step - 1, self.plan.steps_per_epoch)
        if index == 0:
            self._epoch_losses = np.asarray(self.run_epoch(epoch, step))
        own = self.step_masks(step, batch.rows)  # what run_epoch stacked for this step
        if (own is None) != (masks is None) or (own is not None and not all(map(np.array_equal, own, masks))):
            raise RuntimeError(f"jax fused: the dropout masks of step {step} differ from the driver's")
        return float(self._epoch_losses[index])

    # ---- the execution modes, also driven directly by bench.py ------------------------------------------------

    def step_masks(self, step: int, rows: int) -> list[np.ndarray] | None:
        """Exact mode: the shared numpy masks of global step `step` (common.dropout); None without dropout."""
        return shared_masks(self.spec["seed"], step, self.mask_rate, rows, self.spec["model"]["hidden"], self.dtype)

    def advance(self, x, y, w, masks, step: int) -> jax.Array:
        """eager / compiled: one update on a device batch; returns the loss without waiting for it."""
        self.params, self.opt_state, loss = self._step(self.params, self.opt_state, x, y, w, masks, step)
        return loss

    def stacked(self, ids: np.ndarray, w: np.ndarray, first_step: int) -> tuple:
        """fused: S consecutive same-shape batches, ids and weights (S, rows), as device arrays (ids int32, w,
        masks stacked per layer from step_masks, steps int32 from `first_step`)."""
        steps = np.arange(first_step, first_step + ids.shape[0], dtype=np.int32)
        per_step = [self.step_masks(int(t), ids.shape[1]) for t in steps]
        masks = None if per_step[0] is None else [np.stack(layer) for layer in zip(*per_step)]
        return jax.device_put((ids.astype(np.int32), w.astype(self.dtype), masks, steps))

    def advance_on_device(self, ids, w, masks, steps) -> jax.Array:
        """fused: the scanned updates over stacked steps (see `stacked`); returns their losses without waiting."""
        self.params, self.opt_state, losses = self._fused(self.params, self.opt_state, *self.split, ids, w, masks,
                                                          steps)
        return losses

    def run_epoch(self, epoch: int, first_step: int) -> jax.Array:
        """One training epoch in this execution mode (global steps from `first_step`); its losses, not waited on.
        eager / compiled: the "fast" pipeline batch by batch; fused: one scan over the full batches, plus a one-step
        scan for a ragged "keep" tail."""
        if self.execution != "fused":
            losses = []
            for t, batch in enumerate(self.pipeline.epoch(epoch), start=first_step):
                masks = self.step_masks(t, batch.x.shape[0])
                masks = None if masks is None else jax.device_put(masks)
                losses.append(self.advance(batch.x, batch.y, batch.w, masks, t))
            return jnp.stack(losses)
        b = self.plan.batch_size
        ids, w = self.plan.slots(epoch)  # the plan's batches are its consecutive chunks of batch_size
        full = ids.shape[0] // b
        chunks = [(ids[:full * b].reshape(full, b), w[:full * b].reshape(full, b), first_step)] if full else []
        if ids.shape[0] > full * b:  # a ragged "keep" tail: a one-step scan of its own shape
            chunks.append((ids[None, full * b:], w[None, full * b:], first_step + full))
        losses = [self.advance_on_device(*self.stacked(*chunk)) for chunk in chunks]
        return losses[0] if len(losses) == 1 else jnp.concatenate(losses)

    def dropout_key(self, step) -> jax.Array:
        """nn.Dropout's key for global step `step` (native mode; unused in exact mode, which passes masks)."""
        return jax.random.fold_in(self.key, step)

    def evaluate(self, split, batches):
        if self.sequence:
            return self._evaluate_sequences(split, batches)
        x, y = getattr(self.data, f"{split}_x"), getattr(self.data, f"{split}_y")
        out = []
        for batch in batches:
            b = pipeline.to_device(x, y, batch, self.dtype)
            loss_sum, correct = self._eval(self.params, b.x, b.y, b.w)
            out.append((float(loss_sum), float(correct), batch.n_real))
        return out

    def _evaluate_sequences(self, split, batches):
        out = []
        for batch in batches:
            b = sequence_data.to_device(self.data, split, batch, self.sides, batch.weights, self.dtype)
            loss_sum, correct = self._eval(self.params, b.tokens, b.mask, b.y, b.w)
            out.append((float(loss_sum), float(correct), batch.n_real))
        return out

    def parameters(self):
        return (seqm.to_canonical if self.sequence else mlp.to_canonical)(self.params)


def make_adapter(spec: dict) -> JaxAdapter:
    """The adapter for a resolved spec; switches on `jax_enable_x64` (before any array is made; see the module
    docstring for why float32 specs too)."""
    jax.config.update("jax_enable_x64", True)
    return JaxAdapter(spec)
