"""The oracle sequence models (seq_pool, rnn): explicit forward and backward in float64.

Inputs of a batch: tokens k (B, T) int, the token mask μ (B, T) ∈ {0, 1} (`mask=None`: unmasked, μ ≡ 1, so every
position counts, pads included), labels y, row weights m_i (common.padding.loss_weights: w_i or w_i·L_i) and the
pre-scaled dropout masks d (or None). Embedding lookup x_{i,t} = E[k_{i,t}] (row 0, the pad token, is an ordinary
trainable row). The oracle works on μ only, never on the padding side, so pre- and post-padded batches give the
same result with a mask.

seq_pool forward:  c_i = max(Σ_t μ_{i,t}, 1),  p_i = Σ_t μ_{i,t}·x_{i,t} / c_i   (all-padded row → p = 0)
  then the MLP of backends.numpy_backend.model: a_j = h_{j−1}·W_j + b_j, h_j = act(a_j) ⊙ d_j, z = h·W_L + b_L.
rnn forward (Elman, tanh):  h_0 = 0,  a_t = x_t·W + h_{t−1}·U + b,  h̃_t = tanh(a_t),
  h_t = μ_t·h̃_t + (1 − μ_t)·h_{t−1}   (a pad carries the state: pre-padding starts from 0 after the leading pads,
  post-padding stops at the last real token; unmasked every position updates),
  r = h_T ⊙ d  (d the one dropout mask of width H),  z = r·W_0 + b_0  (layer0).
Loss:  ℓ_i = logsumexp(z_i) − z_{i,y_i},  L = Σ_i m_i·ℓ_i / max(Σ_i m_i, 1)  (all-padded batch → 0).

Backward:
  δz_i = m_i·(softmax(z_i) − onehot(y_i)) / max(Σm, 1);  dense layers as in the MLP: ∂W_j = h_{j−1}ᵀ·δ_j,
  ∂b_j = Σ_i δ_j, δ_{j−1} = (δ_j·W_jᵀ) ⊙ d_{j−1} ⊙ act′(a_{j−1}) (relu′(0) = 0), and the input gradient
  g = δ_0·W_0ᵀ (the gradient of the pooled vector p, or of r).
  seq_pool:  ∂x_{i,t} = g_i·μ_{i,t} / c_i.
  rnn (BPTT):  ∂h_T = g ⊙ d;  for t = T … 1, with ∂h the gradient reaching h_t:
      ∂a_t = μ_t·∂h ⊙ (1 − h̃_t²),  ∂W += x_tᵀ·∂a_t,  ∂U += h_{t−1}ᵀ·∂a_t,  ∂b += Σ_i ∂a_t,  ∂x_t = ∂a_t·Wᵀ,
      ∂h ← ∂a_t·Uᵀ + (1 − μ_t)·∂h   (the gradient reaching h_{t−1}).
  Embedding: ∂E[v] = Σ_{(i,t): k_{i,t} = v} ∂x_{i,t}  (scatter-add, np.add.at; unmasked, row 0 gets the pads' share).
"""

from __future__ import annotations

import numpy as np

from backends.numpy_backend.model import dense_loss_and_grads, forward as dense_forward


def _effective_mask(tokens: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """μ as float64 (B, T): the token mask, or all ones when unmasked."""
    if mask is None:
        return np.ones(tokens.shape, dtype=np.float64)
    return np.asarray(mask, dtype=np.float64)


def _encode(params: dict, tokens: np.ndarray, mu: np.ndarray, kind: str):
    """The sequence encoder: the pooled vector p (seq_pool) or the final state h_T (rnn), and its cache."""
    emb = params["embed.weight"]
    x = emb[tokens]  # (B, T, E)
    if kind == "seq_pool":
        count = np.maximum(mu.sum(axis=1), 1.0)
        return (mu[:, :, None] * x).sum(axis=1) / count[:, None], (x, count)
    if kind != "rnn":
        raise ValueError(f"unknown sequence model kind {kind!r}")
    w, u, b = params["rnn.input.weight"], params["rnn.recurrent.weight"], params["rnn.bias"]
    rows, steps = tokens.shape
    h = np.zeros((rows, u.shape[0]))
    states, candidates = [h], []
    for t in range(steps):
        cand = np.tanh(x[:, t] @ w + h @ u + b)
        h = np.where(mu[:, t: t + 1] > 0, cand, h)
        candidates.append(cand)
        states.append(h)
    return h, (x, states, candidates)


def _head_input(enc: np.ndarray, kind: str, dropout: list[np.ndarray] | None):
    """What the Dense stack reads, and the masks it applies after its hidden layers: seq_pool's pooled vector with
    the masks of its MLP; rnn's final state times its one dropout mask, with no hidden layer after it."""
    if kind == "rnn":
        return (enc if dropout is None else enc * dropout[0]), None
    return enc, dropout


def forward(params: dict, tokens: np.ndarray, mask: np.ndarray | None, kind: str, activation: str,
            dropout: list[np.ndarray] | None):
    """Logits (B, C) and the Dense stack's cache. `mask=None`: unmasked; `dropout`: pre-scaled masks or None."""
    tokens = np.asarray(tokens, dtype=np.int64)
    enc, _ = _encode(params, tokens, _effective_mask(tokens, mask), kind)
    head, masks = _head_input(enc, kind, dropout)
    return dense_forward(params, head, activation, masks)


def loss_and_grads(params: dict, tokens: np.ndarray, mask: np.ndarray | None, labels: np.ndarray,
                   weights: np.ndarray, kind: str, activation: str, dropout: list[np.ndarray] | None):
    """(Σ m·ℓ / max(Σ m, 1), gradients of it by canonical name) for one batch; `weights` are the row weights m.
    The Dense head is the MLP oracle's (model.dense_loss_and_grads); this adds the encoder's backward pass."""
    params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    if dropout is not None:
        dropout = [np.asarray(d, dtype=np.float64) for d in dropout]
    tokens = np.asarray(tokens, dtype=np.int64)
    mu = _effective_mask(tokens, mask)
    enc, enc_cache = _encode(params, tokens, mu, kind)
    head, masks = _head_input(enc, kind, dropout)
    loss, grads, delta = dense_loss_and_grads(params, head, np.asarray(labels, dtype=np.int64),
                                              np.asarray(weights, dtype=np.float64), activation, masks)
    # delta: gradient of the dense head's input (p for seq_pool, r = h_T ⊙ d for rnn)
    emb = params["embed.weight"]
    if kind == "seq_pool":
        x, count = enc_cache
        dx = delta[:, None, :] * (mu / count[:, None])[:, :, None]
    else:
        x, states, candidates = enc_cache
        if dropout is not None:
            delta = delta * dropout[0]
        w, u = params["rnn.input.weight"], params["rnn.recurrent.weight"]
        dw, du, db = np.zeros_like(w), np.zeros_like(u), np.zeros(u.shape[0])
        dx = np.zeros_like(x)
        dh = delta
        for t in range(tokens.shape[1] - 1, -1, -1):
            m_t = mu[:, t: t + 1]
            da = m_t * dh * (1.0 - candidates[t] ** 2)
            dw += x[:, t].T @ da
            du += states[t].T @ da
            db += da.sum(axis=0)
            dx[:, t] = da @ w.T
            dh = da @ u.T + (1.0 - m_t) * dh
        grads["rnn.input.weight"], grads["rnn.recurrent.weight"], grads["rnn.bias"] = dw, du, db
    d_emb = np.zeros_like(emb)
    np.add.at(d_emb, tokens.reshape(-1), dx.reshape(-1, emb.shape[1]))
    grads["embed.weight"] = d_emb
    return loss, {k: grads[k] for k in params}
