"""The core layer kinds (common.layers.core) as flax.linen: dense → `nn.Dense`, dropout → the shared mask multiply
or `nn.Dropout` (idiom `dropout_rng`), relu → `nn.relu`, tanh → `jnp.tanh`.

Every LAYERS value of the four family modules (core, norm, image, sequence) has one shape: `make(layer,
options)`, called inside model.Stack's compact `__call__` (so the flax modules it creates are the Stack's children,
named as the canonical prefix: `layer{i}`, `ln{i}`, `conv{i}`, `bn{i}`, `embed`, `rnn`), returns `apply(x, call)`.
NAMES maps each kind's canonical parameter suffix to its path inside that child. Dense uses precision HIGHEST
(docs/design.md, "Precision").
Dropout: multiplies by mask k of common.dropout.shared_masks for the k-th dropout layer (`call.masks`, training
only); with the idiom `dropout_rng` on, `nn.Dropout` (inverted dropout, rng stream "dropout", left to flax's
automatic name `Dropout_{k}`, which keys its masks), deterministic unless `call.train` (docs/design.md, "Dropout").
`Options.on(id)` is how every layer family asks an idiom (common.idioms) whether a flax default stays.
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
    """What a stack is built for: the parameter and compute dtype, the idioms on (common.idioms: a frozenset of ids,
    or True for every one, as mode = "native"), and whether token models mask their pads (`sequence.mask`)."""

    dtype: Any
    native: bool | frozenset[str] = False
    masked: bool = True

    def on(self, idiom: str) -> bool:
        """Whether the idiom `idiom` is on for this stack (flax's own default kept instead of the canonical rule)."""
        return idiom in self.native if isinstance(self.native, frozenset) else bool(self.native)


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
    native = nn.Dropout(layer.rate) if options.on("dropout_rng") else None

    def apply(x, call: Call):
        if call.masks is not None:
            return x * call.masks[layer.number]
        return x if native is None else native(x, deterministic=not call.train)

    return apply


def activation(kind: str):
    return lambda layer, options: lambda x, call: ACTIVATIONS[kind](x)


LAYERS = {"dense": dense, "dropout": dropout, "relu": activation("relu"), "tanh": activation("tanh")}
NAMES = {"dense": {"weight": ("kernel",), "bias": ("bias",)}}
