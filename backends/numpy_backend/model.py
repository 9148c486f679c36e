"""The oracle model: a stack of explicit float64 layers and its loss (docs/design.md, "Layer stacks").

`build(layers, spec)` composes the per-kind classes of core, norm and sequence into a `Stack`. A pass feeds x
(features (B, F) or tokens (B, T)) through every layer's forward with a `Flow`, then the loss and its gradient at
the logits z (docs/design.md, "Losses and metrics"):

    L = Σ_r m_r·ℓ_r / max(Σ m, 1),   ℓ_r = logsumexp(z_r) − z_{r,y_r}   (common.metrics.cross_entropy),
    ∂L/∂z_r = m_r·(softmax(z_r) − onehot(y_r)) / max(Σ m, 1)   (an all-padded batch gives 0, not NaN),

and every layer's backward in reverse, collecting the gradients by canonical parameter name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backends.numpy_backend import core, norm, sequence
from common.layers import Layer
from common.metrics import cross_entropy
from common.spec import Spec

LAYERS = {**core.LAYERS, **norm.LAYERS, **sequence.LAYERS}


@dataclass
class Flow:
    """What travels with the activations through one pass: the dropout masks of a training pass (one per dropout
    layer, exact mode) or the RNG its dropout layers draw from (native mode), neither in evaluation, and the token
    mask μ (B, T) float64 that the embedding sets."""

    masks: list[np.ndarray] | None = None
    rng: np.random.Generator | None = None
    mu: np.ndarray | None = None


class Stack:
    """The layers of a model, each with its explicit forward and backward."""

    def __init__(self, layers: tuple[Layer, ...], spec: Spec):
        self.parts = [LAYERS[layer.kind](layer, spec) for layer in layers]

    def forward(
        self, params: dict, x: np.ndarray, masks: list[np.ndarray] | None = None, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, list]:
        """Logits and the caches of every layer; no masks and no rng: evaluation (no dropout)."""
        flow, caches = Flow(masks, rng), []
        for part in self.parts:
            x, cache = part.forward(params, x, flow)
            caches.append(cache)
        return x, caches

    def backward(self, params: dict, caches: list, d_logits: np.ndarray) -> dict[str, np.ndarray]:
        """Gradients by canonical name from the gradient at the logits."""
        grads, dy = {}, d_logits
        for part, cache in zip(reversed(self.parts), reversed(caches), strict=True):
            dy, part_grads = part.backward(params, cache, dy)
            grads.update(part_grads)
        return grads

    def loss_and_grads(
        self,
        params: dict,
        x: np.ndarray,
        y: np.ndarray,
        weights: np.ndarray,
        masks: list[np.ndarray] | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[float, dict[str, np.ndarray]]:
        """(Σ m·ℓ / max(Σ m, 1), its gradients by canonical name) of one training pass (module docstring)."""
        logits, caches = self.forward(params, x, masks, rng)
        total = max(float(weights.sum()), 1.0)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        probs[np.arange(y.shape[0]), y] -= 1.0
        grads = self.backward(params, caches, probs * (weights / total)[:, None])
        return float(np.sum(cross_entropy(logits, y) * weights) / total), grads


def build(layers: tuple[Layer, ...], spec: Spec) -> Stack:
    """The oracle model of a resolved layer stack (the spec gives `sequence.mask`)."""
    return Stack(layers, spec)


def load_canonical(params: dict) -> dict[str, np.ndarray]:
    """Canonical parameters as the oracle's own float64 copies."""
    return {name: np.array(value, dtype=np.float64) for name, value in params.items()}


def to_canonical(params: dict) -> dict[str, np.ndarray]:
    """The oracle's parameters by canonical name (copies; the layout is already canonical)."""
    return {name: value.copy() for name, value in params.items()}
