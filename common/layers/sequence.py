"""Sequence layers: embedding (tokens → vectors), then masked_mean or rnn (vectors → features).

The token mask μ_{i,t} = [position t of row i is a real token] travels with the vectors (token 0 is the pad;
`sequence.mask = false` makes μ ≡ 1, so the pads are read: the trap). common.padding fixes pads and lengths.

embedding:   x_{i,t} = E[k_{i,t}],  E (vocab, dim) as `embed.weight` (row 0, the pad, is an ordinary trainable
             row). `dim` defaults to model.embed_dim. Init common.initializers.embedding, default_rng([seed,
             rng.INIT, rng.INIT_EMBED]).
masked_mean: p_i = Σ_t μ_{i,t}·x_{i,t} / max(Σ_t μ_{i,t}, 1)  (an all-padded row gives 0).
rnn:         Elman tanh: h_0 = 0, h̃_t = tanh(x_t·W + h_{t−1}·U + b), h_t = μ_t·h̃_t + (1 − μ_t)·h_{t−1}; the layer
             gives h_T (the state after each row's last real token). W (dim, units) `rnn.input.weight`, U (units,
             units) `rnn.recurrent.weight`, b (units,) `rnn.bias`: ONE bias (torch's nn.RNN has two; its adapter
             freezes bias_hh at 0). Init common.initializers.recurrent, default_rng([seed, rng.INIT, rng.INIT_RNN]).
"""

from __future__ import annotations

import numpy as np

from common import initializers, rng
from common.layers.base import FEATURES, SEQUENCE, TOKENS, Key, LayerKind, Param


def _positive(v) -> str | None:
    return None if v > 0 else "must be a positive integer"


class Embedding(LayerKind):
    kind, prefix, numbered = "embedding", "embed", False
    reads, gives = (TOKENS,), SEQUENCE
    keys = {"dim": Key(int, None, _positive)}
    params = {"weight": Param(lambda layer: (layer.in_width, layer.width), kernel=True)}

    def default(self, key, spec, last, n_classes):
        return spec.model.embed_dim

    def width(self, table, in_width):
        return table["dim"]

    def init(self, layer, scheme, seed):
        draw = np.random.default_rng([seed, rng.INIT, rng.INIT_EMBED])
        return {"weight": initializers.embedding(draw, scheme, layer.in_width, layer.width)}


class MaskedMean(LayerKind):
    kind = "masked_mean"
    reads, gives = (SEQUENCE,), FEATURES


class RNN(LayerKind):
    kind, prefix, numbered = "rnn", "rnn", False
    reads, gives = (SEQUENCE,), FEATURES
    keys = {"units": Key(int, 32, _positive)}
    params = {
        "input.weight": Param(lambda layer: (layer.in_width, layer.width), kernel=True),
        "recurrent.weight": Param(lambda layer: (layer.width, layer.width), kernel=True),
        "bias": Param(lambda layer: (layer.width,), kernel=False),
    }

    def width(self, table, in_width):
        return table["units"]

    def init(self, layer, scheme, seed):
        draw = np.random.default_rng([seed, rng.INIT, rng.INIT_RNN])
        w, u, b = initializers.recurrent(draw, scheme, layer.in_width, layer.width)
        return {"input.weight": w, "recurrent.weight": u, "bias": b}


KINDS = (Embedding(), MaskedMean(), RNN())
