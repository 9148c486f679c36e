"""The core layer kinds (common.layers.core) as flax.linen: dense → `nn.Dense`, dropout → the shared mask multiply
(exact mode) or `nn.Dropout` (native mode), relu → `nn.relu`, tanh → `jnp.tanh`.

Every LAYERS value of the four family modules (core, norm, image, sequence) has one shape: `make(layer,
options)`, called inside model.Stack's compact `__call__` (so the flax modules it creates are the Stack's children,
named as the canonical prefix: `layer{i}`, `ln{i}`, `conv{i}`, `bn{i}`, `embed`, `rnn`), returns `apply(x, call)`.
NAMES maps each kind's canonical parameter suffix to its path inside that child. Dense uses precision HIGHEST
(docs/design.md, "Precision").
Dropout: exact mode multiplies by mask k of common.dropout.shared_masks for the k-th dropout layer (`call.masks`,
training only); native mode uses `nn.Dropout` (inverted dropout, rng stream "dropout", left to flax's automatic
name `Dropout_{k}`, which keys its masks), deterministic unless `call.train` (docs/design.md, "Dropout").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.layers import Layer

ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh, "none": lambda x: x}


@dataclass(frozen=True)
class Options:
    """What a stack is built for: the parameter and compute dtype, native mode (flax's own dropout, LayerNorm
    epsilon), and whether token models mask their pads (`sequence.mask`)."""

    dtype: Any
    native: bool = False
    masked: bool = True


class Call(NamedTuple):
    """Per forward pass: training or evaluation, exact mode's shared dropout masks (None otherwise), and in training
    the real rows (B,) bool, w > 0, which batch_norm's statistics read (None: every row; norm.py)."""

    train: bool = False
    masks: Any = None
    real: Any = None


def dense(layer: Layer, options: Options):
    kernel = nn.Dense(
        layer.width,
        dtype=options.dtype,
        param_dtype=options.dtype,
        precision=jax.lax.Precision.HIGHEST,
        use_bias=layer.bias,
        name=layer.name,
    )
    act = ACTIVATIONS[layer.activation]
    return lambda x, call: act(kernel(x))


def dropout(layer: Layer, options: Options):
    native = nn.Dropout(layer.rate) if options.native else None

    def apply(x, call: Call):
        if call.masks is not None:
            return x * call.masks[layer.number]
        return x if native is None else native(x, deterministic=not call.train)

    return apply


def activation(kind: str):
    return lambda layer, options: lambda x, call: ACTIVATIONS[kind](x)


LAYERS = {"dense": dense, "dropout": dropout, "relu": activation("relu"), "tanh": activation("tanh")}
NAMES = {"dense": {"weight": ("kernel",), "bias": ("bias",)}}
