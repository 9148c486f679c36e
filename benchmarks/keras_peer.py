"""The peer: Keras 3 `model.fit` on one Keras backend, timed like the adapters' end-to-end epoch.

    KERAS_BACKEND=<tensorflow|torch|jax> python -m benchmarks.keras_peer CONFIG.json OUT.json

Same layer stack (dense, activations, dropout, layer_norm, and on images conv2d, pools, flatten, batch_norm, as
plain Keras layers; canonical init),
optimizer, learning rate and batch size; one call = `fit(epochs=1, shuffle=...)`, shuffling as the spec's batching
does (as the modes do), so per-epoch Keras overhead (callbacks, logs, iterator set-up, the shuffle) is part of what
is measured, as it is for a user. The framework's thread pools are pinned as the backend workers pin theirs.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
from pathlib import Path

from backends import FRAMEWORKS, REGISTRY
from common.datasets import load_dataset
from common.driver import canonical_init, model_layers
from common.layers import param_shapes
from common.spec import Spec, typed, validate
from common.timing import time_calls

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


def pin_threads(threads: int) -> None:
    """The Keras backend's framework pools to `threads`, as the bench's workers pin theirs (pin_threads of
    backends/<fw>_backend/bench.py, before the framework starts any work)."""
    name = next(b for b in FRAMEWORKS if REGISTRY[b].keras_backend == os.environ.get("KERAS_BACKEND"))
    importlib.import_module(f"backends.{name}_backend.bench").pin_threads(threads)


def main(argv=None) -> int:
    config_path, out_path = map(Path, (argv or sys.argv[1:])[:2])
    config = json.loads(config_path.read_text(encoding="utf-8"))
    pin_threads(config["threads"])
    import keras

    spec = typed(validate(config["spec"]))
    data = load_dataset(spec)
    keras.config.set_floatx(spec.dtype)
    x, y = data.train_x.astype(spec.dtype), data.train_y
    rows = []
    for batch_size in config["batch_sizes"]:
        model = build_model(keras, spec, data, spec.dtype)
        fit = functools.partial(
            model.fit, x, y, batch_size=batch_size, epochs=1, shuffle=spec.batching.shuffle, verbose=0
        )
        timing = time_calls(fit, lambda history: None, x.shape[0], windows=config["windows"], calls_per_window=1)
        rows.append(
            {
                "backend": f"keras[{keras.backend.backend()}]",
                "kind": "keras_fit",
                "mode": "fit",
                "batch_size": batch_size,
                **timing.to_json(),
            }
        )
    out_path.write_text(
        json.dumps(
            {
                "backend": f"keras[{keras.backend.backend()}]",
                "settings": {
                    "keras": keras.__version__,
                    "KERAS_BACKEND": os.environ.get("KERAS_BACKEND"),
                    "threads": config["threads"],
                },
                "rows": rows,
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
