"""Normalisation layers in float64: layer_norm over the features of each row (docs/design.md, "Layer stacks"),
batch_norm over the real rows of a batch (docs/design.md, "Images and BatchNorm").

layer_norm
forward:   μ = mean_j x_j,  σ² = mean_j (x_j − μ)² (biased),  σ̂ = √(σ² + ε),  x̂ = (x − μ)/σ̂,  y = γ ⊙ x̂ + β,
           with ε = layer.eps (canonical, so numpy's native mode uses it too).
backward:  ∂γ = Σ_rows dy ⊙ x̂,  ∂β = Σ_rows dy,  dx̂ = dy ⊙ γ, and per row (the ∂σ², ∂μ chain collapsed)
           dx = (dx̂ − mean_j dx̂ − x̂ ⊙ mean_j(dx̂ ⊙ x̂)) / σ̂.

batch_norm (common.layers.norm), per channel (the last axis of features (B, F) or images (B, H, W, C)); R the real
rows of a training batch (flow.real, weights > 0), n = values_per_channel(layer, |R|) their values per channel:
forward:   μ = Σ_R x / n,  σ² = Σ_R (x − μ)² / n (biased),  σ̂ = √(σ² + ε),  x̂ = (x − μ)/σ̂ on EVERY row (filler
           rows are normalised with the real rows' statistics), y = γ ⊙ x̂ + β;
           state: mean ← m·mean + (1 − m)·μ,  var ← m·var + (1 − m)·f·σ²,  f = running_var_factor("biased",
           layer.running_var, n) (n/(n − 1) for "unbiased"), written to flow.state;
           evaluation (flow.real None): x̂ = (x − mean)/√(var + ε) with the running statistics.
backward:  ∂γ = Σ dy ⊙ x̂,  ∂β = Σ dy (every row and pixel),  dx̂ = dy ⊙ γ, and since only the real rows enter μ
           and σ² (∂μ/∂x_r = [r ∈ R]/n, ∂σ²/∂x_r = [r ∈ R]·2(x_r − μ)/n)
               dx = (dx̂ − [r ∈ R]·(Σ dx̂ + x̂ ⊙ Σ dx̂ ⊙ x̂)/n) / σ̂   (sums over every row and pixel),
           so a filler row gets dx̂/σ̂ only; its dy is 0 in training (zero loss weight), which leaves the real rows'
           gradients exactly those of the batch without the filler rows.
groups (a split step's micro-batch, flow.groups the replica of each row; common.layers.norm, "under split
steps"): with sync = false every replica's rows are normalised, and differentiated, as a batch of their own, and
the state update is the first replica's (group 0); with sync = true, or without groups, the rows are one batch.
"""

from __future__ import annotations

import numpy as np

from backends.numpy_backend.core import Part
from common.layers.norm import running_var_factor, values_per_channel


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


class BatchNorm(Part):
    def forward(self, params, x, flow):
        scale, offset = params[self.layer.param("scale")], params[self.layer.param("offset")]
        mean, var = self.layer.param("mean"), self.layer.param("var")
        if flow.real is None:
            return scale * (x - params[mean]) / np.sqrt(params[var] + self.layer.eps) + offset, None
        groups = np.zeros(x.shape[0], dtype=np.int64) if flow.groups is None or self.layer.sync else flow.groups
        x_hat, caches = np.empty_like(x), []
        for g in np.unique(groups):
            rows = groups == g
            real = flow.real & rows
            values = x[real].reshape(-1, x.shape[-1])
            mu, sigma2 = values.mean(axis=0), values.var(axis=0)
            n = values_per_channel(self.layer, int(real.sum()))
            sigma = np.sqrt(sigma2 + self.layer.eps)
            x_hat[rows] = (x[rows] - mu) / sigma
            caches.append((rows, real[rows], sigma, n))
            if g == 0:  # the first replica's statistics update the state
                m, f = self.layer.momentum, running_var_factor("biased", self.layer.running_var, n)
                flow.state[mean] = m * params[mean] + (1.0 - m) * mu
                flow.state[var] = m * params[var] + (1.0 - m) * f * sigma2
        return scale * x_hat + offset, (x_hat, caches)

    def backward(self, params, cache, dy):
        x_hat, caches = cache
        axes = tuple(range(dy.ndim - 1))
        d_hat = dy * params[self.layer.param("scale")]
        dx = np.empty_like(dy)
        for rows, real, sigma, n in caches:
            d, h = d_hat[rows], x_hat[rows]
            centre = (d.sum(axis=axes) + h * (d * h).sum(axis=axes)) / n
            dx[rows] = (d - real.reshape(-1, *[1] * (dy.ndim - 1)) * centre) / sigma
        return dx, {
            self.layer.param("scale"): (dy * x_hat).sum(axis=axes),
            self.layer.param("offset"): dy.sum(axis=axes),
        }


LAYERS = {"layer_norm": LayerNorm, "batch_norm": BatchNorm}
