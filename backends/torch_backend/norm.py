"""Normalisation layers as torch modules: layer_norm over the features of each row, batch_norm over the rows of a
batch (docs/design.md, "Layer stacks", "Images and BatchNorm"; formulas in common.layers.norm).

layer_norm:  `nn.LayerNorm(width)`: y = (x − μ)/√(σ² + ε) ⊙ weight + bias (biased σ²), weight = canonical
             `ln{i}.scale`, bias = `ln{i}.offset`, same layout. Exact mode passes ε = layer.eps explicitly; native
             mode keeps torch's own default (1e-5, what a hand port writes; common.traps "layer_norm_eps").
batch_norm:  `nn.BatchNorm1d(C)` on features (B, C), `nn.BatchNorm2d(C)` on images (B, C, H, W): training
             normalises with the biased batch variance, evaluation (.eval()) with the running statistics.
             weight = `bn{i}.scale`, bias = `bn{i}.offset` (parameters), running_mean = `bn{i}.mean`,
             running_var = `bn{i}.var` (buffers: loaded and exported, never given to the optimizer).
             Exact mode: eps = layer.eps, torch's momentum = 1 − m (m the decay convention: running ← m·running +
             (1 − m)·batch statistic). torch's running variance uses the unbiased batch variance; for
             `running_var = "biased"` torch does its update and the running variance is then replaced by
             common.layers.norm.convert_running_var(old, updated, m, (n − 1)/n), n = rows·H·W values per channel
             (a buffer update under no_grad; the normalisation stays torch's). Under `last_batch = "pad"` the batch
             statistics are the real rows' (torch has no masked BatchNorm): the first `Flow.real` rows go through
             the layer, the filler rows after them (weight 0: no loss, no gradient) through `F.batch_norm` with the
             running statistics, as in evaluation. Native mode: `nn.BatchNorm1d/2d(C)` with torch's defaults
             (momentum 0.1, i.e. m = 0.9; eps 1e-5; the unbiased running variance; common.native.LAYER_DEFAULTS).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from backends.torch_backend.core import NO_FLOW, Canonical, Flow
from common.layers import IMAGES, Layer
from common.layers.norm import convert_running_var, running_var_factor, values_per_channel
from common.native import LAYER_DEFAULTS
from common.spec import Spec

TORCH_RUNNING_VAR = LAYER_DEFAULTS["torch"]["running_var"]  # the estimator of torch's running-variance update


class LayerNorm(Canonical, nn.LayerNorm):
    CANONICAL: ClassVar = {"weight": ("scale", None), "bias": ("offset", None)}

    def __init__(self, layer: Layer, spec: Spec, dtype: torch.dtype):
        if spec.mode == "native":
            super().__init__(layer.width, dtype=dtype)
        else:
            super().__init__(layer.width, eps=layer.eps, dtype=dtype)

    def forward(self, h: torch.Tensor, flow: Flow = NO_FLOW) -> torch.Tensor:
        return super().forward(h)


class BatchNorm(Canonical):
    """batch_norm (module docstring), mixed into the nn.BatchNorm1d / nn.BatchNorm2d subclasses below."""

    CANONICAL: ClassVar = {
        "weight": ("scale", None),
        "bias": ("offset", None),
        "running_mean": ("mean", None),
        "running_var": ("var", None),
    }

    def __init__(self, layer: Layer, spec: Spec, dtype: torch.dtype):
        if spec.mode == "native":
            super().__init__(layer.width, dtype=dtype)
        else:
            super().__init__(layer.width, eps=layer.eps, momentum=1.0 - layer.momentum, dtype=dtype)
        self.layer, self.per_row = layer, values_per_channel(layer, 1)  # n = rows · per_row (H·W on images)
        self.converts = spec.mode == "exact" and layer.running_var != TORCH_RUNNING_VAR

    def forward(self, h: torch.Tensor, flow: Flow = NO_FLOW) -> torch.Tensor:
        if not self.training or flow.real is None:
            return self._native(h)
        real = self._native(h[: flow.real])
        filler = F.batch_norm(
            h[flow.real :], self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )
        return torch.cat([real, filler])

    def _native(self, h: torch.Tensor) -> torch.Tensor:
        """torch's own layer on `h` (every row real); in training, its running variance then converted to the
        spec's estimator where they differ."""
        if not (self.training and self.converts):
            return super().forward(h)
        old = self.running_var.clone()
        y = super().forward(h)
        factor = running_var_factor(TORCH_RUNNING_VAR, self.layer.running_var, h.shape[0] * self.per_row)
        with torch.no_grad():  # through .data: autograd saved the buffer for the backward (which in training
            # never reads it) and would refuse a tracked in-place write as a change to a saved tensor
            self.running_var.data.copy_(convert_running_var(old, self.running_var, self.layer.momentum, factor))
        return y


class BatchNorm1d(BatchNorm, nn.BatchNorm1d):
    pass


class BatchNorm2d(BatchNorm, nn.BatchNorm2d):
    pass


def batch_norm(layer: Layer, spec: Spec, dtype: torch.dtype) -> BatchNorm:
    return (BatchNorm2d if layer.flow == IMAGES else BatchNorm1d)(layer, spec, dtype)


LAYERS = {"layer_norm": LayerNorm, "batch_norm": batch_norm}
