"""The optax chain for a spec, from common.regularization (conversions), common.optim (formulas), common.clipping
and common.schedules; docs/design.md, "Regularisation", "Optimisers", "Gradient clipping", "Learning-rate schedules".

One construction (`build`), each native idiom (common.idioms) switching its own piece:

    chain(l1_sign(f), add_decayed_weights(c, mask), clip, optimizer(lr(t)))

- L1: `l1_sign` adds f_t·sign(w), sign(0) = 0 (optax has no L1). `abs_subgradient` on: no l1_sign; L1 is a jnp.abs
  loss term instead (`l1_penalty`; JAX's |x|′(0) = +1, the trap on zero biases).
- coupled decay: c = 2·l2 + coupled wd; `l2_as_written` on: λ = l2 + coupled wd (common.native.l2_as_written). Its
  mask is Regularization.applies in either case.
- clipping (common.clipping, optimizer.clip_norm > 0): `optax.clip_by_global_norm(c)` (global) or the per-leaf
  projection `optax.projections.projection_l2_ball(u, c)` mapped over the leaves (`clip_per_tensor`; optax has no
  per-leaf norm clip), after L1 and the coupled decay: the regularized gradient. Under optax.MultiSteps it sits in
  the inner chain, so it clips the step's accumulated gradient. `clip_before_decay` on: the clip first in the chain,
  as a port writes chain(clip, ...) (L1 in the loss under `abs_subgradient` is clipped either way).
- optimizer: sgd = `optax.sgd(lr, momentum or None, nesterov)` (torch's trace b ← μ·b + g, also under a changing
  lr); sgd with decoupled d = chain(trace, add_decayed_weights(d, mask), scale_by_learning_rate(lr)) (optax.adamw's
  own layout: the decay scaled by lr(t)); adam = `optax.adam(lr, b1, b2, eps)` (eps_root 0, torch's ε placement);
  adamw = `optax.adamw(..., weight_decay=d, mask)`. `bias_decay` on: the decoupled decay unmasked (optax's default
  mask None decays every leaf).
- lr (`learning_rate`, common.schedules): a float for `constant`; else optax's schedule, called by
  scale_by_learning_rate with its update count before the increment (step t + 1 reads lr(t); inside MultiSteps the
  inner count, which moves once per optimizer step): exponential_decay(lr, s, γ, staircase=True) for step,
  cosine_decay_schedule(lr, D, alpha=f/lr) for cosine, warmup_cosine_decay_schedule(0, lr, W, W + D, f) for
  warmup_cosine (optax's decay_steps counts the warmup). Its values are jnp scalars of the spec's dtype and the count
  is handed over in that dtype (linear_schedule divides the int32 count in float32: t/W off by 4e-9 for W = 3).
  `float32_hyper` on: Python-float values and the int32 count, as a port writes them (exponential_decay and the
  warmup then run in float32); `optax_warmup_decay_steps` on: decay_steps = D, the cosine over D − W steps.
Masks are pytrees of bools from Regularization.applies (kernels always, bias-like leaves with regularize_bias). The
chain covers the trainable parameters only, flax's `params` collection: every function here drops the state names
(batch_norm's running statistics, common.layers.is_state) from `canonical` first (`trainable`), so no update, decay
or L1 ever reaches them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from backends.jax_backend.model import to_native
from common.errors import InputError
from common.idioms import on
from common.layers import is_state
from common.native import l2_as_written
from common.regularization import Regularization
from common.spec import Spec


def l1_sign(coefficients) -> optax.GradientTransformation:
    """Add f_t·sign(w_t) to each gradient leaf: the canonical L1 subgradient, sign(0) = 0 (JAX's d|x|/dx is +1 at 0,
    so differentiating an |w| loss term would diverge from torch/TF on zero biases). `coefficients` is a pytree of
    floats shaped like the params."""

    def update(updates, state, params):
        if params is None:
            raise ValueError("l1_sign needs the params: call update(grads, state, params)")
        return jax.tree.map(lambda g, w, f: g + f * jnp.sign(w), updates, params, coefficients), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def clip_per_tensor(clip_norm: float) -> optax.GradientTransformation:
    """Each leaf g ← g·c/√max(‖g‖², c²) = g·min(1, c/‖g‖) (common.clipping, per_tensor): optax's projection onto the
    l2 ball of radius c, one leaf at a time."""
    return optax.stateless(
        lambda updates, params=None: jax.tree.map(lambda u: optax.projections.projection_l2_ball(u, clip_norm), updates)
    )


def clip(o) -> optax.GradientTransformation | None:
    """The clip of the spec's `optimizer` table `o` (None when clip_norm = 0)."""
    if not o.clip_norm:
        return None
    return optax.clip_by_global_norm(o.clip_norm) if o.clip == "global" else clip_per_tensor(o.clip_norm)


def learning_rate(spec: Spec):
    """The optimizer's learning rate: optimizer.lr, or the optax schedule of `[schedule]` (module docstring)."""
    s, base = spec.schedule, spec.optimizer.lr
    if s.kind == "constant":
        return base
    as_written = on(spec, "float32_hyper")
    dtype = np.dtype(spec.dtype)
    hyper = float if as_written else (lambda v: jnp.asarray(v, dtype))
    if s.kind == "step":
        schedule = optax.exponential_decay(hyper(base), s.step_size, hyper(s.gamma), staircase=True)
    elif s.kind == "cosine":
        schedule = optax.cosine_decay_schedule(hyper(base), s.decay_steps, alpha=hyper(s.final_lr / base))
    else:
        w = s.warmup_steps
        decay = s.decay_steps if on(spec, "optax_warmup_decay_steps") else w + s.decay_steps
        if decay <= w:
            raise InputError(
                f"spec key 'schedule.decay_steps': with the idiom optax_warmup_decay_steps optax's decay_steps = "
                f"{decay} counts the warmup of {w} steps and must exceed it"
            )
        schedule = optax.warmup_cosine_decay_schedule(hyper(0.0), hyper(base), w, decay, hyper(s.final_lr))
    return schedule if as_written else (lambda count: schedule(jnp.asarray(count, dtype)))


def trainable(canonical: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The canonical parameters without the state: what the optax chain trains (flax's `params` collection)."""
    return {name: value for name, value in canonical.items() if not is_state(name)}


def build(spec: Spec, reg: Regularization, canonical: dict[str, np.ndarray]) -> optax.GradientTransformation:
    """The optax transformation for `spec` under its idioms (module docstring); `canonical` (the initial params)
    gives tensor names and sizes, model.to_native their places in the params tree."""
    canonical = trainable(canonical)
    mask = to_native({name: reg.applies(name) for name in canonical})
    parts = []
    coefficients = {name: reg.l1_coefficient(name, np.size(w)) for name, w in canonical.items()}
    if any(coefficients.values()) and not on(spec, "abs_subgradient"):
        parts.append(l1_sign(to_native(coefficients)))
    coupled = l2_as_written(spec) if on(spec, "l2_as_written") else reg.coupled
    if coupled:
        parts.append(optax.add_decayed_weights(coupled, mask))
    clipped = clip(spec.optimizer)
    if clipped is not None:
        parts.insert(0 if on(spec, "clip_before_decay") else len(parts), clipped)
    decay_mask = None if on(spec, "bias_decay") else mask
    parts.append(_optimizer(spec.optimizer, learning_rate(spec), reg.decoupled, decay_mask))
    return optax.chain(*parts)


def _optimizer(o, lr, decoupled: float, mask) -> optax.GradientTransformation:
    """The optimizer part of the chain for the spec's `optimizer` table `o`, learning rate `lr` (a float or an optax
    schedule) and decoupled decay d (mask None: every leaf)."""
    if o.name == "sgd" and decoupled:
        return optax.chain(
            optax.trace(o.momentum, o.nesterov),
            optax.add_decayed_weights(decoupled, mask),
            optax.scale_by_learning_rate(lr),
        )
    if o.name == "sgd":
        return optax.sgd(lr, o.momentum or None, o.nesterov)
    if o.name == "adam":
        return optax.adam(lr, o.beta1, o.beta2, o.eps)
    return optax.adamw(lr, o.beta1, o.beta2, o.eps, weight_decay=decoupled, mask=mask)


def l1_penalty(spec: Spec, reg: Regularization, canonical: dict[str, np.ndarray]):
    """`abs_subgradient` on: p ↦ l1·Σ_t A_t over the regularized tensors, A_t = jnp.mean|w_t| ("mean") or
    jnp.sum|w_t| ("sum"), as a loss term (its gradient at w = 0 is +1·l1/n_t, JAX's |x|′(0)); None when l1 = 0 or
    the idiom is off (L1 is then `l1_sign` in the chain)."""
    r = spec.regularization
    if not r.l1 or not on(spec, "abs_subgradient"):
        return None
    reduce = jnp.mean if r.l1_reduction == "mean" else jnp.sum
    chosen = to_native({name: reg.applies(name) for name in trainable(canonical)})

    def penalty(params):
        terms = jax.tree.map(lambda w, keep: reduce(jnp.abs(w)) if keep else None, params, chosen)
        return r.l1 * sum(jax.tree.leaves(terms))

    return penalty
