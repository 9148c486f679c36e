"""Image layers on (B, H, W, C), canonical NHWC: conv2d, max_pool, avg_pool, global_avg_pool, flatten.

"same" padding is TensorFlow's rule (`same_pads`): out = ⌈n/s⌉, pad_total = max((out − 1)·s + k − n, 0), the
odd pixel at the bottom/right; "valid": out = ⌊(n − k)/s⌋ + 1, no padding (a window larger than the input is an
error naming the key). The resolved `Layer.pads` is (top, bottom, left, right); kernels and windows are square.

conv2d:          y[b, i, j, o] = act(Σ_{u,v,c} x̃[b, s·i + u, s·j + v, c]·K[u, v, c, o] + β[o]), x̃ the input
                 zero-padded by `pads`; K (k, k, C, filters) as `conv{i}.weight` (kernel, regularized), β
                 (filters,) as `conv{i}.bias`. Init common.initializers.conv from default_rng([seed, rng.INIT,
                 rng.INIT_CONV + i]). Keys: filters, kernel (required), stride 1, padding "valid", activation none,
                 bias true (false: no β, the idiom before a batch_norm).
max_pool:        y[b, i, j, c] = max over the window of x padded with −∞ (a pad never wins).
avg_pool:        y[b, i, j, c] = Σ_window x / (number of REAL pixels in the window): TF's rule for "same"
                 (torch's `count_include_pad=True` default and flax's `count_include_pad=True` divide by k²: the
                 trap `avg_pool_same_count`). Keys of both pools: size (default 2), stride (default: size), padding.
global_avg_pool: y[b, c] = mean over H, W (images → features).
flatten:         y[b, (h·W + w)·C + c] = x[b, h, w, c]: NHWC order. torch's `x.flatten(1)` on NCHW gives the
                 order (c·H + h)·W + w instead (the trap `flatten_order`).
"""

from __future__ import annotations

import math

import numpy as np

from common import initializers, rng
from common.errors import InputError
from common.layers.base import FEATURES, IMAGES, Key, Layer, LayerKind, Param

PADDINGS = ("same", "valid")


def _positive(v) -> str | None:
    return None if v > 0 else "must be a positive integer"


def _padding(v) -> str | None:
    return None if v in PADDINGS else "must be one of same, valid"


def same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    """(before, after) zero padding of TF's "same" for size n, window k, stride s (module docstring)."""
    total = max((math.ceil(n / s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def out_size(n: int, k: int, s: int, padding: str) -> int:
    """The output size along one axis (≤ 0 when a "valid" window does not fit)."""
    return math.ceil(n / s) if padding == "same" else (n - k) // s + 1


def window(table: dict, in_shape: tuple[int, ...], where: str, size_key: str) -> dict:
    """The resolved `kernel`, `stride`, `padding`, `pads` and output (H', W') of a conv or pool window."""
    h, w = in_shape[0], in_shape[1]
    k, s, padding = table[size_key], table["stride"] or table[size_key], table["padding"]
    oh, ow = out_size(h, k, s, padding), out_size(w, k, s, padding)
    if oh < 1 or ow < 1:
        what = "kernel" if size_key == "kernel" else "pooling window"
        raise InputError(
            f"spec key '{where}.{size_key}': the {what} {k}×{k} is larger than its {h}×{w} input "
            f"(padding '{padding}'); use a smaller {size_key}, padding = \"same\", or fewer layers before it"
        )
    pads = (*same_pads(h, k, s), *same_pads(w, k, s)) if padding == "same" else (0, 0, 0, 0)
    return {"kernel": k, "stride": s, "padding": padding, "pads": pads, "shape": (oh, ow)}


class Conv2D(LayerKind):
    kind, prefix = "conv2d", "conv"
    reads, gives = (IMAGES,), IMAGES
    required = ("filters", "kernel")
    keys = {
        "filters": Key(int, None, _positive),
        "kernel": Key(int, None, _positive),
        "stride": Key(int, 1, _positive),
        "padding": Key(str, "valid", _padding),
        "activation": Key(
            str, "none", lambda v: None if v in ("relu", "tanh", "none") else "must be one of relu, tanh, none"
        ),
        "bias": Key(bool, True),
    }
    params = {
        "weight": Param(lambda layer: (layer.kernel, layer.kernel, layer.in_width, layer.width), kernel=True),
        "bias": Param(lambda layer: (layer.width,), kernel=False),
    }

    def resolve(self, table, in_shape, where):
        out = window(table, in_shape, where, "kernel")
        return {**out, "shape": (*out["shape"], table["filters"])}

    def init(self, layer, scheme, seed):
        draw = np.random.default_rng([seed, rng.INIT, rng.INIT_CONV + layer.number])
        weight, bias = initializers.conv(draw, scheme, layer.kernel, layer.kernel, layer.in_width, layer.width)
        return {"weight": weight, "bias": bias}


class Pool(LayerKind):
    reads, gives = (IMAGES,), IMAGES
    keys = {
        "size": Key(int, 2, _positive),
        "stride": Key(int, 0, lambda v: None if v >= 0 else "must be ≥ 0 (0: the window size)"),
        "padding": Key(str, "valid", _padding),
    }

    def resolve(self, table, in_shape, where):
        out = window(table, in_shape, where, "size")
        return {**out, "shape": (*out["shape"], in_shape[2])}


class MaxPool(Pool):
    kind = "max_pool"


class AvgPool(Pool):
    kind = "avg_pool"


class GlobalAvgPool(LayerKind):
    kind = "global_avg_pool"
    reads, gives = (IMAGES,), FEATURES

    def resolve(self, table, in_shape, where):
        return {"shape": (in_shape[2],)}


class Flatten(LayerKind):
    kind = "flatten"
    reads, gives = (IMAGES,), FEATURES

    def resolve(self, table, in_shape, where):
        return {"shape": (int(np.prod(in_shape)),)}


def nhwc_to_nchw_order(layer: Layer) -> np.ndarray:
    """For a flatten layer: perm with flat_nchw = flat_nhwc[perm], i.e. the NHWC index of each NCHW position."""
    h, w, c = layer.in_shape
    return np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)


KINDS = (Conv2D(), MaxPool(), AvgPool(), GlobalAvgPool(), Flatten())
