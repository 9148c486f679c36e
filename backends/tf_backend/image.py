"""Image layers as Keras 3 layers on (B, H, W, C), channels_last: conv2d, max_pool, avg_pool, global_avg_pool,
flatten (docs/design.md, "Images and BatchNorm"; formulas in common.layers.image).

Keras runs NHWC, the canonical layout, so nothing is transposed:
conv2d          → `keras.layers.Conv2D(filters, k, strides=s, padding)`: kernel (k, k, C, filters) is the canonical
                  `conv{i}.weight` as is, bias `conv{i}.bias`; penalties on `kernel_regularizer` /
                  `bias_regularizer` (backends.tf_backend.optim). Keras's "same" is TensorFlow's rule, out = ⌈n/s⌉
                  with the odd pixel of pad_total at the bottom/right, i.e. `layer.pads`, so the padding is passed as
                  written in both modes.
max_pool        → `keras.layers.MaxPooling2D(k, s, padding)` (a pad never wins).
avg_pool        → `keras.layers.AveragePooling2D(k, s, padding)`: with "same" TF divides by the real pixels of each
                  window, the canonical divisor (torch's and flax's count_include_pad=True is the trap).
global_avg_pool → `keras.layers.GlobalAveragePooling2D()`, the mean over H and W.
flatten         → `keras.layers.Flatten()`: row-major over (H, W, C), the canonical NHWC order.
Native init: Keras's conv default (glorot_uniform, zero bias), seeded from common.rng.KERAS_INIT with the
sub-stream INIT_CONV + i, apart from the dense layers' seeds; exact mode loads the canonical init over it.
"""

from __future__ import annotations

import keras

from backends.tf_backend.core import Build, kernel_and_bias
from common import rng
from common.layers import Layer


def conv2d(layer: Layer, build: Build) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(
        layer.width,
        layer.kernel,
        strides=layer.stride,
        padding=layer.padding,
        data_format="channels_last",
        activation=None if layer.activation == "none" else layer.activation,
        use_bias=layer.bias,
        dtype=build.dtype,
        name=layer.name,
        kernel_initializer=keras.initializers.GlorotUniform(
            seed=build.keras_seed(rng.KERAS_INIT, rng.INIT_CONV + layer.number)
        ),
        kernel_regularizer=build.regularizer(layer, "weight"),
        bias_regularizer=build.regularizer(layer, "bias"),
    )


def _pool(pooling):
    def make(layer: Layer, build: Build) -> keras.layers.Layer:
        return pooling(
            layer.kernel,
            strides=layer.stride,
            padding=layer.padding,
            data_format="channels_last",
            dtype=build.dtype,
            name=f"{layer.kind}{layer.index}",
        )

    return make


def _whole(kind):
    def make(layer: Layer, build: Build) -> keras.layers.Layer:
        return kind(data_format="channels_last", dtype=build.dtype, name=f"{layer.kind}{layer.index}")

    return make


LAYERS = {
    "conv2d": conv2d,
    "max_pool": _pool(keras.layers.MaxPooling2D),
    "avg_pool": _pool(keras.layers.AveragePooling2D),
    "global_avg_pool": _whole(keras.layers.GlobalAveragePooling2D),
    "flatten": _whole(keras.layers.Flatten),
}
VARIABLES = {"conv2d": kernel_and_bias}
"""kind → the Keras variables of a built layer by canonical suffix (model.load_canonical / to_canonical)."""
