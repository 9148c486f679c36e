"""Canonical L1 / L2 / weight decay and their conversion to each framework's own mechanism
(docs/design.md, "Regularisation", which has the per-framework conversion table).

Over the regularized tensors R (kernels; bias-like tensors too with `regularize_bias`, common.layers.regularized):

    penalty    P(θ) = l1·Σ_{t∈R} A_t + l2·Σ_{t∈R} Σ w²,   A_t = mean|w_t| (l1_reduction "mean") or Σ|w_t| ("sum")
    gradient   g = ∇CE + f_t·sign(w) + c·w,   f_t = l1/n_t (mean) or l1 (sum),   c = 2·l2 + wd·[decay = coupled]
    decoupled  w ← w − lr·d·w alongside the optimizer step,   d = wd·[decay = decoupled]

sign(0) = 0 (JAX differentiates |x| at 0 to +1, so its L1 uses sign(w) explicitly). The recorded loss is the
cross-entropy alone. `Regularization` splits a spec into the slots c, d and f_t; adapters read only these (torch
weight_decay=c, Keras L2(c/2), optax add_decayed_weights(c); decoupled d: AdamW / optimizer weight_decay / adamw).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from common.layers import regularized

if TYPE_CHECKING:
    from common.spec import Spec


@dataclass(frozen=True)
class Regularization:
    """One experiment's penalties, decomposed into the coupled (c), decoupled (d) and L1 slots."""

    l1: float
    l1_reduction: str
    l2: float
    coupled: float
    decoupled: float
    regularize_bias: bool

    @classmethod
    def from_spec(cls, spec: Spec) -> Regularization:
        """The slots of a spec's `regularization` table."""
        r = spec.regularization
        wd_coupled = r.weight_decay if r.decay == "coupled" else 0.0
        wd_decoupled = r.weight_decay if r.decay == "decoupled" else 0.0
        return cls(r.l1, r.l1_reduction, r.l2, 2.0 * r.l2 + wd_coupled, wd_decoupled, r.regularize_bias)

    def applies(self, name: str) -> bool:
        """Whether parameter `name` is regularized (weights always, biases only with regularize_bias)."""
        return regularized(name, self.regularize_bias)

    def l1_coefficient(self, name: str, size: int) -> float:
        """f_t: the L1 factor of tensor t, so that its penalty is f_t · Σ|w| (l1/n_t for the mean form)."""
        if not self.applies(name) or self.l1 == 0.0:
            return 0.0
        return self.l1 / size if self.l1_reduction == "mean" else self.l1

    def penalty(self, params: dict[str, np.ndarray]) -> float:
        """P(θ) = Σ_t f_t·Σ|w_t| + (c/2)·Σ_t Σ w_t², the loss whose gradient is the coupled part of g.

        With wd = 0 this is the spec's l1/l2 penalty; a coupled wd appears here as (wd/2)·Σw².
        """
        total = 0.0
        for name, value in params.items():
            w = np.asarray(value, dtype=np.float64)
            total += self.l1_coefficient(name, w.size) * np.abs(w).sum()
            total += (self.coupled / 2.0 if self.applies(name) else 0.0) * np.square(w).sum()
        return float(total)

    def gradient(self, name: str, w: np.ndarray) -> np.ndarray:
        """The coupled gradient term of tensor t: f_t·sign(w) + c·w (zero for unregularized tensors)."""
        if not self.applies(name):
            return np.zeros_like(w)
        return self.l1_coefficient(name, w.size) * np.sign(w) + self.coupled * w
