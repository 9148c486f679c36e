"""Sequence layers in float64: embedding, masked_mean, rnn (docs/design.md, "Layer stacks", "Padding and masks").

The embedding sets the token mask μ (B, T) on the flow: μ = [k ≠ 0] (token 0 is the pad and never a real token),
or μ ≡ 1 with `sequence.mask = false` (the pads are read: the trap). The oracle works on μ only, never on the pad
side, so masked pre- and post-padded batches give the same result.

embedding:   x_{i,t} = E[k_{i,t}];  ∂E[v] = Σ_{(i,t): k_{i,t} = v} dx_{i,t} (scatter-add; unmasked, row 0 learns).
masked_mean: c_i = max(Σ_t μ_{i,t}, 1),  p_i = Σ_t μ_{i,t}·x_{i,t} / c_i;  dx_{i,t} = dp_i·μ_{i,t} / c_i.
rnn (Elman): h_0 = 0,  h̃_t = tanh(x_t·W + h_{t−1}·U + b),  h_t = μ_t·h̃_t + (1 − μ_t)·h_{t−1}, gives h_T.
  BPTT from ∂h = dh_T, for t = T … 1:  ∂a_t = μ_t·∂h ⊙ (1 − h̃_t²),  ∂W += x_tᵀ·∂a_t,  ∂U += h_{t−1}ᵀ·∂a_t,
  ∂b += Σ_i ∂a_t,  dx_t = ∂a_t·Wᵀ,  ∂h ← ∂a_t·Uᵀ + (1 − μ_t)·∂h (the gradient reaching h_{t−1}).
"""

from __future__ import annotations

import numpy as np

from backends.numpy_backend.core import Part
from common.padding import PAD


class Embedding(Part):
    def __init__(self, layer, spec):
        super().__init__(layer, spec)
        self.masked = spec.sequence.mask

    def forward(self, params, tokens, flow):
        tokens = np.asarray(tokens, dtype=np.int64)
        flow.mu = (tokens != PAD).astype(np.float64) if self.masked else np.ones(tokens.shape)
        return params[self.layer.param("weight")][tokens], tokens

    def backward(self, params, tokens, dy):
        table = params[self.layer.param("weight")]
        grad = np.zeros_like(table)
        np.add.at(grad, tokens.reshape(-1), dy.reshape(-1, table.shape[1]))
        return None, {self.layer.param("weight"): grad}


class MaskedMean(Part):
    def forward(self, params, x, flow):
        mu = flow.mu
        count = np.maximum(mu.sum(axis=1), 1.0)
        return (mu[:, :, None] * x).sum(axis=1) / count[:, None], (mu, count)

    def backward(self, params, cache, dy):
        mu, count = cache
        return dy[:, None, :] * (mu / count[:, None])[:, :, None], {}


class RNN(Part):
    def forward(self, params, x, flow):
        w, u, b = (params[self.layer.param(s)] for s in ("input.weight", "recurrent.weight", "bias"))
        mu = flow.mu
        h = np.zeros((x.shape[0], u.shape[0]))
        states, candidates = [h], []
        for t in range(x.shape[1]):
            cand = np.tanh(x[:, t] @ w + h @ u + b)
            h = np.where(mu[:, t : t + 1] > 0, cand, h)
            candidates.append(cand)
            states.append(h)
        return h, (x, mu, states, candidates)

    def backward(self, params, cache, dy):
        x, mu, states, candidates = cache
        w, u = params[self.layer.param("input.weight")], params[self.layer.param("recurrent.weight")]
        dw, du, db = np.zeros_like(w), np.zeros_like(u), np.zeros(u.shape[0])
        dx = np.zeros_like(x)
        dh = dy
        for t in range(x.shape[1] - 1, -1, -1):
            m_t = mu[:, t : t + 1]
            da = m_t * dh * (1.0 - candidates[t] ** 2)
            dw += x[:, t].T @ da
            du += states[t].T @ da
            db += da.sum(axis=0)
            dx[:, t] = da @ w.T
            dh = da @ u.T + (1.0 - m_t) * dh
        return dx, {
            self.layer.param("input.weight"): dw,
            self.layer.param("recurrent.weight"): du,
            self.layer.param("bias"): db,
        }


LAYERS = {"embedding": Embedding, "masked_mean": MaskedMean, "rnn": RNN}
