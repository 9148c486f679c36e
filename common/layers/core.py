"""Core layers: dense, dropout and the activations relu and tanh on features (B, F).

dense:    y = act(x·W + b),  W (in, units) as `layer{i}.weight`, b (units,) as `layer{i}.bias` (none with
          `bias = false`, the idiom before a batch_norm, which removes any bias: docs/design.md, "Images and
          BatchNorm"), i counting the
          dense layers from 0; act ∈ relu (relu′(0) = 0 everywhere), tanh, none. `units = 0`: the number of
          classes (the default of the last dense layer, which gives the logits). Init: common.initializers.dense
          from default_rng([seed, rng.INIT, i]).
dropout:  y = x ⊙ m,  m = keep/(1 − p) (inverted dropout, element-wise on features or images; common.dropout draws
          the shared masks of exact mode, one per dropout layer in stack order, shaped (rows, *layer.shape), NHWC
          for images); identity in evaluation. `rate` defaults to regularization.dropout.
relu, tanh: the activation alone, on features or images.
"""

from __future__ import annotations

import numpy as np

from common import initializers, rng
from common.layers.base import FEATURES, IMAGES, Key, LayerKind, Param

ACTIVATIONS = ("relu", "tanh", "none")


def _rate(v) -> str | None:
    return None if 0.0 <= v < 1.0 else "must be in [0.0, 1.0)"


class Dense(LayerKind):
    kind, prefix = "dense", "layer"
    keys = {
        "units": Key(int, None, lambda v: None if v >= 0 else "must be ≥ 0 (0: the number of classes)"),
        "activation": Key(str, "none", lambda v: None if v in ACTIVATIONS else "must be one of relu, tanh, none"),
        "bias": Key(bool, True),
    }
    params = {
        "weight": Param(lambda layer: (layer.in_width, layer.width), kernel=True),
        "bias": Param(lambda layer: (layer.width,), kernel=False),
    }

    def default(self, key, spec, last, n_classes):
        return 0  # units: the number of classes

    def width(self, table, in_width):
        return table["units"]

    def init(self, layer, scheme, seed):
        weight, bias = initializers.dense(
            np.random.default_rng([seed, rng.INIT, layer.number]), scheme, layer.in_width, layer.width
        )
        return {"weight": weight, "bias": bias}


class Dropout(LayerKind):
    kind = "dropout"
    reads, gives = (FEATURES, IMAGES), None
    keys = {"rate": Key(float, None, _rate)}

    def default(self, key, spec, last, n_classes):
        return spec.regularization.dropout


class Relu(LayerKind):
    kind = "relu"
    reads, gives = (FEATURES, IMAGES), None


class Tanh(LayerKind):
    kind = "tanh"
    reads, gives = (FEATURES, IMAGES), None


KINDS = (Dense(), Dropout(), Relu(), Tanh())
