"""The optax chain for a spec, translated from common.regularization (conversions) and common.optim (formulas).

    chain( l1_sign(f)                         g += f_t·sign(w)        optax has no L1; jnp.abs' gradient is +1 at 0
           add_decayed_weights(c, mask)       g += c·w  (coupled: 2·l2 + coupled wd), before the optimizer
           optimizer )

optimizer, checked against optax 0.2.8's source:
- sgd:   `optax.sgd(lr, momentum or None, nesterov)` = chain(trace, scale(−lr)); trace keeps b ← g + μ·b
         (b₁ = g, from zeros) and returns g + μ·b under nesterov: torch's update.
- sgd with decoupled d: chain(trace(μ, nesterov), add_decayed_weights(d, mask), scale_by_learning_rate(lr)),
         i.e. w ← w − lr·(u + d·w) (optax.adamw's own layout, with the SGD trace in place of scale_by_adam).
- adam:  `optax.adam(lr, b1, b2, eps)`: m̂/(√v̂ + ε) with eps_root = 0, torch's ε placement.
- adamw: `optax.adamw(lr, b1, b2, eps, weight_decay=d, mask=mask)` = w ← w − lr·(m̂/(√v̂+ε) + d·w).
Masks are pytrees of Python bools from Regularization.applies (weights always, biases only with regularize_bias);
`add_decayed_weights(mask=None)` would decay biases too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from backends.jax_backend.model import to_native
from common.regularization import Regularization


def l1_sign(coefficients) -> optax.GradientTransformation:
    """Add f_t·sign(w_t) to each gradient leaf: the canonical L1 subgradient, sign(0) = 0 (JAX's d|x|/dx is +1 at 0,
    so differentiating an |w| loss term would diverge from torch/TF on zero biases). `coefficients` is a pytree of
    floats shaped like the params."""

    def update(updates, state, params):
        if params is None:
            raise ValueError("l1_sign needs the params: call update(grads, state, params)")
        return jax.tree.map(lambda g, w, f: g + f * jnp.sign(w), updates, params, coefficients), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def build(spec: dict, reg: Regularization, canonical: dict[str, np.ndarray]) -> optax.GradientTransformation:
    """The optax transformation for `spec`; `canonical` (the initial params) gives tensor names and sizes."""
    o = spec["optimizer"]
    mask = to_native({name: reg.applies(name) for name in canonical})
    coefficients = {name: reg.l1_coefficient(name, np.size(w)) for name, w in canonical.items()}
    parts = []
    if any(coefficients.values()):
        parts.append(l1_sign(to_native(coefficients)))
    if reg.coupled:
        parts.append(optax.add_decayed_weights(reg.coupled, mask))
    if o["name"] == "sgd" and reg.decoupled:
        parts += [optax.trace(o["momentum"], o["nesterov"]), optax.add_decayed_weights(reg.decoupled, mask),
                  optax.scale_by_learning_rate(o["lr"])]
    elif o["name"] == "sgd":
        parts.append(optax.sgd(o["lr"], o["momentum"] or None, o["nesterov"]))
    elif o["name"] == "adam":
        parts.append(optax.adam(o["lr"], o["beta1"], o["beta2"], o["eps"]))
    else:
        parts.append(optax.adamw(o["lr"], o["beta1"], o["beta2"], o["eps"], weight_decay=reg.decoupled, mask=mask))
    return optax.chain(*parts)
