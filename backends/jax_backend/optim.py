"""The optax chain for a spec, from common.regularization (conversions) and common.optim (formulas); docs/design.md,
"Regularisation", "Optimisers".

Exact mode: chain(l1_sign(f) [g += f_t·sign(w), sign(0) = 0; optax has no L1], add_decayed_weights(c, mask)
[coupled c = 2·l2 + wd], optimizer): sgd = `optax.sgd(lr, momentum or None, nesterov)` (torch's trace); sgd with
decoupled d = chain(trace, add_decayed_weights(d, mask), scale_by_learning_rate) (optax.adamw's own layout);
adam = `optax.adam(lr, b1, b2, eps)` (eps_root 0, torch's ε placement); adamw = `optax.adamw(..., weight_decay=d,
mask)`. Masks are pytrees of bools from Regularization.applies (kernels always, bias-like leaves with
regularize_bias); optax's default mask None would decay every leaf. The chain covers the trainable parameters
only, flax's `params` collection: every function here drops the state names (batch_norm's running statistics,
common.layers.is_state) from `canonical` first (`trainable`), so no update, decay or L1 ever reaches them.
Native mode (common.native, jax column; `build_native`, `native_l1_penalty`): add_decayed_weights(λ = l2 + coupled
wd, mask); decoupled decay unmasked (biases too); L1 as a jnp.abs loss term (|x|′(0) = +1: the trap on zero
biases); the spec's Adam ε.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from backends.jax_backend.model import to_native
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


def trainable(canonical: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The canonical parameters without the state: what the optax chain trains (flax's `params` collection)."""
    return {name: value for name, value in canonical.items() if not is_state(name)}


def build(spec: Spec, reg: Regularization, canonical: dict[str, np.ndarray]) -> optax.GradientTransformation:
    """Exact mode: the optax transformation for `spec`; `canonical` (the initial params) gives tensor names and
    sizes, model.to_native their places in the params tree."""
    canonical = trainable(canonical)
    mask = to_native({name: reg.applies(name) for name in canonical})
    coefficients = {name: reg.l1_coefficient(name, np.size(w)) for name, w in canonical.items()}
    parts = []
    if any(coefficients.values()):
        parts.append(l1_sign(to_native(coefficients)))
    if reg.coupled:
        parts.append(optax.add_decayed_weights(reg.coupled, mask))
    parts.append(_optimizer(spec.optimizer, reg.decoupled, mask))
    return optax.chain(*parts)


def _optimizer(o, decoupled: float, mask) -> optax.GradientTransformation:
    """The optimizer part of the chain for the spec's `optimizer` table `o` with decoupled decay d (mask None:
    every leaf)."""
    if o.name == "sgd" and decoupled:
        return optax.chain(
            optax.trace(o.momentum, o.nesterov),
            optax.add_decayed_weights(decoupled, mask),
            optax.scale_by_learning_rate(o.lr),
        )
    if o.name == "sgd":
        return optax.sgd(o.lr, o.momentum or None, o.nesterov)
    if o.name == "adam":
        return optax.adam(o.lr, o.beta1, o.beta2, o.eps)
    return optax.adamw(o.lr, o.beta1, o.beta2, o.eps, weight_decay=decoupled, mask=mask)


def build_native(spec: Spec, reg: Regularization, canonical: dict[str, np.ndarray]) -> optax.GradientTransformation:
    """Native mode: the optax chain a user writes from the spec's numbers (see the module docstring); L1 is not
    here but in the loss (`native_l1_penalty`)."""
    canonical = trainable(canonical)
    r = spec.regularization
    coupled = l2_as_written(spec)
    decoupled = r.weight_decay if r.decay == "decoupled" else 0.0
    parts = []
    if coupled:
        parts.append(optax.add_decayed_weights(coupled, to_native({name: reg.applies(name) for name in canonical})))
    parts.append(_optimizer(spec.optimizer, decoupled, None))
    return optax.chain(*parts)


def native_l1_penalty(spec: Spec, reg: Regularization, canonical: dict[str, np.ndarray]):
    """Native mode: p ↦ l1·Σ_t A_t over the regularized tensors, A_t = jnp.mean|w_t| ("mean") or jnp.sum|w_t|
    ("sum"), as a loss term (its gradient at w = 0 is +1·l1/n_t, JAX's |x|′(0)); None when l1 = 0."""
    r = spec.regularization
    if not r.l1:
        return None
    reduce = jnp.mean if r.l1_reduction == "mean" else jnp.sum
    chosen = to_native({name: reg.applies(name) for name in trainable(canonical)})

    def penalty(params):
        terms = jax.tree.map(lambda w, on: reduce(jnp.abs(w)) if on else None, params, chosen)
        return r.l1 * sum(jax.tree.leaves(terms))

    return penalty
