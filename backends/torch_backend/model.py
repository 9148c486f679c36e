"""The model: one nn.Module running a layer stack, and the canonical ⇄ torch parameter mapping (docs/design.md,
"Layer stacks", "Initialisation").

`build(layers, spec, dtype)` composes core, norm, image and sequence's LAYERS into a `Stack`, each layer registered
under its canonical prefix (`layer0`, `ln0`, `conv0`, `bn0`, `embed`, `rnn`; kinds without parameters as
`<kind><index>`), built on the CPU in stack order. Images enter canonical NHWC (B, H, W, C) and the Stack permutes
them once to torch's NCHW (B, C, H, W), contiguous (core.nchw). Native mode keeps torch's default inits
(nn.Linear, nn.Conv2d and nn.RNN U(±1/√fan_in), nn.Embedding N(0, 1), BatchNorm γ = 1, β = 0, drawn from the
global torch RNG in stack order after `torch.manual_seed(seed)`, then moved to the device as a user writes
`Model().to(device)`); exact mode overwrites them with `load_canonical`. The canonical mapping covers parameters
and buffers (BatchNorm's running statistics, `bn{i}.mean` and `bn{i}.var`); `trainable` lists parameters only.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from backends.torch_backend import core, image, norm, sequence
from backends.torch_backend.core import Canonical, Flow, nchw
from common.layers import IMAGES, Layer
from common.spec import Spec

LAYERS = {**core.LAYERS, **norm.LAYERS, **image.LAYERS, **sequence.LAYERS}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Stack(nn.Module):
    """The layers in order; `forward(x, lengths, masks, real)` gives the logits (x: features (B, F), images
    (B, H, W, C) or tokens (B, T); the rest as `core.Flow`)."""

    def __init__(self, layers: tuple[Layer, ...], spec: Spec, dtype: torch.dtype):
        super().__init__()
        self.layers = layers
        self.images = layers[0].flow == IMAGES
        for layer in layers:
            self.add_module(layer.name or f"{layer.kind}{layer.index}", LAYERS[layer.kind](layer, spec, dtype))

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor | None = None,
        masks: list[torch.Tensor] | None = None,
        real: int | None = None,
    ) -> torch.Tensor:
        flow, h = Flow(lengths, masks, real), nchw(x) if self.images else x
        for module in self.children():
            h = module(h, flow)
        return h

    def mapped(self) -> list[tuple[Layer, Canonical]]:
        """(layer, module) of the layers with parameters."""
        return [(layer, module) for layer, module in zip(self.layers, self.children(), strict=True) if layer.name]


def build(layers: tuple[Layer, ...], spec: Spec) -> Stack:
    """The torch model of a resolved stack, on the CPU in the spec's dtype (move it with `.to(device)`)."""
    return Stack(layers, spec, DTYPES[spec.dtype])


@torch.no_grad()
def load_canonical(model: Stack, params: dict[str, np.ndarray]) -> None:
    """Copy canonical parameters and state in (weights (in, out) into nn.Linear's (out, in), BatchNorm's running
    statistics into its buffers, ...)."""
    for layer, module in model.mapped():
        for suffix, view in module.canonical_views().items():
            view.copy_(torch.as_tensor(np.asarray(params[layer.param(suffix)])))


@torch.no_grad()
def to_canonical(model: Stack) -> dict[str, np.ndarray]:
    """Current parameters and state as numpy copies in the canonical layout, by canonical name."""
    return {
        layer.param(suffix): value.detach().cpu().numpy().copy()
        for layer, module in model.mapped()
        for suffix, value in module.exported().items()
    }


def trainable(model: Stack) -> list[tuple[str, nn.Parameter]]:
    """(canonical name, parameter) of what the optimizer updates and the penalties read, in stack order (never
    the state: buffers do not require grad)."""
    return [(layer.param(suffix), p) for layer, module in model.mapped() for suffix, p in module.trainable()]
