"""Core layers as torch modules: dense on features (B, F); dropout, relu, tanh on features or images (B, C, H, W)
(docs/design.md, "Layer stacks").

Every kind here and in norm.py, image.py, sequence.py is a subclass of the torch module that does its work, built
by `LAYERS[kind](layer, spec, dtype)` and called as `module(h, flow)` (`Flow`: what travels with the activations;
left out, the module is called as its torch base class is). Images run NCHW, torch's layout (model.Stack permutes
the canonical NHWC input once).
A kind with parameters lists them in `CANONICAL`: torch name → (canonical suffix, permutation): the canonical
tensor is `tensor.permute(*permutation)` of torch's (None: the same layout); parameters and buffers alike
(model.py maps).

dense:      `nn.Linear` then the activation (torch.relu, torch.tanh or none); nn.Linear stores W (out, in), the
            canonical layout is (in, out), hence permuted (1, 0).
dropout:    idiom `dropout_rng` on: `nn.Dropout(rate)` (the global torch RNG, off under .eval()); off: `h · m` with the
            shared pre-scaled mask m of this dropout layer (common.dropout; docs/design.md, "Dropout"), identity
            without masks (evaluation). No torch layer takes an external mask. Masks of image dropout come NHWC
            (rows, H, W, C) and are permuted to NCHW.
relu, tanh: `nn.ReLU`, `nn.Tanh`.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import nn

from common.idioms import on
from common.layers import IMAGES, Layer
from common.spec import Spec

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "none": lambda h: h}


def nchw(x: torch.Tensor) -> torch.Tensor:
    """An NHWC tensor (B, H, W, C) as torch's NCHW (B, C, H, W), contiguous: the bare permuted view is a
    channels_last tensor, which sends nn.Conv2d to another kernel (on the CPU in float64 ~1000× slower)."""
    return x.permute(0, 3, 1, 2).contiguous()


class Flow(NamedTuple):
    """What travels with the activations through one pass: the kept token counts of a token batch (host tensor;
    None for features), the exact-mode dropout masks of a training pass (one per dropout layer; None otherwise)
    and the real rows of a padded training batch: `real` = how many rows head the batch before its filler rows
    (weight 0, `batching.last_batch = "pad"`), None when every row is real. A Python int, not a mask: slicing
    by it keeps every shape static (torch.compile specialises on it, a CUDA graph is captured per value), where
    boolean-mask indexing would synchronise and cannot be captured."""

    lengths: torch.Tensor | None = None
    masks: list[torch.Tensor] | None = None
    real: int | None = None


NO_FLOW = Flow()  # a module called alone, as its torch base class is: features, no shared masks


class Canonical:
    """A layer with parameters: its canonical ⇄ torch mapping, from `CANONICAL`."""

    CANONICAL: ClassVar[dict[str, tuple[str, tuple[int, ...] | None]]] = {}

    def canonical_views(self) -> dict[str, torch.Tensor]:
        """Canonical suffix → the tensor in the canonical layout (a view: copying into it loads the tensor)."""
        return {
            suffix: getattr(self, name) if permutation is None else getattr(self, name).permute(*permutation)
            for name, (suffix, permutation) in self.CANONICAL.items()
            if getattr(self, name) is not None  # bias=False leaves `bias` None
        }

    def exported(self) -> dict[str, torch.Tensor]:
        """Canonical suffix → the value the canonical model holds."""
        return self.canonical_views()

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        """(canonical suffix, parameter) of what the optimizer updates (buffers, such as BatchNorm's running
        statistics, never require grad)."""
        return [
            (suffix, getattr(self, name))
            for name, (suffix, _) in self.CANONICAL.items()
            if getattr(self, name) is not None and getattr(self, name).requires_grad
        ]


class Dense(Canonical, nn.Linear):
    CANONICAL: ClassVar = {"weight": ("weight", (1, 0)), "bias": ("bias", None)}

    def __init__(self, layer: Layer, spec: Spec, dtype: torch.dtype):
        super().__init__(layer.in_width, layer.width, bias=layer.bias, dtype=dtype)
        self.activation = ACTIVATIONS[layer.activation]

    def forward(self, h: torch.Tensor, flow: Flow = NO_FLOW) -> torch.Tensor:
        return self.activation(super().forward(h))


class NativeDropout(nn.Dropout):
    def __init__(self, layer: Layer, spec: Spec, dtype: torch.dtype):
        super().__init__(layer.rate)

    def forward(self, h: torch.Tensor, flow: Flow = NO_FLOW) -> torch.Tensor:
        return super().forward(h)


class SharedMaskDropout(nn.Module):
    def __init__(self, layer: Layer, spec: Spec, dtype: torch.dtype):
        super().__init__()
        self.number, self.images = layer.number, layer.flow == IMAGES

    def forward(self, h: torch.Tensor, flow: Flow = NO_FLOW) -> torch.Tensor:
        if flow.masks is None:
            return h
        mask = flow.masks[self.number]
        return h * (nchw(mask) if self.images else mask)


def dropout(layer: Layer, spec: Spec, dtype: torch.dtype) -> nn.Module:
    return (NativeDropout if on(spec, "dropout_rng") else SharedMaskDropout)(layer, spec, dtype)


class ReLU(nn.ReLU):
    def __init__(self, layer: Layer, spec: Spec, dtype: torch.dtype):
        super().__init__()

    def forward(self, h: torch.Tensor, flow: Flow = NO_FLOW) -> torch.Tensor:
        return super().forward(h)


class Tanh(nn.Tanh):
    def __init__(self, layer: Layer, spec: Spec, dtype: torch.dtype):
        super().__init__()

    def forward(self, h: torch.Tensor, flow: Flow = NO_FLOW) -> torch.Tensor:
        return super().forward(h)


LAYERS = {"dense": Dense, "dropout": dropout, "relu": ReLU, "tanh": Tanh}
