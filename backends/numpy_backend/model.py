"""The oracle MLP: explicit forward and backward in float64.

Forward, hidden layer i:  a_i = h_{i−1}·W_i + b_i,  h_i = act(a_i) ⊙ m_i  (m_i the pre-scaled dropout mask, or 1)
Output: z = h_{L−1}·W_L + b_L (logits).  Loss: L = Σ_r w_r·ℓ_r / Σ w,  ℓ_r = logsumexp(z_r) − z_{r,y_r}.
Backward: ∂L/∂z = w_r·(softmax(z_r) − onehot(y_r))/max(Σw, 1) (Σw ≥ 1 for every plan batch; the max only keeps an
all-padded sequence batch at 0, common.padding);  ∂W_i = h_{i−1}ᵀ·δ_i;  ∂b_i = Σ_r δ_i;
δ_{i−1} = (δ_i·W_iᵀ) ⊙ m_{i−1} ⊙ act′(a_{i−1}),  relu′(a) = [a > 0] (0 at 0, as in torch, TF and JAX),
tanh′(a) = 1 − tanh²(a).
"""

from __future__ import annotations

import numpy as np

from common.metrics import cross_entropy


def n_layers(params: dict[str, np.ndarray]) -> int:
    """The Dense layers `layer{i}` (a sequence model's embedding and RNN come before them)."""
    return sum(1 for k in params if k.startswith("layer") and k.endswith(".weight"))


def forward(params: dict, x: np.ndarray, activation: str, masks: list[np.ndarray] | None):
    """Logits and the cache (layer inputs, pre-activations) the backward pass needs."""
    h, inputs, pre = x, [], []
    last = n_layers(params) - 1
    for i in range(last + 1):
        inputs.append(h)
        a = h @ params[f"layer{i}.weight"] + params[f"layer{i}.bias"]
        if i == last:
            return a, (inputs, pre)
        pre.append(a)
        h = np.maximum(a, 0.0) if activation == "relu" else np.tanh(a)
        if masks is not None:
            h = h * masks[i]
    raise AssertionError("unreachable")


def loss_and_grads(params: dict, x, y, weights, activation: str, masks):
    """(Σw·ℓ/Σw, gradients of it) for one batch."""
    loss, grads, _ = dense_loss_and_grads(params, x, y, weights, activation, masks)
    return loss, grads


def dense_loss_and_grads(params: dict, x, y, weights, activation: str, masks):
    """(Σw·ℓ/max(Σw, 1), gradients of the Dense layers, ∂L/∂x) for one batch fed to the Dense stack at x."""
    logits, (inputs, pre) = forward(params, x, activation, masks)
    losses = cross_entropy(logits, y)
    total = max(float(weights.sum()), 1.0)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    probs[np.arange(y.shape[0]), y] -= 1.0
    delta = probs * (weights / total)[:, None]
    grads = {}
    for i in range(n_layers(params) - 1, -1, -1):
        grads[f"layer{i}.weight"] = inputs[i].T @ delta
        grads[f"layer{i}.bias"] = delta.sum(axis=0)
        delta = delta @ params[f"layer{i}.weight"].T
        if i == 0:
            break
        if masks is not None:
            delta = delta * masks[i - 1]
        a = pre[i - 1]
        delta = delta * ((a > 0.0) if activation == "relu" else 1.0 - np.tanh(a) ** 2)
    return float(np.sum(losses * weights) / total), grads, delta
