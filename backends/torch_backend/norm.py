"""Normalisation layers as torch modules: layer_norm over the features of each row (docs/design.md, "Layer stacks").

layer_norm:  `nn.LayerNorm(width)`: y = (x − μ)/√(σ² + ε) ⊙ weight + bias (biased σ²), weight = canonical
             `ln{i}.scale`, bias = `ln{i}.offset`, same layout. Exact mode passes ε = layer.eps explicitly; native
             mode keeps torch's own default (1e-5, what a hand port writes; common.traps "layer_norm_eps").
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from backends.torch_backend.core import NO_FLOW, Canonical, Flow
from common.layers import Layer
from common.spec import Spec


class LayerNorm(Canonical, nn.LayerNorm):
    CANONICAL: ClassVar = {"weight": ("scale", False), "bias": ("offset", False)}

    def __init__(self, layer: Layer, spec: Spec, dtype: torch.dtype):
        if spec.mode == "native":
            super().__init__(layer.width, dtype=dtype)
        else:
            super().__init__(layer.width, eps=layer.eps, dtype=dtype)

    def forward(self, h: torch.Tensor, flow: Flow = NO_FLOW) -> torch.Tensor:
        return super().forward(h)


LAYERS = {"layer_norm": LayerNorm}
