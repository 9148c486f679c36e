"""The sequence layer kinds (common.layers.sequence) as flax.linen, on padded token batches (B, T) int32.

embedding:   `nn.Embed(vocab, dim)` named `embed`; it gives (vectors, μ) with the token mask μ = [token ≠ 0] (token 0
             is the pad, so μ is exactly common.padding's mask of the kept tokens), or μ = None without
             `sequence.mask` (every position read: the trap).
masked_mean: Σ_t μ_t·x_t / max(Σ_t μ_t, 1) (an all-padded row gives 0 with finite gradients); `jnp.mean` over T
             when μ is None.
rnn:         `nn.RNN(nn.SimpleCell(units))`, the cell named `rnn` (params i = (W, b), h = U: one bias) and
             `seq_lengths` L_i = Σ_t μ_t. flax returns the carry at position L_i − 1, the state after the last real
             token only if the real tokens sit at [0, L_i) (post-padding), so every row is first rotated left by
             the index of its first real token (`front_align`; pre-padded rows become front-aligned, post-padded
             ones are unchanged), and rows with L_i = 0 give h = 0 (`jnp.where`). μ = None: the carry after all T
             positions. SimpleCell's Dense layers take no precision, so the scan runs under
             `jax.default_matmul_precision("highest")` (docs/design.md, "Padding and masks", "Precision").
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from backends.jax_backend.core import Options
from common.layers import Layer
from common.padding import PAD


def front_align(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Rotate every row of x (B, T, E) left by the index of its first masked-in position, so that its kept
    vectors occupy [0, L_i) in order (rows without any, and post-padded rows, are unchanged: start 0)."""
    t = x.shape[1]
    start = jnp.argmax(mask, axis=1)
    idx = (jnp.arange(t)[None, :] + start[:, None]) % t
    return jnp.take_along_axis(x, idx[:, :, None], axis=1)


def embedding(layer: Layer, options: Options):
    embed = nn.Embed(layer.in_width, layer.width, dtype=options.dtype, param_dtype=options.dtype, name=layer.name)
    return lambda tokens, call: (embed(tokens), (tokens != PAD) if options.masked else None)


def masked_mean(layer: Layer, options: Options):
    def apply(sequence, call):
        x, mask = sequence
        if mask is None:
            return jnp.mean(x, axis=1)
        m = mask.astype(x.dtype)
        return jnp.sum(x * m[:, :, None], axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)[:, None]

    return apply


def rnn(layer: Layer, options: Options):
    cell = nn.SimpleCell(layer.width, dtype=options.dtype, param_dtype=options.dtype, name=layer.name)
    scan = nn.RNN(cell, return_carry=True)

    def apply(sequence, call):
        x, mask = sequence
        with jax.default_matmul_precision("highest"):
            if mask is None:
                return scan(x)[0]
            lengths = jnp.sum(mask.astype(jnp.int32), axis=1)
            h, _ = scan(front_align(x, mask), seq_lengths=lengths)
        return jnp.where((lengths > 0)[:, None], h, jnp.zeros_like(h))

    return apply


LAYERS = {"embedding": embedding, "masked_mean": masked_mean, "rnn": rnn}
NAMES = {
    "embedding": {"weight": ("embedding",)},
    "rnn": {"input.weight": ("i", "kernel"), "bias": ("i", "bias"), "recurrent.weight": ("h", "kernel")},
}
"""Canonical suffix → path in the flax child. No transposes: SimpleCell computes x·W_i + b + h·W_h, so W_i = W
(dim, units) and W_h = U, and nn.Embed's table is (vocab, dim) like the canonical one."""
