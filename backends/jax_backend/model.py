"""The model of a layer stack in flax.linen, and the canonical ⇄ flax parameter mapping (docs/design.md, "Layer
stacks", "Initialisation").

`build(layers, spec)` gives one `Stack` module: its compact `__call__(x, masks=None, train=False)` runs every layer
through its family's LAYERS entry (core, norm, sequence), x being features (B, F) or tokens (B, T) int32. linen
because `apply(params, x)` is a pure function of a params pytree: it drops into one `jax.jit`-ed step and optax's
pytree API as is. Params: {'params': {prefix: {...}}}, one child per canonical prefix; flax derives init keys from
these paths, so native mode's `model.init(PRNGKey(seed), x)` (`native_init`: nn.Dense lecun_normal kernel and zero
bias, nn.Embed variance_scaling(1, fan_in, normal), SimpleCell lecun_normal / orthogonal / zero, LayerNorm 1 and 0)
depends only on the names. Exact mode loads the canonical parameters (`load_canonical`), a renaming only: flax
kernels are (in, out) like the canonical layout.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from backends.jax_backend import core, norm, sequence
from backends.jax_backend.core import Call, Options
from common.layers import KINDS, TOKENS, Layer
from common.spec import Spec

LAYERS = {**core.LAYERS, **norm.LAYERS, **sequence.LAYERS}
NAMES = {**core.NAMES, **norm.NAMES, **sequence.NAMES}
PREFIXES = {kind.prefix: kind.kind for kind in KINDS.values() if kind.prefix}


class Stack(nn.Module):
    layers: tuple[Layer, ...]
    options: Options

    @nn.compact
    def __call__(self, x, masks=None, train: bool = False):
        call = Call(train, masks)
        for layer in self.layers:
            x = LAYERS[layer.kind](layer, self.options)(x, call)
        return x


def build(layers: tuple[Layer, ...], spec: Spec) -> Stack:
    """The flax module of `layers` for a resolved spec (its dtype, mode and `sequence.mask`)."""
    return Stack(tuple(layers), Options(jnp.dtype(spec.dtype), spec.mode == "native", spec.sequence.mask))


def example(model: Stack) -> jax.Array:
    """A one-row input of the model's kind: one token, or one feature row."""
    first = model.layers[0]
    if KINDS[first.kind].reads == TOKENS:
        return jnp.zeros((1, 1), jnp.int32)
    return jnp.zeros((1, first.in_width), model.options.dtype)


def _kind(prefix: str) -> str:
    return PREFIXES[prefix.rstrip("0123456789")]


def to_native(canonical: dict[str, Any]) -> dict:
    """Canonical names → {'params': {prefix: {...}}}. Leaves pass through unchanged, so the same mapping builds
    optax masks and per-tensor coefficients."""
    tree: dict = {}
    for name, leaf in canonical.items():
        prefix, suffix = name.split(".", 1)
        *parents, last = (prefix, *NAMES[_kind(prefix)][suffix])
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = leaf
    return {"params": tree}


def to_canonical(params: dict) -> dict[str, np.ndarray]:
    """The inverse of `to_native`, as numpy arrays."""
    out = {}
    for prefix, child in params["params"].items():
        for suffix, path in NAMES[_kind(prefix)].items():
            leaf = child
            for key in path:
                leaf = leaf[key]
            out[f"{prefix}.{suffix}"] = np.asarray(leaf)
    return out


def load_canonical(model: Stack, canonical: dict[str, np.ndarray]) -> dict:
    """Flax params holding `canonical`, checked against the structure, shapes and dtypes `model.init` creates."""
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype=model.options.dtype), to_native(canonical))
    expected = jax.eval_shape(model.init, jax.random.key(0), example(model))
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), params)
    if jax.tree.map(lambda a: (a.shape, a.dtype), expected) != shapes:
        raise ValueError(f"canonical parameters do not fit the flax stack: {shapes} vs {expected}")
    return params


def native_init(model: Stack, seed: int) -> dict:
    """Native mode: the params flax's own `model.init(PRNGKey(seed), x)` draws (the defaults above)."""
    return model.init(jax.random.PRNGKey(seed), example(model))
