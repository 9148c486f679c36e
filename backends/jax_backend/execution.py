"""The ONE pure training step and the execution modes that run it (docs/design.md, "Execution modes").

    step(variables, opt_state, x, y, w, masks, t) → (variables, opt_state, loss),
    loss = Σ w·ℓ / max(Σ w, 1),  ℓ = optax.softmax_cross_entropy_with_integer_labels (per row),

for every stack (x: features, images or tokens); variables: flax's {'params'} plus, with batch_norm,
{'batch_stats'}. The step differentiates `params` only and applies the model with `mutable=["batch_stats"]`, the
real rows w > 0 as batch_norm's mask; the new statistics (their running variance converted to the spec's estimator
by norm.running_stats) come back in the returned variables, and the optax chain updates `params` alone.
masks: the shared dropout masks or None (idiom `dropout_rng`); t: the global step, whose `fold_in` gives nn.Dropout's
key under `dropout_rng` (an argument, so it neither retraces nor dispatches once jitted). The optax chain (optim.py)
holds the clip and the schedule, so every mode reads lr(t) from the optimizer state inside its program: the fused
scan and MultiSteps's inner chain included.
Features, images and tokens train on an epoch's inputs stacked on the device once (ids (S, B) int32, w (S, B), masks
(S, B, *shape) per dropout layer or None, t (S,) int32) and the training split on the device (tokens: padded to the
step's T); step i gathers its own rows there (`step_at`, `take_rows`):

    step_at(variables, opt_state, x_all, y_all, ids, w, masks, t, i)
        = step(variables, opt_state, x_all[ids[i]], y_all[ids[i]], w[i], masks[i], t[i]).

- eager:    `step_at` un-jitted: JAX dispatches it op by op.
- compiled: `jax.jit(step_at)`, one XLA program per step (only i comes from the host).
- fused:    `jax.jit` of a `lax.scan` of `step_at` over i = 0..S−1, carrying the variables (batch_stats included)
            and the optimizer state: one program per epoch (not token data: token batches have no static epoch
            shape).
Split steps and the bench's step alone call `step` itself on rows already on the device. The jitted
`step_at` and scan donate the variables and the optimizer state (their buffers are reused for the outputs).
jit compiles once per input signature; `compile_count` counts the traces (eager: 0).
A split step (common.distributed) with the idiom `split_step` on runs `step` once per global micro-batch, its chain
wrapped in optax.MultiSteps (distributed.py); off, `split_step` once per micro-batch, on distributed.py's engine,
eager or compiled alike:

    split_step(variables, opt_state, x, y, w, s, masks) → (variables, opt_state, Σ w·ℓ),

the gradient of Σ w·s·ℓ (s: each row's part scale) combined over the mesh, fed to the chain (optax.MultiSteps:
zero updates until the K-th micro-batch), and the micro-batch's batch_stats update; the adapter divides the step's
Σ w·ℓ by Σ_step w.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from backends.jax_backend.data import take_rows
from backends.jax_backend.model import split_state
from backends.jax_backend.norm import running_stats
from common.datasets import Dataset

EXECUTIONS = ("eager", "compiled", "fused")


def check(execution: str, data: Dataset | None = None) -> None:
    """A clear error for a mode that does not exist or cannot run `data`."""
    if execution not in EXECUTIONS:
        raise ValueError(f"jax: unknown execution mode '{execution}' (modes: {', '.join(EXECUTIONS)})")
    if execution == "fused" and data is not None and data.is_sequence:
        raise ValueError(
            "jax: execution 'fused' scans whole epochs of one static shape, which token batches "
            "(padded per batch or bucket) do not have; use 'eager' or 'compiled'"
        )


def train_step(model, tx: optax.GradientTransformation, penalty, dropout_key):
    """The pure step for `model` and the optax chain `tx` (over `params`); `penalty` (L1 under `abs_subgradient`) is
    added to the differentiated loss only; `dropout_key` (nn.Dropout under `dropout_rng`) is folded with t, None
    without it."""

    def step(variables, opt_state, x, y, w, masks, t):
        rngs = None if dropout_key is None else {"dropout": jax.random.fold_in(dropout_key, t)}
        params, state = split_state(variables)
        real = w > 0

        def loss_fn(p):
            logits, updated = model.apply({**p, **state}, x, masks, train=True, real=real, rngs=rngs, mutable=[*state])
            ce = jnp.sum(w * optax.softmax_cross_entropy_with_integer_labels(logits, y)) / jnp.maximum(jnp.sum(w), 1.0)
            return (ce if penalty is None else ce + penalty(p)), (ce, updated)

        (_, (loss, updated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        state = running_stats(model.layers, model.options, state, updated, real)
        return {**optax.apply_updates(params, updates), **state}, opt_state, loss

    return step


def split_step(model, tx: optax.GradientTransformation, combine, penalty=None):
    """The pure micro-batch step of a split step (module docstring) for `model`, the accumulating chain `tx` and
    the engine's `combine` (distributed.Engine.combine), which builds `sums` for the model it runs (`model`, or
    its shard_map clone); the plan's split (idiom `split_step` off). Like `train_step` it differentiates `params`
    only; the micro-batch's batch_stats update (the engine's device 0's) comes back in the variables, where the next
    micro-batch starts. `penalty` (idiom `abs_subgradient`) is added to every row's loss, Σ w·s·(ℓ + P): the scales
    s sum to one step's mean over the step, so the K micro-batches' gradients add up to ∇P once."""

    def sums(placed):
        def rows(variables, x, y, w, s, masks):
            params, state = split_state(variables)
            real = w > 0

            def loss_fn(p):
                logits, updated = placed.apply({**p, **state}, x, masks, train=True, real=real, mutable=[*state])
                ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
                differentiated = ce if penalty is None else ce + penalty(p)
                return jnp.sum(w * s * differentiated), (jnp.sum(w * ce), updated)

            (_, (loss, updated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            return loss, grads, running_stats(placed.layers, placed.options, state, updated, real, placed.axis_name)

        return rows

    combined = combine(sums, model)

    def step(variables, opt_state, x, y, w, s, masks):
        loss, grads, state = combined(variables, x, y, w, s, masks)
        params = split_state(variables)[0]
        updates, opt_state = tx.update(grads, opt_state, params)
        return {**optax.apply_updates(params, updates), **state}, opt_state, loss

    return step


def indexed(step):
    """`step_at` (module docstring): step i of stacked epoch inputs, its rows gathered from the split on the
    device."""

    def step_at(variables, opt_state, x_all, y_all, ids, w, masks, steps, i):
        x, y = take_rows(x_all, y_all, ids[i])
        masks_i = None if masks is None else [m[i] for m in masks]
        return step(variables, opt_state, x, y, w[i], masks_i, steps[i])

    return step_at


def scan_steps(step_at):
    """The fused epoch: `lax.scan` of `step_at` over the S stacked steps, i = 0..S−1; the per-step losses (S,)."""

    def scanned(variables, opt_state, x_all, y_all, ids, w, masks, steps):
        def body(carry, i):
            variables, opt_state, loss = step_at(*carry, x_all, y_all, ids, w, masks, steps, i)
            return (variables, opt_state), loss

        (variables, opt_state), losses = jax.lax.scan(body, (variables, opt_state), jnp.arange(ids.shape[0]))
        return variables, opt_state, losses

    return scanned


def eval_sums(model):
    """Evaluation (no dropout, batch_norm on its running statistics): (Σ ℓ, number correct) over a batch's rows."""

    def sums(variables, x, y):
        logits = model.apply(variables, x)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(ce), jnp.sum(jnp.argmax(logits, axis=-1) == y)

    return jax.jit(sums)


class Execution:
    """`step` (one update on rows on the device), `at` (step i of stacked epoch inputs) and, fused, `scan` (all of
    them) as the mode runs them, counting compiles."""

    def __init__(self, execution: str, step):
        self.compile_count = 0
        at = indexed(step)
        self.step = step if execution == "eager" else jax.jit(self._counted(step))
        self.at = at if execution == "eager" else jax.jit(self._counted(at), donate_argnums=(0, 1))
        self.scan = jax.jit(self._counted(scan_steps(at)), donate_argnums=(0, 1)) if execution == "fused" else None

    def _counted(self, fn):
        def traced(*args):
            self.compile_count += 1  # a Python side effect: runs when JAX traces a new signature only
            return fn(*args)

        return traced
