"""The model: one nn.Module running a layer stack, and the canonical ⇄ torch parameter mapping (docs/design.md,
"Layer stacks", "Initialisation").

`build(layers, spec, dtype)` composes core, norm and sequence's LAYERS into a `Stack`, each layer registered under
its canonical prefix (`layer0`, `ln0`, `embed`, `rnn`; kinds without parameters as `<kind><index>`), built on the
CPU in stack order. Native mode keeps torch's default inits (nn.Linear and nn.RNN U(±1/√fan_in), nn.Embedding
N(0, 1), drawn from the global torch RNG in that order after `torch.manual_seed(seed)`, then moved to the device as
a user writes `Model().to(device)`); exact mode overwrites them with `load_canonical`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from backends.torch_backend import core, norm, sequence
from backends.torch_backend.core import Canonical, Flow
from common.layers import Layer
from common.spec import Spec

LAYERS = {**core.LAYERS, **norm.LAYERS, **sequence.LAYERS}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Stack(nn.Module):
    """The layers in order; `forward(x, lengths, masks)` gives the logits (x: features (B, F) or tokens (B, T))."""

    def __init__(self, layers: tuple[Layer, ...], spec: Spec, dtype: torch.dtype):
        super().__init__()
        self.layers = layers
        for layer in layers:
            self.add_module(layer.name or f"{layer.kind}{layer.index}", LAYERS[layer.kind](layer, spec, dtype))

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, masks: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        flow, h = Flow(lengths, masks), x
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
    """Copy canonical parameters in (weights (in, out) into nn.Linear's (out, in), ...)."""
    for layer, module in model.mapped():
        for suffix, view in module.canonical_views().items():
            view.copy_(torch.as_tensor(np.asarray(params[layer.param(suffix)])))


@torch.no_grad()
def to_canonical(model: Stack) -> dict[str, np.ndarray]:
    """Current parameters as numpy copies in the canonical layout, by canonical name."""
    return {
        layer.param(suffix): value.detach().cpu().numpy().copy()
        for layer, module in model.mapped()
        for suffix, value in module.exported().items()
    }


def trainable(model: Stack) -> list[tuple[str, nn.Parameter]]:
    """(canonical name, parameter) of what the optimizer updates and the penalties read, in stack order."""
    return [(layer.param(suffix), p) for layer, module in model.mapped() for suffix, p in module.trainable()]
