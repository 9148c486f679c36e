"""The oracle model: a stack of explicit float64 layers and its loss (docs/design.md, "Layer stacks").

`build(layers, spec)` composes the per-kind classes of core, norm, image and sequence into a `Stack`. A pass feeds
x (features (B, F), images (B, H, W, C) or tokens (B, T)) through every layer's forward with a `Flow`, then the loss
and its gradient at the logits z (docs/design.md, "Losses and metrics"):

    L = Σ_r m_r·ℓ_r / max(Σ m, 1),   ℓ_r = logsumexp(z_r) − z_{r,y_r}   (common.metrics.cross_entropy),
    ∂L/∂z_r = m_r·(softmax(z_r) − onehot(y_r)) / max(Σ m, 1)   (an all-padded batch gives 0, not NaN),

and every layer's backward in reverse, collecting the gradients by canonical parameter name. A training pass
knows its real rows (weights > 0: batch_norm's statistics ignore the filler rows of `last_batch = "pad"`) and
writes the batch_norm state it updated (`bn{i}.mean`, `bn{i}.var`) back into the parameter dict after the forward;
the optimizer never sees that state (docs/design.md, "Images and BatchNorm").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from backends.numpy_backend import core, image, norm, sequence
from common.layers import Layer
from common.metrics import cross_entropy
from common.spec import Spec

LAYERS = {**core.LAYERS, **norm.LAYERS, **image.LAYERS, **sequence.LAYERS}


@dataclass
class Flow:
    """What travels with the activations through one pass: the dropout masks of a training pass (one per dropout
    layer, exact mode) or the RNG its dropout layers draw from (native mode), neither in evaluation; the real rows
    of a training batch (bool (B,), weights > 0; None: evaluation, batch_norm uses its running statistics); the
    replica of each row of a split step's micro-batch (int (B,), or None; batch_norm's groups); the token mask μ
    (B, T) float64 that the embedding sets; the state a training pass updated, by canonical name."""

    masks: list[np.ndarray] | None = None
    rng: np.random.Generator | None = None
    real: np.ndarray | None = None
    groups: np.ndarray | None = None
    mu: np.ndarray | None = None
    state: dict[str, np.ndarray] = field(default_factory=dict)


class Stack:
    """The layers of a model, each with its explicit forward and backward."""

    def __init__(self, layers: tuple[Layer, ...], spec: Spec):
        self.parts = [LAYERS[layer.kind](layer, spec) for layer in layers]

    def forward(
        self,
        params: dict,
        x: np.ndarray,
        masks: list[np.ndarray] | None = None,
        rng: np.random.Generator | None = None,
        real: np.ndarray | None = None,
        groups: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list]:
        """Logits and the caches of every layer. A training pass gives its real rows (`real`), for a split step's
        micro-batch each row's replica (`groups`), and updates the batch_norm state in `params` after the forward;
        no masks, no rng and no real rows: evaluation."""
        flow, caches = Flow(masks, rng, real, groups), []
        for part in self.parts:
            x, cache = part.forward(params, x, flow)
            caches.append(cache)
        params.update(flow.state)
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
        total = max(float(weights.sum()), 1.0)
        losses, grads = self.weighted_grads(params, x, y, weights / total, weights > 0, masks, rng)
        return float(np.sum(losses * weights) / total), grads

    def weighted_grads(
        self,
        params: dict,
        x: np.ndarray,
        y: np.ndarray,
        coeffs: np.ndarray,
        real: np.ndarray,
        masks: list[np.ndarray] | None = None,
        rng: np.random.Generator | None = None,
        groups: np.ndarray | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(ℓ per row, the gradients of Σ_r coeffs_r·ℓ_r by canonical name) of one training pass over the rows
        `real` marks real (a split step's micro-batch: `groups`, each row's replica); ∂/∂z_r = coeffs_r·(softmax(z_r)
        − onehot(y_r))."""
        logits, caches = self.forward(params, x, masks, rng, real, groups)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        probs[np.arange(y.shape[0]), y] -= 1.0
        return cross_entropy(logits, y), self.backward(params, caches, probs * coeffs[:, None])


def build(layers: tuple[Layer, ...], spec: Spec) -> Stack:
    """The oracle model of a resolved layer stack (the spec gives `sequence.mask`)."""
    return Stack(layers, spec)


def load_canonical(params: dict) -> dict[str, np.ndarray]:
    """Canonical parameters and state (batch_norm's `bn{i}.mean`, `bn{i}.var`) as the oracle's own float64 copies."""
    return {name: np.array(value, dtype=np.float64) for name, value in params.items()}


def to_canonical(params: dict) -> dict[str, np.ndarray]:
    """The oracle's parameters and state by canonical name (copies; the layout is already canonical)."""
    return {name: value.copy() for name, value in params.items()}
