"""Normalisation layers as Keras 3 layers: layer_norm (docs/design.md, "Layer stacks").

layer_norm → `keras.layers.LayerNormalization(axis=-1)`: y = γ ⊙ (x − μ)/√(σ² + ε) + β, σ² biased, with γ = gamma
= canonical `ln{i}.scale` and β = beta = `ln{i}.offset` (no transposes), penalties on `gamma_regularizer` /
`beta_regularizer`. Exact mode passes ε = layer.eps (model.norm_eps unless the table sets it); native mode keeps
Keras's own default ε (1e-3, common.traps "layer_norm_eps"), as a hand port would.
"""

from __future__ import annotations

import keras

from backends.tf_backend.core import Build
from common.layers import Layer


def layer_norm(layer: Layer, build: Build) -> keras.layers.LayerNormalization:
    eps = {} if build.native else {"epsilon": layer.eps}
    return keras.layers.LayerNormalization(
        axis=-1,
        dtype=build.dtype,
        name=layer.name,
        **eps,
        gamma_regularizer=build.regularizer(layer, "scale"),
        beta_regularizer=build.regularizer(layer, "offset"),
    )


LAYERS = {"layer_norm": layer_norm}
VARIABLES = {"layer_norm": lambda native: {"scale": native.gamma, "offset": native.beta}}
