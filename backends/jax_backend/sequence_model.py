"""The sequence models in flax.linen (seq_pool, rnn) and the canonical ⇄ flax parameter mapping.

Both read a padded token batch (B, T) int32 and its token mask (B, T) (1 on the kept tokens, common.padding), as
delivered by sequence_data.py with the resolved pad/truncate sides.

- seq_pool: `nn.Embed` → pooling → the MLP's hidden Dense layers (act, dropout) → output Dense. With
  `sequence.mask` the pool is the masked mean Σ_t m_t·x_t / max(Σ_t m_t, 1) (an all-padded row pools to the zero
  vector, and its gradient is finite: no division by 0 anywhere); without it, the plain mean over all T positions,
  pad embeddings (row 0 of the table) included.
- rnn: `nn.Embed` → `nn.RNN(nn.SimpleCell(H))` (tanh Elman cell, h_0 = 0) → the final state h → dropout (width H)
  → Dense `layer0` → logits. SimpleCell's params are i (kernel, bias) = (W, b) and h (kernel, no bias) = U: one
  bias, like the canonical model (torch's nn.RNN would have two).
  * mask = true: `nn.RNN(..., seq_lengths=L)` with the kept lengths L_i = Σ_t m_t; flax returns the carry at
    position L_i − 1, which is the state after the last real token only if the real tokens sit at [0, L_i), i.e.
    post-padding (flax's RNN assumes it). CHOICE for pre-padded (or any) masked batches: every row is rotated left
    by the index of its first real token before the embedding (`front_align`: a gather with
    (t + start_i) mod T), so its real tokens occupy [0, L_i) in order and the pads follow; a post-padded row has
    start 0 and is left unchanged. The result is then exactly the canonical one (the state after each row's last
    real token, the leading pads skipped). flax's `nn.RNN` does not zero its per-step outputs at padded steps (and
    with L_i = 0 it would select the carry at index −1 = T − 1), so we never read the outputs, only the selected
    carry, and rows with L_i = 0 (all-padded) are set to h = 0 with `jnp.where` (finite gradients: the discarded
    branch is a tanh of finite values).
  * mask = false: plain `nn.RNN` over all T positions (pads read as E[0]), no seq_lengths; the result is the
    final carry, the state at position T − 1.

Dropout as in the MLP (model.py): exact mode multiplies by the shared pre-scaled masks (seq_pool: one per hidden
layer after its activation; rnn: one of width H on h); native mode uses `nn.Dropout`.
Precision: the Dense layers use `precision=HIGHEST`; SimpleCell's inner Dense layers take no precision argument,
so the RNN runs under `jax.default_matmul_precision("highest")` (float32 matmuls on GPUs would otherwise be allowed
TF32 passes; on CPU this changes nothing).
Native init (`native_init`): flax's own defaults from `model.init(PRNGKey(seed), tokens, mask)`: Embed
variance_scaling(1, fan_in, normal, out_axis=0), SimpleCell lecun_normal input kernel, orthogonal recurrent kernel,
zero bias, Dense lecun_normal / zero bias.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from backends.jax_backend.model import MLP



def front_align(tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Rotate every row left by the index of its first masked-in token, so that its kept tokens occupy [0, L_i)
    in order (pre-padded rows; post-padded and all-padded rows are unchanged: start 0)."""
    t = tokens.shape[1]
    start = jnp.argmax(mask, axis=1)  # first True; 0 for a row without any
    idx = (jnp.arange(t)[None, :] + start[:, None]) % t
    return jnp.take_along_axis(tokens, idx, axis=1)


class SeqPool(MLP):
    """Embedding → (masked) mean → the MLP's Dense stack (model.MLP.head), same `layer{i}` names."""

    vocab: int = 0
    embed_dim: int = 0
    masked: bool = True

    @nn.compact
    def __call__(self, tokens, mask, masks=None, train: bool = False):
        x = _embed(self)(tokens)  # (B, T, E)
        if self.masked:
            m = mask.astype(self.dtype)
            x = jnp.sum(x * m[:, :, None], axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)[:, None]
        else:
            x = jnp.mean(x, axis=1)
        return self.head(x, masks, train)


class ElmanRNN(MLP):
    """Embedding → nn.RNN(SimpleCell(H)) → dropout on the state → Dense `layer0` (hidden = (H,); activation unused:
    the cell is tanh always, the canonical model)."""

    vocab: int = 0
    embed_dim: int = 0
    masked: bool = True

    @nn.compact
    def __call__(self, tokens, mask, masks=None, train: bool = False):
        cell = nn.SimpleCell(self.hidden[0], dtype=self.dtype, param_dtype=self.dtype, name="rnn")
        rnn = nn.RNN(cell, return_carry=True)
        with jax.default_matmul_precision("highest"):
            if self.masked:
                lengths = jnp.sum(mask.astype(jnp.int32), axis=1)
                h, _ = rnn(_embed(self)(front_align(tokens, mask)), seq_lengths=lengths)
                h = jnp.where((lengths > 0)[:, None], h, jnp.zeros_like(h))
            else:
                h, _ = rnn(_embed(self)(tokens))
        return self._dense(0, self.n_classes)(self.dropped(h, masks, 0, train))


MODELS = {"seq_pool": SeqPool, "rnn": ElmanRNN}


def build(spec: dict, vocab: int, n_classes: int, dropout: float, dtype) -> nn.Module:
    """The flax module for a sequence spec (`dropout`: the native nn.Dropout rate, 0 in exact mode)."""
    m = spec["model"]
    return MODELS[m["kind"]](hidden=tuple(m["hidden"]), n_classes=n_classes, activation=m["activation"],
                             dropout=dropout, dtype=jnp.dtype(dtype), vocab=vocab, embed_dim=m["embed_dim"],
                             masked=spec["sequence"]["mask"])


def _embed(module) -> nn.Embed:
    return nn.Embed(module.vocab, module.embed_dim, dtype=module.dtype, param_dtype=module.dtype, name="embed")


# ---- canonical ⇄ flax ------------------------------------------------------------------------------------------

NAMES = {
    "embed.weight": ("embed", "embedding"),
    "rnn.input.weight": ("rnn", "i", "kernel"),
    "rnn.bias": ("rnn", "i", "bias"),
    "rnn.recurrent.weight": ("rnn", "h", "kernel"),
}
"""Canonical name → path in the flax params tree; `layer{i}.weight` / `.bias` → (layer{i}, kernel / bias)."""


def _path(name: str) -> tuple[str, ...]:
    if name in NAMES:
        return NAMES[name]
    layer, kind = name.split(".")
    return layer, "kernel" if kind == "weight" else "bias"


def to_native(canonical: dict[str, Any]) -> dict:
    """Canonical names → {'params': nested flax tree}; leaves pass through unchanged (also builds optax masks and
    per-tensor coefficients). No transposes: flax kernels are (in, out) like the canonical layout, and SimpleCell
    computes x·W_i + b + h·W_h, i.e. W_i = W (E, H), W_h = U (H, H)."""
    tree: dict = {}
    for name, leaf in canonical.items():
        *parents, last = _path(name)
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = leaf
    return {"params": tree}


def to_canonical(params: dict) -> dict[str, np.ndarray]:
    """The inverse of `to_native`, as numpy arrays."""
    inverse = {path: name for name, path in NAMES.items()}
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params["params"])[0]:
        keys = tuple(k.key for k in path)
        if keys in inverse:
            out[inverse[keys]] = np.asarray(leaf)
        else:
            layer, kind = keys
            out[f"{layer}.{'weight' if kind == 'kernel' else 'bias'}"] = np.asarray(leaf)
    return out


def _example(model: nn.Module):
    return jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), jnp.int32)


def load(model: nn.Module, canonical: dict[str, np.ndarray]) -> dict:
    """Flax params holding `canonical`, checked against the structure and shapes `model.init` would create."""
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype=model.dtype), to_native(canonical))
    expected = jax.eval_shape(model.init, jax.random.key(0), *_example(model))
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), params)
    if jax.tree.map(lambda a: (a.shape, a.dtype), expected) != shapes:
        raise ValueError(f"canonical parameters do not fit the flax {type(model).__name__}: {shapes} vs {expected}")
    return params


def native_init(model: nn.Module, seed: int) -> dict:
    """Native mode: flax's own default init drawn by `model.init(PRNGKey(seed), tokens, mask)`."""
    return model.init(jax.random.PRNGKey(seed), *_example(model))
