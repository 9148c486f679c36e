"""Core layers as torch modules: dense, dropout, relu, tanh on features (B, F) (docs/design.md, "Layer stacks").

Every kind here and in norm.py, sequence.py is a subclass of the torch module that does its work, built by
`LAYERS[kind](layer, spec, dtype)` and called as `module(h, flow)` (`Flow`: what travels with the activations;
left out, the module is called as its torch base class is).
A kind with parameters lists them in `CANONICAL`, torch name → (canonical suffix, transposed) (model.py maps).

dense:      `nn.Linear` then the activation (torch.relu, torch.tanh or none); nn.Linear stores W (out, in), the
            canonical layout is (in, out), hence transposed.
dropout:    native mode `nn.Dropout(rate)` (the global torch RNG, off under .eval()); exact mode `h · m` with the
            shared pre-scaled mask m of this dropout layer (common.dropout; docs/design.md, "Dropout"), identity
            without masks (evaluation). No torch layer takes an external mask.
relu, tanh: `nn.ReLU`, `nn.Tanh`.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import nn

from common.layers import Layer
from common.spec import Spec

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "none": lambda h: h}


class Flow(NamedTuple):
    """What travels with the activations through one pass: the kept token counts of a token batch (host tensor;
    None for features) and the exact-mode dropout masks of a training pass (one per dropout layer; None otherwise)."""

    lengths: torch.Tensor | None = None
    masks: list[torch.Tensor] | None = None


NO_FLOW = Flow()  # a module called alone, as its torch base class is: features, no shared masks


class Canonical:
    """A layer with parameters: its canonical ⇄ torch mapping, from `CANONICAL`."""

    CANONICAL: ClassVar[dict[str, tuple[str, bool]]] = {}

    def canonical_views(self) -> dict[str, torch.Tensor]:
        """Canonical suffix → the parameter in the canonical layout (a view: copying into it loads the parameter)."""
        return {
            suffix: getattr(self, name).T if transposed else getattr(self, name)
            for name, (suffix, transposed) in self.CANONICAL.items()
        }

    def exported(self) -> dict[str, torch.Tensor]:
        """Canonical suffix → the value the canonical model holds."""
        return self.canonical_views()

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        """(canonical suffix, parameter) of what the optimizer updates."""
        return [
            (suffix, getattr(self, name))
            for name, (suffix, _) in self.CANONICAL.items()
            if getattr(self, name).requires_grad
        ]


class Dense(Canonical, nn.Linear):
    CANONICAL: ClassVar = {"weight": ("weight", True), "bias": ("bias", False)}

    def __init__(self, layer: Layer, spec: Spec, dtype: torch.dtype):
        super().__init__(layer.in_width, layer.width, dtype=dtype)
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
        self.number = layer.number

    def forward(self, h: torch.Tensor, flow: Flow = NO_FLOW) -> torch.Tensor:
        return h if flow.masks is None else h * flow.masks[self.number]


def dropout(layer: Layer, spec: Spec, dtype: torch.dtype) -> nn.Module:
    return (NativeDropout if spec.mode == "native" else SharedMaskDropout)(layer, spec, dtype)


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
