"""Gradient clipping by norm (docs/design.md, "Gradient clipping"): the canonical rule and the torch variant.

Keys: `optimizer.clip_norm = c` (0: off) and `optimizer.clip = "global" | "per_tensor"`. What is clipped is g,
the step's regularized gradient (common.regularization: data gradient + L1 + coupled decay), after accumulation
and the replicas' reduction, before the optimizer; decoupled decay is never clipped. With n_t = ‖g_t‖₂:

    global:      n = √(Σ_t n_t²);  g_t ← g_t·min(1, c/n)        (n = 0: unchanged)
    per_tensor:  g_t ← g_t·min(1, c/n_t)                          (n_t = 0: unchanged)

Keras `global_clipnorm` and optax `clip_by_global_norm` are the global rule (no ε); Keras `clipnorm` and optax's
per-leaf projection `projection_l2_ball` are the per-tensor rule. torch's `clip_grad_norm_` scales by
min(1, c/(n + 1e-6)) (`torch_scale`, the trap clip_epsilon): exact mode takes n from `get_total_norm` and applies
min(1, c/n) itself. A Keras port that writes `clipnorm` for global clipping clips each variable on its own (trap
keras_clipnorm_per_variable).
"""

from __future__ import annotations

import numpy as np

TORCH_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: clip_coef = max_norm / (total_norm + 1e-6)


def scale(norm: float, clip_norm: float) -> float:
    """min(1, c/n): the factor the canonical rule multiplies by (1 for n = 0 or n ≤ c)."""
    return 1.0 if norm <= clip_norm else clip_norm / norm


def torch_scale(norm: float, clip_norm: float) -> float:
    """torch's clip_grad_norm_ factor min(1, c/(n + 1e-6)): below 1 from n > c − 1e-6·… on, also at n = c."""
    return min(1.0, clip_norm / (norm + TORCH_EPS))


def clip(grads: dict[str, np.ndarray], clip_norm: float, form: str) -> tuple[dict[str, np.ndarray], bool]:
    """The canonical clipped gradients (float64 numpy) and whether any tensor was scaled."""
    if clip_norm <= 0.0:
        return grads, False
    norms = {name: float(np.sqrt(np.sum(np.square(g)))) for name, g in grads.items()}
    if form == "global":
        factor = scale(float(np.sqrt(sum(n * n for n in norms.values()))), clip_norm)
        return {name: g * factor for name, g in grads.items()}, factor < 1.0
    factors = {name: scale(norms[name], clip_norm) for name in grads}
    return {name: g * factors[name] for name, g in grads.items()}, any(f < 1.0 for f in factors.values())
