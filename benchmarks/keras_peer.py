"""The peer: Keras 3 `model.fit` on the bench worker's own framework as Keras backend, one more variant of the
worker's paired rounds (benchmarks.bench_worker), timed beside the modes and references in the same process.

Same layer stack (dense, activations, dropout, layer_norm; on images conv2d, pools, flatten, batch_norm; on tokens
embedding, rnn, masked_mean: plain Keras layers, canonical init), optimizer, learning rate and batch size; one
call = `fit(epochs=1, shuffle=...)`, shuffling as the spec's batching does (as the modes do), so per-epoch Keras
overhead (callbacks, logs, iterator set-up, the shuffle) is part of what is measured, as it is for a user. `fit`
returns its logs as Python numbers, so a returned call has finished. The worker sets KERAS_BACKEND
(`use_backend`) before it imports any framework, and has already pinned the framework's thread pools.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from backends import REGISTRY
from common.driver import canonical_init, model_layers
from common.layers import param_shapes
from common.padding import length_cap, resolve_sides
from common.spec import Spec

PEER_LAYERS = {
    "dense": lambda keras, layer, dtype: keras.layers.Dense(
        layer.width,
        activation=None if layer.activation == "none" else layer.activation,
        use_bias=layer.bias,
        dtype=dtype,
    ),
    "relu": lambda keras, layer, dtype: keras.layers.Activation("relu", dtype=dtype),
    "tanh": lambda keras, layer, dtype: keras.layers.Activation("tanh", dtype=dtype),
    "dropout": lambda keras, layer, dtype: keras.layers.Dropout(layer.rate, dtype=dtype),
    "layer_norm": lambda keras, layer, dtype: keras.layers.LayerNormalization(epsilon=layer.eps, dtype=dtype),
    "conv2d": lambda keras, layer, dtype: keras.layers.Conv2D(
        layer.width,
        layer.kernel,
        layer.stride,
        padding=layer.padding,
        activation=None if layer.activation == "none" else layer.activation,
        use_bias=layer.bias,
        dtype=dtype,
    ),
    "max_pool": lambda keras, layer, dtype: keras.layers.MaxPooling2D(
        layer.kernel, layer.stride, padding=layer.padding, dtype=dtype
    ),
    "avg_pool": lambda keras, layer, dtype: keras.layers.AveragePooling2D(
        layer.kernel, layer.stride, padding=layer.padding, dtype=dtype
    ),
    "global_avg_pool": lambda keras, layer, dtype: keras.layers.GlobalAveragePooling2D(dtype=dtype),
    "flatten": lambda keras, layer, dtype: keras.layers.Flatten(dtype=dtype),
    "batch_norm": lambda keras, layer, dtype: keras.layers.BatchNormalization(
        momentum=layer.momentum, epsilon=layer.eps, dtype=dtype
    ),
    "embedding": lambda keras, layer, dtype: keras.layers.Embedding(
        layer.in_width, layer.width, mask_zero=True, dtype=dtype
    ),
    "masked_mean": lambda keras, layer, dtype: keras.layers.GlobalAveragePooling1D(dtype=dtype),
    "rnn": lambda keras, layer, dtype: keras.layers.SimpleRNN(layer.width, dtype=dtype),
}
"""The Keras layer a user writes for each kind (common.layers); Keras's "same" is the canonical rule, its
BatchNormalization momentum the decay convention (its running variance is the biased one whatever the spec says:
the peer is timed, not compared). On tokens: an Embedding with `mask_zero` (token 0 is the pad), its mask read by
SimpleRNN (one bias, like the canonical rnn; masked steps keep the state) and GlobalAveragePooling1D."""


def build_model(keras, spec: Spec, data, dtype: str):
    layers = model_layers(spec, data)
    unsupported = sorted({layer.kind for layer in layers} - set(PEER_LAYERS))
    if unsupported:
        raise ValueError(f"the Keras fit peer builds {', '.join(PEER_LAYERS)} layers, not {', '.join(unsupported)}")
    if data.is_sequence:
        inputs = keras.Input((None,), dtype="int32")
    else:
        inputs = keras.Input(data.input_shape if data.is_image else (data.n_features,), dtype=dtype)
    model = keras.Sequential([inputs] + [PEER_LAYERS[layer.kind](keras, layer, dtype) for layer in layers])
    init = canonical_init(spec, data)
    model.set_weights([init[name] for name in param_shapes(layers)])  # Keras's order: the stack's, kernel first
    o = spec.optimizer
    if o.name == "sgd":
        optimizer = keras.optimizers.SGD(o.lr, momentum=o.momentum, nesterov=o.nesterov)
    else:
        optimizer = keras.optimizers.Adam(o.lr, beta_1=o.beta1, beta_2=o.beta2, epsilon=o.eps)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def use_backend(backend: str) -> None:
    """KERAS_BACKEND for the framework `backend` (common.frameworks), before Keras is first imported."""
    os.environ["KERAS_BACKEND"] = REGISTRY[backend].keras_backend


def peer_name(backend: str) -> str:
    """The peer's name in the bench's rows: `keras[<its Keras backend>]`."""
    return f"keras[{REGISTRY[backend].keras_backend}]"


def padded_tokens(keras, spec: Spec, data):
    """The training sequences as a Keras user feeds `fit`: `keras.utils.pad_sequences` once, to the length cap
    (max_len, or the last bucket bound: `fit` on arrays has no buckets) or the longest row, on the spec's sides
    (Keras's own, the tf backend's idiom, for "native": common.padding.resolve_sides)."""
    pad, truncate = resolve_sides(spec, "tf")
    rows = data.sequences("train", np.arange(data.train_y.shape[0]))
    cap = length_cap(spec.sequence.max_len, spec.sequence.buckets) or None
    return keras.utils.pad_sequences(rows, maxlen=cap, padding=pad, truncating=truncate, dtype="int32")


class KerasFit:
    """`make_peer`'s runner (common.benchtarget.EpochRunner's epoch and sync): one `fit` epoch per call."""

    def __init__(self, spec: Spec, data):
        import keras

        if keras.backend.backend() != os.environ.get("KERAS_BACKEND"):
            raise RuntimeError(f"Keras runs on '{keras.backend.backend()}', not {os.environ.get('KERAS_BACKEND')}")
        keras.config.set_floatx(spec.dtype)
        self.model = build_model(keras, spec, data, spec.dtype)
        x, y = padded_tokens(keras, spec, data) if data.is_sequence else data.train_x.astype(spec.dtype), data.train_y
        self.fit = functools.partial(
            self.model.fit,
            x,
            y,
            batch_size=spec.batching.batch_size,
            epochs=1,
            shuffle=spec.batching.shuffle,
            verbose=0,
        )
        self.settings = {"keras": keras.__version__, "KERAS_BACKEND": keras.backend.backend()}

    def epoch(self):
        return self.fit()

    def sync(self, history) -> None:
        """Nothing to wait on: `fit` has fetched its logs."""
