"""A resolved layer stack as one Keras 3 model, and the canonical ⇄ Keras parameter mapping (docs/design.md,
"Layer stacks", "Images and BatchNorm").

`build` makes each `common.layers.Layer` the Keras layer of its family's LAYERS (core, norm, image, sequence) and
`Stack` calls them in order: Keras itself carries the Embedding's token mask to the layer that consumes it, the i-th
exact-mode dropout layer multiplies the i-th shared mask (common.dropout), and in single-device training each
exact-mode batch_norm gets the batch's real rows (w > 0) as its Keras mask (backends.tf_backend.norm; the full parts
of a split step pass none). Every Keras layout equals the canonical one (Dense kernel (in, out), Conv2D kernel
(k, k, in, out) on NHWC, Embedding (vocab, dim), SimpleRNN kernel (dim, units), LayerNormalization and
BatchNormalization gamma/beta, BatchNormalization moving mean/variance), so `load_canonical` / `to_canonical` assign
and read without transposes; the moving statistics are the state (common.layers.is_state) among those variables,
loaded and read like the parameters.
"""

from __future__ import annotations

import keras
import numpy as np

from backends.tf_backend import core, image, norm, sequence
from common import layers as layer_stack
from common.idioms import active
from common.layers import Layer
from common.spec import Spec

if keras.backend.backend() != "tensorflow":
    raise RuntimeError(
        f"backends.tf_backend needs KERAS_BACKEND=tensorflow, but Keras was loaded with '{keras.backend.backend()}'"
    )

LAYERS = {**core.LAYERS, **norm.LAYERS, **image.LAYERS, **sequence.LAYERS}
VARIABLES = {**core.VARIABLES, **norm.VARIABLES, **image.VARIABLES, **sequence.VARIABLES}


class Stack(keras.Model):
    """The stack's Keras layers called in order; `masks`: the shared dropout masks, `real`: the batch's real-row
    flags (B,) for the batch_norm statistics (both exact mode, training; `real` single-device only)."""

    def __init__(self, layers: tuple[Layer, ...], build: core.Build):
        super().__init__(name="stack", dtype=build.dtype)
        self.canonical = layers
        self.stack = [LAYERS[layer.kind](layer, build) for layer in layers]

    def call(self, x, masks=None, real=None, training=False):
        keep = iter(masks or ())
        for native in self.stack:
            if isinstance(native, core.SharedMask):
                x = native(x, next(keep, None))
            elif isinstance(native, norm.BatchNorm) and real is not None:
                x = native(x, training=training, mask=norm.row_mask(real, x))
            else:
                x = native(x, training=training)
        return x


def build(layers: tuple[Layer, ...], spec: Spec, regularizers: dict | None = None) -> Stack:
    """The spec's stack as a Keras model with its variables created (one eval-mode call on a one-row input);
    `regularizers`: canonical name → Keras regularizer (backends.tf_backend.optim.regularizers)."""
    build = core.Build(spec.dtype, False, spec.seed, spec.sequence.mask, regularizers or {}, active(spec))
    model = Stack(layers, build)
    first = layers[0]
    model(np.ones((1, 1), np.int64) if first.flow == layer_stack.TOKENS else np.zeros((1, *first.in_shape), spec.dtype))
    return model


def variables(model: Stack) -> dict[str, keras.Variable]:
    """Canonical name → the Keras variable holding it, in stack order: the parameters and the batch_norm state."""
    return {
        layer.param(suffix): var
        for layer, native in zip(model.canonical, model.stack, strict=True)
        if layer.kind in VARIABLES
        for suffix, var in VARIABLES[layer.kind](native).items()
    }


def load_canonical(model: Stack, params: dict[str, np.ndarray]) -> None:
    """Assign canonical parameters (same layout, checked by name and shape)."""
    held = variables(model)
    if set(held) != set(params):
        raise ValueError(f"canonical parameters {sorted(params)} do not match the Keras model's {sorted(held)}")
    for name, var in held.items():
        if tuple(var.shape) != params[name].shape:
            raise ValueError(f"{name}: Keras shape {tuple(var.shape)}, canonical {params[name].shape}")
        var.assign(params[name])


def to_canonical(model: Stack) -> dict[str, np.ndarray]:
    """Current parameters by canonical name, in the canonical layout."""
    return {name: np.asarray(var.numpy()) for name, var in variables(model).items()}
