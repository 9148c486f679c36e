"""The model of a layer stack in flax.linen, and the canonical ⇄ flax variable mapping (docs/design.md, "Layer
stacks", "Images and BatchNorm", "Initialisation").

`build(layers, spec)` gives one `Stack` module: its compact `__call__(x, masks=None, train=False, real=None)` runs
every layer through its family's LAYERS entry (core, norm, image, sequence), x being features (B, F), images
(B, H, W, C) or tokens (B, T) int32; `real` (B,) bool marks a training batch's real rows (batch_norm's statistics).
`Stack.axis_name` (None, or the engine's mesh axis in the clone distributed.Engine runs under shard_map) reaches
batch_norm only: a `sync = true` layer synchronises its statistics over it (norm.py).
linen because `apply(variables, x)` is a pure function of a variables pytree: it drops into one `jax.jit`-ed step
and optax's pytree API as is. Variables: {'params': {prefix: {...}}} plus, with batch_norm, {'batch_stats':
{prefix: {'mean', 'var'}}}, one child per canonical prefix; canonical state names (common.layers.is_state) live in
`batch_stats`, every other name in `params` (`split_state` separates them: the optimizer sees `params` only). flax
derives init keys from these paths, so `default_init`'s `model.init(PRNGKey(seed), x)` (`native_init`: nn.Dense and
nn.Conv lecun_normal kernel and zero bias, nn.Embed variance_scaling(1, fan_in, normal), SimpleCell lecun_normal /
orthogonal / zero, LayerNorm and BatchNorm scale 1 and offset 0, running mean 0 and variance 1) depends only on the
names. Otherwise the canonical variables are loaded (`load_canonical`), a renaming only: flax kernels are (in, out) and
(k, k, in, out) like the canonical layouts.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from backends.jax_backend import core, image, norm, sequence
from backends.jax_backend.core import Call, Options
from common.idioms import active
from common.layers import KINDS, TOKENS, Layer, is_state
from common.spec import Spec

LAYERS = {**core.LAYERS, **norm.LAYERS, **image.LAYERS, **sequence.LAYERS}
NAMES = {**core.NAMES, **norm.NAMES, **image.NAMES, **sequence.NAMES}
PREFIXES = {kind.prefix: kind.kind for kind in KINDS.values() if kind.prefix}
PARAMS, STATE = "params", "batch_stats"  # flax's collections of trained parameters and of batch_norm's state


class Stack(nn.Module):
    layers: tuple[Layer, ...]
    options: Options
    axis_name: str | None = None  # the mesh axis inside distributed.Engine's shard_map (`sync` batch_norm: norm.py)

    @nn.compact
    def __call__(self, x, masks=None, train: bool = False, real=None):
        call = Call(train, masks, real)
        for layer in self.layers:
            extra = {"axis_name": self.axis_name} if layer.kind == "batch_norm" else {}
            x = LAYERS[layer.kind](layer, self.options, **extra)(x, call)
        return x


def build(layers: tuple[Layer, ...], spec: Spec) -> Stack:
    """The flax module of `layers` for a resolved spec (its dtype, idioms and `sequence.mask`)."""
    return Stack(tuple(layers), Options(jnp.dtype(spec.dtype), frozenset(active(spec)), spec.sequence.mask))


def example(model: Stack) -> jax.Array:
    """A one-row input of the model's kind: one token, one feature row or one image."""
    first = model.layers[0]
    if first.flow == TOKENS:
        return jnp.zeros((1, 1), jnp.int32)
    return jnp.zeros((1, *first.in_shape), model.options.dtype)


def _kind(prefix: str) -> str:
    return PREFIXES[prefix.rstrip("0123456789")]


def _place(name: str) -> tuple[str, ...]:
    """(collection, prefix, *path) of canonical `name` in the flax variables."""
    prefix, suffix = name.split(".", 1)
    return (STATE if is_state(name) else PARAMS, prefix, *NAMES[_kind(prefix)][suffix])


def to_native(canonical: dict[str, Any]) -> dict:
    """Canonical names → {'params': {prefix: {...}}, 'batch_stats': {...}} (the latter only for state names).
    Leaves pass through unchanged, so the same mapping builds optax masks and per-tensor coefficients."""
    tree: dict = {}
    for name, leaf in canonical.items():
        *parents, last = _place(name)
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = leaf
    return tree


def to_canonical(variables: dict) -> dict[str, np.ndarray]:
    """The inverse of `to_native`, as numpy arrays, in layer order (a batch_norm's state after its params)."""
    out = {}
    for prefix in variables[PARAMS]:
        for suffix in NAMES[_kind(prefix)]:
            name = f"{prefix}.{suffix}"
            leaf = variables
            for key in _place(name):
                leaf = leaf.get(key) if leaf is not None else None
            if leaf is not None:  # a dense or conv built with use_bias=False has no bias
                out[name] = np.asarray(leaf)
    return out


def split_state(variables: dict) -> tuple[dict, dict]:
    """({'params': ...}, the other collections: {'batch_stats': ...} or {}): what the optimizer trains, and the
    state a training step updates through `apply(..., mutable=...)`."""
    return {PARAMS: variables[PARAMS]}, {k: v for k, v in variables.items() if k != PARAMS}


def load_canonical(model: Stack, canonical: dict[str, np.ndarray]) -> dict:
    """Flax variables holding `canonical`, checked against the structure, shapes and dtypes `model.init` creates."""
    variables = jax.tree.map(lambda a: jnp.asarray(a, dtype=model.options.dtype), to_native(canonical))
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), example(model)))  # abstract: nothing compiled
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), variables)
    if jax.tree.map(lambda a: (a.shape, a.dtype), expected) != shapes:
        raise ValueError(f"canonical parameters do not fit the flax stack: {shapes} vs {expected}")
    return variables


def native_init(model: Stack, seed: int) -> dict:
    """`default_init`: the variables flax's own `model.init(PRNGKey(seed), x)` draws (the defaults above)."""
    return model.init(jax.random.PRNGKey(seed), example(model))
