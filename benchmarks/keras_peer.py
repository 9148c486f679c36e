"""The peer: Keras 3 `model.fit` on the bench worker's own framework as Keras backend, one more variant of the
worker's paired rounds (benchmarks.bench_worker), timed beside the modes and references in the same process.

Same layer stack (dense, activations, dropout, layer_norm, and on images conv2d, pools, flatten, batch_norm, as
plain Keras layers; canonical init), optimizer, learning rate and batch size; one call = `fit(epochs=1,
shuffle=...)`, shuffling as the spec's batching does (as the modes do), so per-epoch Keras overhead (callbacks,
logs, iterator set-up, the shuffle) is part of what is measured, as it is for a user. `fit` returns its logs as
Python numbers, so a returned call has finished. The worker sets KERAS_BACKEND (`use_backend`) before it imports any
framework, and has already pinned the framework's thread pools.
"""

from __future__ import annotations

import functools
import os

from backends import REGISTRY
from common.driver import canonical_init, model_layers
from common.layers import param_shapes
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
}
"""The Keras layer a user writes for each kind (common.layers); Keras's "same" is the canonical rule, its
BatchNormalization momentum the decay convention (its running variance is the biased one whatever the spec says:
the peer is timed, not compared)."""


def build_model(keras, spec: Spec, data, dtype: str):
    layers = model_layers(spec, data)
    unsupported = sorted({layer.kind for layer in layers} - set(PEER_LAYERS))
    if unsupported:
        raise ValueError(f"the Keras fit peer builds {', '.join(PEER_LAYERS)} layers, not {', '.join(unsupported)}")
    model = keras.Sequential(
        [keras.Input(data.input_shape if data.is_image else (data.n_features,), dtype=dtype)]
        + [PEER_LAYERS[layer.kind](keras, layer, dtype) for layer in layers]
    )
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


class KerasFit:
    """`make_peer`'s runner (common.benchtarget.EpochRunner's epoch and sync): one `fit` epoch per call."""

    def __init__(self, spec: Spec, data):
        import keras

        if keras.backend.backend() != os.environ.get("KERAS_BACKEND"):
            raise RuntimeError(f"Keras runs on '{keras.backend.backend()}', not {os.environ.get('KERAS_BACKEND')}")
        keras.config.set_floatx(spec.dtype)
        self.model = build_model(keras, spec, data, spec.dtype)
        x, y = data.train_x.astype(spec.dtype), data.train_y
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
