"""Canonical L1 / L2 / weight decay and their conversion to each framework's own mechanism (DESIGN §5).

Canonical semantics, over the regularized tensors R (kernels; bias-like vectors too when `regularize_bias`, common.layers):

    penalty P(θ) = l1 · Σ_{t∈R} A_t  +  l2 · Σ_{t∈R} Σ w²,    A_t = mean|w_t| (l1_reduction "mean") or Σ|w_t| ("sum")
    gradient     g = ∇CE + l1 · sign(w)/n_t (mean; sign(w) for sum) + c · w,     c = 2·l2 + wd·[decay = coupled]
    decoupled    w ← w − lr · d · w  alongside the optimizer step,   d = wd·[decay = decoupled]

sign(0) = 0: torch and TF differentiate |x| at 0 to 0, JAX to +1, so JAX's L1 must use sign(w) explicitly.
The recorded per-step loss is the cross-entropy alone; P is not part of it.

Conversions (each adapter reads these, nothing else):
- torch: coupled c → `SGD/Adam(weight_decay=c)` on the regularized parameter group (torch λ = 2·l2: the "L2 is
  weight_decay" trap). Decoupled d → `AdamW(weight_decay=d)`; torch has no decoupled SGD, so the adapter applies
  AdamW's own decay line `p.mul_(1 − lr·d)` before `SGD.step()`. Whenever d > 0 the coupled part is a loss term
  (c/2)·Σw² instead: AdamW has no coupled slot, and SGD's would read weights the decay line already shrank
  (giving c·w·(1 − lr·d)). L1 is a loss term (torch has no L1).
- Keras: coupled c → `regularizers.L2(c/2)` (Keras L2(f) adds f·Σw², gradient 2f·w). L1 → `regularizers.L1(f)`
  with f = l1/n_t (mean form) or l1 (sum). Decoupled d → the optimizer's `weight_decay=d` (Keras decay is
  decoupled and hits every variable unless excluded), biases excluded unless `regularize_bias`.
- optax: coupled c → `add_decayed_weights(c, mask)` chained before the optimizer's scaling; decoupled d →
  `adamw(weight_decay=d, mask)` or `add_decayed_weights(d, mask)` after the SGD trace; L1 → a gradient
  transform adding (l1/n_t)·sign(w) (optax has no L1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.layers import regularized


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
    def from_spec(cls, spec: dict) -> "Regularization":
        r = spec["regularization"]
        wd_coupled = r["weight_decay"] if r["decay"] == "coupled" else 0.0
        wd_decoupled = r["weight_decay"] if r["decay"] == "decoupled" else 0.0
        return cls(r["l1"], r["l1_reduction"], r["l2"], 2.0 * r["l2"] + wd_coupled, wd_decoupled,
                   r["regularize_bias"])

    def applies(self, name: str) -> bool:
        """Whether parameter `name` is regularized (weights always, biases only with regularize_bias)."""
        return regularized(name, self.regularize_bias)

    def l1_coefficient(self, name: str, size: int) -> float:
        """f_t: the L1 factor of tensor t, so that its penalty is f_t · Σ|w| (l1/n_t for the mean form)."""
        if not self.applies(name) or self.l1 == 0.0:
            return 0.0
        return self.l1 / size if self.l1_reduction == "mean" else self.l1

    def keras_l2_factor(self, name: str) -> float:
        """Keras `L2(f)` factor for tensor t: f = c/2, because Keras L2(f) has gradient 2f·w."""
        return self.coupled / 2.0 if self.applies(name) else 0.0

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
