"""The normalisation layer kind (common.layers.norm) as flax.linen: layer_norm → `nn.LayerNorm` named `ln{i}`.

Exact mode passes the canonical ε = `layer.eps` and `use_fast_variance=False`, flax's two-pass variance
mean((x − μ)²), the canonical formula (flax's default computes E[x²] − μ²). Native mode keeps flax's defaults
(ε = 1e-6, the fast variance): what a hand port writes (docs/design.md, "Native mode"). flax's `scale` and `bias`
are the canonical `ln{i}.scale` and `ln{i}.offset` (init 1 and 0 in both modes).
"""

from __future__ import annotations

import flax.linen as nn

from backends.jax_backend.core import Options
from common.layers import Layer


def layer_norm(layer: Layer, options: Options):
    exact = {} if options.native else {"epsilon": layer.eps, "use_fast_variance": False}
    norm = nn.LayerNorm(dtype=options.dtype, param_dtype=options.dtype, name=layer.name, **exact)
    return lambda x, call: norm(x)


LAYERS = {"layer_norm": layer_norm}
NAMES = {"layer_norm": {"scale": ("scale",), "offset": ("bias",)}}
