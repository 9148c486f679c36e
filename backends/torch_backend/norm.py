"""Normalisation layers as torch modules: layer_norm over the features of each row, batch_norm over the rows of a
batch (docs/design.md, "Layer stacks", "Images and BatchNorm"; formulas in common.layers.norm).

layer_norm:  `nn.LayerNorm(width)`: y = (x − μ)/√(σ² + ε) ⊙ weight + bias (biased σ²), weight = canonical
             `ln{i}.scale`, bias = `ln{i}.offset`, same layout. ε = layer.eps passed explicitly; idiom
             `layer_norm_eps` on: torch's own default (1e-5, what a hand port writes; common.traps "layer_norm_eps").
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
             running statistics, as in evaluation. Idioms: torch's defaults one by one (common.native.LAYER_DEFAULTS):
             `bn_momentum` 0.1 (m = 0.9), `bn_eps` 1e-5, `bn_running_var` the unbiased running variance kept.
             Under split steps (common.layers.norm, "under split steps"; R gloo ranks under DDP, distributed.py):
             sync = false is the layer above on each rank's part; DDP's default broadcast_buffers=True hands rank
             0's running statistics to the others before a synchronised forward, so rank 0, which evaluates and
             records, keeps replica 0's chain. sync = true (`SyncBatchNorm1d/2d`, both modes): a port writes
             `nn.SyncBatchNorm.convert_sync_batchnorm`, but nn.SyncBatchNorm is CUDA-only (in training under a
             process group it refuses CPU tensors; its kernels have no CPU implementation) and DDP refuses a CPU
             module holding one ("SyncBatchNorm layers only work with GPU modules"), while the model is built on
             the CPU before `.to(device)`. So in training under a process group, on any device, the layer takes
             the G = R·c rows' statistics per channel over their n = G·H·W values through all-reduces (SUM) over
             the group that autograd differentiates (torch.distributed._functional_collectives.all_reduce; the
             backward all-reduces the gradient):
                 μ = Σ_ranks Σ x / n,  σ²_b = Σ_ranks Σ (x − μ)² / n  (two passes),  y = γ ⊙ (x − μ)/√(σ²_b + ε) + β,
                 running_mean ← (1 − p)·running_mean + p·μ,  running_var ← (1 − p)·running_var + p·σ²_b·n/(n − 1)
             (p torch's momentum, torch's unbiased estimator, under no_grad), then converted as above with this n.
             Without a process group (R = 1) it is the layer above on the micro-batch.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed._functional_collectives import all_reduce

from backends.torch_backend.core import NO_FLOW, Canonical, Flow
from common.idioms import on
from common.layers import IMAGES, Layer
from common.layers.norm import convert_running_var, running_var_factor, values_per_channel
from common.native import LAYER_DEFAULTS
from common.spec import Spec

TORCH_RUNNING_VAR = LAYER_DEFAULTS["torch"]["running_var"]  # the estimator of torch's running-variance update


class LayerNorm(Canonical, nn.LayerNorm):
    CANONICAL: ClassVar = {"weight": ("scale", None), "bias": ("offset", None)}

    def __init__(self, layer: Layer, spec: Spec, dtype: torch.dtype):
        if on(spec, "layer_norm_eps"):
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
        own = {}  # torch's defaults where their idiom is on
        if not on(spec, "bn_eps"):
            own["eps"] = layer.eps
        if not on(spec, "bn_momentum"):
            own["momentum"] = 1.0 - layer.momentum
        super().__init__(layer.width, dtype=dtype, **own)
        self.layer, self.per_row = layer, values_per_channel(layer, 1)  # n = rows · per_row (H·W on images)
        self.decay = layer.momentum if "momentum" in own else LAYER_DEFAULTS["torch"]["bn_momentum"]
        self.converts = not on(spec, "bn_running_var") and layer.running_var != TORCH_RUNNING_VAR

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
            return self._layer(h)
        old = self.running_var.clone()
        y = self._layer(h)
        factor = running_var_factor(TORCH_RUNNING_VAR, self.layer.running_var, self._count(h))
        with torch.no_grad():  # through .data: autograd saved the buffer for the backward (which in training
            # never reads it) and would refuse a tracked in-place write as a change to a saved tensor
            self.running_var.data.copy_(convert_running_var(old, self.running_var, self.decay, factor))
        return y

    def _layer(self, h: torch.Tensor) -> torch.Tensor:
        """The torch layer's own forward."""
        return super().forward(h)

    def _count(self, h: torch.Tensor) -> int:
        """n, the values per channel the batch statistics of `h` are taken over."""
        return h.shape[0] * self.per_row


class BatchNorm1d(BatchNorm, nn.BatchNorm1d):
    pass


class BatchNorm2d(BatchNorm, nn.BatchNorm2d):
    pass


def _group() -> bool:
    """Whether a process group is up (R > 1 replicas: distributed.Replicas)."""
    return dist.is_available() and dist.is_initialized()


class AllRanks(BatchNorm):
    """batch_norm with sync = true (module docstring): in training under a process group, the statistics of every
    rank's rows; otherwise torch's layer on this micro-batch."""

    def _layer(self, h: torch.Tensor) -> torch.Tensor:
        return self._all_ranks(h) if self.training and _group() else super()._layer(h)

    def _count(self, h: torch.Tensor) -> int:
        return super()._count(h) * (dist.get_world_size() if _group() else 1)

    def _all_ranks(self, h: torch.Tensor) -> torch.Tensor:
        """The module docstring's formulas, through all-reduces that autograd differentiates (their backward: the
        all-reduce of the gradient)."""
        axes, shape = [0, *range(2, h.dim())], [1, -1] + [1] * (h.dim() - 2)
        n = self._count(h)
        mean = all_reduce(h.sum(axes), "sum", dist.group.WORLD) / n
        centred = h - mean.view(shape)
        var = all_reduce((centred * centred).sum(axes), "sum", dist.group.WORLD) / n
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * running_var_factor("biased", TORCH_RUNNING_VAR, n), self.momentum)
        return centred / torch.sqrt(var + self.eps).view(shape) * self.weight.view(shape) + self.bias.view(shape)


class SyncBatchNorm1d(AllRanks, nn.BatchNorm1d):
    pass


class SyncBatchNorm2d(AllRanks, nn.BatchNorm2d):
    pass


def batch_norm(layer: Layer, spec: Spec, dtype: torch.dtype) -> BatchNorm:
    if layer.sync:
        return (SyncBatchNorm2d if layer.flow == IMAGES else SyncBatchNorm1d)(layer, spec, dtype)
    return (BatchNorm2d if layer.flow == IMAGES else BatchNorm1d)(layer, spec, dtype)


LAYERS = {"layer_norm": LayerNorm, "batch_norm": batch_norm}
