"""Canonical optimizer updates and the Keras ε-hat conversion (docs/design.md, "Optimisers").

With g the regularized gradient (common.regularization), step t = 1, 2, …, learning rate lr, and d the decoupled
decay (0 unless decay = "decoupled"):

SGD (torch convention):   b ← μ·b + g (b₁ = g);   u = g + μ·b if nesterov else b;   w ← w − lr·u − lr·d·w
    Keras keeps m = μ·m − lr·g instead (m = −lr·b); the two agree at constant lr.
Adam (torch/optax):       m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  m̂ = m/(1−β1ᵗ);  v̂ = v/(1−β2ᵗ)
                          w ← w − lr·m̂/(√v̂ + ε) − lr·d·w          (adamw: d > 0, adam: d = 0)
Keras Adam uses the ε-hat form  w ← w − α·m/(√v + ε̂),  α = lr·√(1−β2ᵗ)/(1−β1ᵗ).  Substituting shows the two are
equal exactly when ε̂_t = ε·√(1−β2ᵗ): a per-step epsilon (a constant Keras ε, even 1e-8, still differs).
"""

from __future__ import annotations

import math


def keras_epsilon_hat(eps: float, beta2: float, step: int) -> float:
    """ε̂_t = ε·√(1 − β2ᵗ): the Keras Adam epsilon at step t that reproduces torch/optax's ε placement."""
    return eps * math.sqrt(1.0 - beta2**step)
