"""Normalisation layers in float64: layer_norm over the features of each row (docs/design.md, "Layer stacks").

forward:   μ = mean_j x_j,  σ² = mean_j (x_j − μ)² (biased),  σ̂ = √(σ² + ε),  x̂ = (x − μ)/σ̂,  y = γ ⊙ x̂ + β,
           with ε = layer.eps (canonical, so numpy's native mode uses it too).
backward:  ∂γ = Σ_rows dy ⊙ x̂,  ∂β = Σ_rows dy,  dx̂ = dy ⊙ γ, and per row (the ∂σ², ∂μ chain collapsed)
           dx = (dx̂ − mean_j dx̂ − x̂ ⊙ mean_j(dx̂ ⊙ x̂)) / σ̂.
"""

from __future__ import annotations

import numpy as np

from backends.numpy_backend.core import Part


class LayerNorm(Part):
    def forward(self, params, x, flow):
        centred = x - x.mean(axis=1, keepdims=True)
        sigma = np.sqrt((centred**2).mean(axis=1, keepdims=True) + self.layer.eps)
        x_hat = centred / sigma
        return params[self.layer.param("scale")] * x_hat + params[self.layer.param("offset")], (x_hat, sigma)

    def backward(self, params, cache, dy):
        x_hat, sigma = cache
        d_hat = dy * params[self.layer.param("scale")]
        dx = (d_hat - d_hat.mean(axis=1, keepdims=True) - x_hat * (d_hat * x_hat).mean(axis=1, keepdims=True)) / sigma
        return dx, {self.layer.param("scale"): (dy * x_hat).sum(axis=0), self.layer.param("offset"): dy.sum(axis=0)}


LAYERS = {"layer_norm": LayerNorm}
