"""Sequence layers as Keras 3 layers: embedding, masked_mean, rnn (docs/design.md, "Padding and masks").

embedding → `keras.layers.Embedding(vocab, dim, mask_zero=sequence.mask)`: token 0 is the pad and never a real
token, so Keras's own mask (tokens != 0) is the token mask μ, and Keras hands it to the next layer itself (the
`_keras_mask` of the output, filled into that layer's `mask` argument). Row 0 stays trainable (no padding_idx).
masked_mean → `MaskedMean`, Keras's `GlobalAveragePooling1D` except for the masked division: Σ μ·x / max(Σ μ, 1)
(Keras divides by Σ μ, NaN on an all-padded row); without a mask it is the plain mean over T.
rnn → `keras.layers.SimpleRNN(units, activation="tanh")`: masked steps carry the state, so it returns the state
after each row's last real token for pre- and post-padding alike (0 for an all-padded row). Its cell's kernel,
recurrent_kernel and single bias are the canonical W, U, b as they are.
Native init: Keras's defaults (Embedding uniform ±0.05, SimpleRNN glorot / orthogonal / zeros), seeded from
common.rng.KERAS_INIT with the sub-streams INIT_EMBED and INIT_RNN.
"""

from __future__ import annotations

import keras
from keras import ops

from backends.tf_backend.core import Build
from common import rng
from common.layers import Layer


class MaskedMean(keras.layers.GlobalAveragePooling1D):
    """Σ_t μ_t·x_t / max(Σ_t μ_t, 1) over axis 1 with a mask, the plain mean without; consumes the mask."""

    def call(self, inputs, mask=None):
        if mask is None:
            return super().call(inputs)
        m = ops.expand_dims(ops.cast(mask, inputs.dtype), 2)
        return ops.sum(inputs * m, axis=1) / ops.maximum(ops.sum(m, axis=1), ops.cast(1, inputs.dtype))


def embedding(layer: Layer, build: Build) -> keras.layers.Embedding:
    return keras.layers.Embedding(
        layer.in_width,
        layer.width,
        mask_zero=build.mask,
        dtype=build.dtype,
        name=layer.name,
        embeddings_initializer=keras.initializers.RandomUniform(
            -0.05, 0.05, seed=build.keras_seed(rng.KERAS_INIT, rng.INIT_EMBED)
        ),
        embeddings_regularizer=build.regularizer(layer, "weight"),
    )


def masked_mean(layer: Layer, build: Build) -> MaskedMean:
    return MaskedMean(dtype=build.dtype, name="masked_mean")


def rnn(layer: Layer, build: Build) -> keras.layers.SimpleRNN:
    return keras.layers.SimpleRNN(
        layer.width,
        activation="tanh",
        dtype=build.dtype,
        name=layer.name,
        kernel_initializer=keras.initializers.GlorotUniform(seed=build.keras_seed(rng.KERAS_INIT, rng.INIT_RNN, 0)),
        recurrent_initializer=keras.initializers.Orthogonal(seed=build.keras_seed(rng.KERAS_INIT, rng.INIT_RNN, 1)),
        kernel_regularizer=build.regularizer(layer, "input.weight"),
        recurrent_regularizer=build.regularizer(layer, "recurrent.weight"),
        bias_regularizer=build.regularizer(layer, "bias"),
    )


LAYERS = {"embedding": embedding, "masked_mean": masked_mean, "rnn": rnn}
VARIABLES = {
    "embedding": lambda native: {"weight": native.embeddings},
    "rnn": lambda native: {
        "input.weight": native.cell.kernel,
        "recurrent.weight": native.cell.recurrent_kernel,
        "bias": native.cell.bias,
    },
}
