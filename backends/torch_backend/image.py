"""Image layers as torch modules on torch's NCHW (B, C, H, W): conv2d, max_pool, avg_pool, global_avg_pool,
flatten (docs/design.md, "Images and BatchNorm"; formulas in common.layers.image). model.Stack permutes the
canonical NHWC input to NCHW once, at the entry.

Idioms (common.idioms): `same_padding`, `avg_pool_count`, `flatten_order`, each switching what its paragraph
below calls native mode.

"same" padding. Exact mode (`same_padding` off): TF's rule, `layer.pads` = (top, bottom, left, right), applied
with `F.pad` (torch's order (left, right, top, bottom)), asymmetric when the total is odd (the extra pixel at the
bottom/right), and the layer itself unpadded. Native mode: what a port writes, `padding=k // 2` on every side
(common.native.symmetric_pads; at stride 2 the windows shift by a pixel: the trap conv_same_stride2).

conv2d:          `nn.Conv2d(C_in, filters, k, stride)` then the activation; torch's weight (out, in, kh, kw) is
                 the canonical `conv{i}.weight` (kh, kw, in, out) permuted (2, 3, 1, 0), bias the same layout.
max_pool:        `nn.MaxPool2d(k, stride)`; exact mode pads with −∞ (a pad never wins), native mode `padding=p`.
avg_pool:        exact mode: Σ_window x / (number of REAL pixels in the window), TF's rule: the window sums of the
                 zero-padded input, `nn.AvgPool2d(k, stride, divisor_override=1)`, divided by the real-pixel count
                 of each window (the same pooling of a padded ones image, a buffer). torch's own
                 `count_include_pad=False` would count right for a symmetric pad only: the odd pixel of "same" at
                 the bottom/right has no symmetric `padding=`. Native mode: `nn.AvgPool2d(k, stride, padding=p)`,
                 `count_include_pad=True` by default, dividing by k² (the trap avg_pool_same_count).
global_avg_pool: the mean over H, W: (B, C, H, W) → (B, C).
flatten:         exact mode: permute to NHWC, then `flatten(1)`: the canonical order (h·W + w)·C + c; native mode
                 `x.flatten(1)` on NCHW, the order (c·H + h)·W + w a hand port gets (the trap flatten_order).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from backends.torch_backend.core import ACTIVATIONS, NO_FLOW, Canonical, Flow
from common.idioms import on
from common.layers import Layer
from common.native import symmetric_pads
from common.spec import Spec

NHWC = (0, 2, 3, 1)  # the permutation of an NCHW tensor that gives the canonical NHWC


def padding(layer: Layer, spec: Spec) -> tuple[tuple[int, int, int, int] | None, int]:
    """(the `F.pad` argument (left, right, top, bottom), or None for no explicit pad; the layer's own symmetric
    `padding=`): TF's pads explicitly by `layer.pads`, or (`same_padding`) `padding=k // 2` as a port writes."""
    if on(spec, "same_padding"):
        return None, symmetric_pads(layer)[0]
    top, bottom, left, right = layer.pads
    return ((left, right, top, bottom) if any(layer.pads) else None), 0


class Conv2D(Canonical, nn.Conv2d):
    CANONICAL: ClassVar = {"weight": ("weight", (2, 3, 1, 0)), "bias": ("bias", None)}

    def __init__(self, layer: Layer, spec: Spec, dtype: torch.dtype):
        pads, own = padding(layer, spec)
        super().__init__(
            layer.in_width, layer.width, layer.kernel, stride=layer.stride, padding=own, bias=layer.bias, dtype=dtype
        )
        self.pads, self.activation = pads, ACTIVATIONS[layer.activation]

    def forward(self, h: torch.Tensor, flow: Flow = NO_FLOW) -> torch.Tensor:
        return self.activation(super().forward(h if self.pads is None else F.pad(h, self.pads)))


class MaxPool(nn.MaxPool2d):
    def __init__(self, layer: Layer, spec: Spec, dtype: torch.dtype):
        pads, own = padding(layer, spec)
        super().__init__(layer.kernel, layer.stride, padding=own)
        self.pads = pads

    def forward(self, h: torch.Tensor, flow: Flow = NO_FLOW) -> torch.Tensor:
        return super().forward(h if self.pads is None else F.pad(h, self.pads, value=float("-inf")))


class AvgPool(nn.AvgPool2d):
    count: torch.Tensor | None  # the real pixels of each window (H', W'); None with `avg_pool_count` (k²)

    def __init__(self, layer: Layer, spec: Spec, dtype: torch.dtype):
        pads, own = padding(layer, spec)
        real = not on(spec, "avg_pool_count")
        super().__init__(layer.kernel, layer.stride, padding=own, divisor_override=1 if real else None)
        self.pads = pads
        count = self._pooled(torch.ones(1, 1, *layer.in_shape[:2], dtype=dtype))[0, 0] if real else None
        self.register_buffer("count", count, persistent=False)

    def _pooled(self, h: torch.Tensor) -> torch.Tensor:
        """torch's pooling of `h` zero-padded by `pads` (window sums under divisor 1)."""
        return super().forward(h if self.pads is None else F.pad(h, self.pads))

    def forward(self, h: torch.Tensor, flow: Flow = NO_FLOW) -> torch.Tensor:
        return self._pooled(h) if self.count is None else self._pooled(h) / self.count


class GlobalAvgPool(nn.Module):
    def __init__(self, layer: Layer, spec: Spec, dtype: torch.dtype):
        super().__init__()

    def forward(self, h: torch.Tensor, flow: Flow = NO_FLOW) -> torch.Tensor:
        return h.mean(dim=(2, 3))


class Flatten(nn.Flatten):
    def __init__(self, layer: Layer, spec: Spec, dtype: torch.dtype):
        super().__init__()
        self.canonical_order = not on(spec, "flatten_order")

    def forward(self, h: torch.Tensor, flow: Flow = NO_FLOW) -> torch.Tensor:
        return super().forward(h.permute(*NHWC) if self.canonical_order else h)


LAYERS = {
    "conv2d": Conv2D,
    "max_pool": MaxPool,
    "avg_pool": AvgPool,
    "global_avg_pool": GlobalAvgPool,
    "flatten": Flatten,
}
