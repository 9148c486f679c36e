"""Normalisation layers: layer_norm over the features of each row (B, F).

layer_norm:  μ = mean_j x_j,  σ² = mean_j (x_j − μ)²  (biased),  x̂ = (x − μ)/√(σ² + ε),  y = γ ⊙ x̂ + β,
             γ as `ln{i}.scale` (init 1), β as `ln{i}.offset` (init 0), i counting the layer_norm layers from 0.
             ε is canonical and passed explicitly to every framework: `eps`, default model.norm_eps (1e-5). Native
             defaults differ (torch nn.LayerNorm 1e-5, Keras LayerNormalization 1e-3, flax nn.LayerNorm 1e-6;
             common.traps "layer_norm_eps"). γ and β are bias-like: regularized only with regularize_bias.
"""

from __future__ import annotations

import numpy as np

from common.layers.base import Key, LayerKind, Param


class LayerNorm(LayerKind):
    kind, prefix = "layer_norm", "ln"
    keys = {"eps": Key(float, None, lambda v: None if 0.0 < v < 1.0 else "must be in (0.0, 1.0)")}
    params = {
        "scale": Param(lambda layer: (layer.width,), kernel=False),
        "offset": Param(lambda layer: (layer.width,), kernel=False),
    }

    def default(self, key, spec, last, n_classes):
        return spec.model.norm_eps

    def init(self, layer, scheme, seed):
        return {"scale": np.ones(layer.width), "offset": np.zeros(layer.width)}


KINDS = (LayerNorm(),)
