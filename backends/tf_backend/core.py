"""Core layers as Keras 3 layers: dense, dropout, relu, tanh (docs/design.md, "Layer stacks").

dense → `keras.layers.Dense(units, activation)`: kernel (in, out) is the canonical `layer{i}.weight` as is, the
penalties ride on `kernel_regularizer` / `bias_regularizer` (backends.tf_backend.optim). dropout → with the idiom
`dropout_rng`: `keras.layers.Dropout(rate, seed)`, Keras's own inverted dropout and RNG; otherwise `SharedMask`,
h ⊙ m with the common.dropout mask of this layer (no Keras layer takes an external mask; docs/design.md,
"Dropout").
relu, tanh → `keras.layers.Activation`. Native init is Keras's default (glorot_uniform, zero bias), seeded from
common.rng.KERAS_INIT; exact mode overwrites it with the canonical init (model.load_canonical).
`Build` is what every layer factory reads besides the `common.layers.Layer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np

from common import rng
from common.layers import Layer


@dataclass(frozen=True)
class Build:
    """The spec's settings a layer factory needs: dtype, native vs exact, the seed, Keras's token mask on or off
    (`sequence.mask`), the Keras regularizer of each canonical parameter (None: not penalized) and the idioms on
    (common.idioms; model.build passes the run's `active` set, and `native=True` turns every one on for a layer built
    alone)."""

    dtype: str
    native: bool
    seed: int
    mask: bool = True
    regularizers: dict = field(default_factory=dict)
    idioms: frozenset | None = None

    def on(self, idiom: str) -> bool:
        """Whether `idiom` (common.idioms) is on for these layers."""
        return self.native or (self.idioms is not None and idiom in self.idioms)

    def keras_seed(self, stream: int, *sub: int) -> int:
        """An independent Keras seed per (spec seed, common.rng stream, sub-stream...)."""
        return int(np.random.SeedSequence([self.seed, stream, *sub]).generate_state(1)[0])

    def regularizer(self, layer: Layer, suffix: str):
        return self.regularizers.get(layer.param(suffix))


class SharedMask(keras.layers.Layer):
    """Exact-mode dropout: h ⊙ m with the shared pre-scaled mask m (rows, width); identity without a mask (eval)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, keep=None):
        return inputs if keep is None else inputs * keep


def dense(layer: Layer, build: Build) -> keras.layers.Dense:
    return keras.layers.Dense(
        layer.width,
        activation=None if layer.activation == "none" else layer.activation,
        use_bias=layer.bias,
        dtype=build.dtype,
        name=layer.name,
        kernel_initializer=keras.initializers.GlorotUniform(seed=build.keras_seed(rng.KERAS_INIT, layer.number)),
        kernel_regularizer=build.regularizer(layer, "weight"),
        bias_regularizer=build.regularizer(layer, "bias"),
    )


def dropout(layer: Layer, build: Build) -> keras.layers.Layer:
    name = f"dropout{layer.number}"
    if build.on("dropout_rng"):
        return keras.layers.Dropout(
            layer.rate, seed=build.keras_seed(rng.KERAS_DROPOUT, layer.number), dtype=build.dtype, name=name
        )
    return SharedMask(dtype=build.dtype, name=name)


def activation(layer: Layer, build: Build) -> keras.layers.Activation:
    return keras.layers.Activation(layer.kind, dtype=build.dtype, name=f"{layer.kind}{layer.index}")


LAYERS = {"dense": dense, "dropout": dropout, "relu": activation, "tanh": activation}


def kernel_and_bias(native) -> dict:
    """A Dense or Conv2D layer's variables by canonical suffix (no `bias` when built with use_bias=False)."""
    return {"weight": native.kernel, **({"bias": native.bias} if native.use_bias else {})}


VARIABLES = {"dense": kernel_and_bias}
"""kind → the Keras variables of a built layer by canonical suffix (model.load_canonical / to_canonical)."""
