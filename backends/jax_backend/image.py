"""The image layer kinds (common.layers.image) as flax.linen, on (B, H, W, C): flax is NHWC like the canonical
layout, so nothing is transposed (docs/design.md, "Images and BatchNorm").

conv2d:          `nn.Conv(filters, (k, k), strides=(s, s))` named `conv{i}`, precision HIGHEST like Dense; its
                 kernel (k, k, in, out) and bias are `conv{i}.weight` and `conv{i}.bias` as they are. It pads
                 explicitly, ((top, bottom), (left, right)) = `layer.pads` (TF's "same" rule, resolved in
                 common); with the idiom `same_padding` on it writes `padding="SAME"` / `"VALID"`, what a port
                 writes (XLA's "SAME" is the same rule, the odd pixel at the bottom/right: no change in JAX).
max_pool:        `nn.max_pool` (its padding is −∞: a pad never wins), the same padding as conv2d.
avg_pool:        idiom `avg_pool_count` on: `nn.avg_pool` with flax's default `count_include_pad=True`: Σ window /
                 k² (the trap `avg_pool_same_count` under "same"). Off: Σ window / (real pixels in the window), the
                 canonical rule, which is flax's `count_include_pad=False` formula, `nn.pool` sum over `nn.pool` sum
                 of ones; written out here only because flax pools its ones from `jnp.ones(shape)`, float64 under
                 x64, which would turn a float32 run's activations float64 (the ones here have the input's dtype).
global_avg_pool: mean over (H, W).
flatten:         `x.reshape(B, −1)`: NHWC order (h·W + w)·C + c, the canonical one, in both modes.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from backends.jax_backend.core import ACTIVATIONS, Options
from common.layers import Layer


def padding(layer: Layer, options: Options):
    """flax's padding argument: the explicit ((top, bottom), (left, right)), or "SAME" / "VALID" with the idiom
    `same_padding` on."""
    if options.on("same_padding"):
        return layer.padding.upper()
    top, bottom, left, right = layer.pads
    return ((top, bottom), (left, right))


def conv2d(layer: Layer, options: Options):
    conv = nn.Conv(
        layer.width,
        (layer.kernel, layer.kernel),
        strides=(layer.stride, layer.stride),
        padding=padding(layer, options),
        dtype=options.dtype,
        param_dtype=options.dtype,
        precision=jax.lax.Precision.HIGHEST,
        use_bias=layer.bias,
        name=layer.name,
    )
    act = ACTIVATIONS[layer.activation]
    return lambda x, call: act(conv(x))


def window(layer: Layer, options: Options) -> dict:
    """The pooling window, strides and padding of a pool layer as flax's pooling functions take them."""
    return {
        "window_shape": (layer.kernel, layer.kernel),
        "strides": (layer.stride, layer.stride),
        "padding": padding(layer, options),
    }


def max_pool(layer: Layer, options: Options):
    pool = window(layer, options)
    return lambda x, call: nn.max_pool(x, **pool)


def avg_pool(layer: Layer, options: Options):
    pool = window(layer, options)
    if options.on("avg_pool_count"):
        return lambda x, call: nn.avg_pool(x, **pool)

    def apply(x, call):
        ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
        return nn.pool(x, 0.0, jax.lax.add, **pool) / nn.pool(ones, 0.0, jax.lax.add, **pool)

    return apply


def global_avg_pool(layer: Layer, options: Options):
    return lambda x, call: jnp.mean(x, axis=(1, 2))


def flatten(layer: Layer, options: Options):
    return lambda x, call: x.reshape(x.shape[0], -1)


LAYERS = {
    "conv2d": conv2d,
    "max_pool": max_pool,
    "avg_pool": avg_pool,
    "global_avg_pool": global_avg_pool,
    "flatten": flatten,
}
NAMES = {"conv2d": {"weight": ("kernel",), "bias": ("bias",)}}
