"""Core layers in float64: dense on features (B, F); dropout, relu, tanh on features or images (B, H, W, C)
(docs/design.md, "Layer stacks").

Every kind here and in norm.py, image.py, sequence.py is a class built from its `common.layers.Layer` and the
spec, with `forward(params, x, flow) -> (y, cache)` and `backward(params, cache, dy) -> (dx, gradients by canonical
name)`; `flow` (model.Flow) carries what travels with the activations: the token mask μ, the dropout masks or RNG,
the real rows of a training batch, the batch_norm state it updated.

dense:      a = x·W + b,  y = act(a);  da = dy ⊙ act′(a),  ∂W = xᵀ·da,  ∂b = Σ_rows da,  dx = da·Wᵀ,
            relu′(a) = [a > 0] (0 at 0, as in torch, TF and JAX),  tanh′(a) = 1 − tanh²(a),  none′ = 1.
dropout:    y = x ⊙ m,  dx = dy ⊙ m;  m the pre-scaled mask of this dropout layer: exact mode the shared mask
            (common.dropout), native mode keep = U[0,1) ≥ p drawn in x's shape from the oracle's own stream in
            call order, times 1/(1 − p) (docs/design.md, "Dropout"); identity in evaluation.
relu, tanh: y = act(x),  dx = dy ⊙ act′(x).
"""

from __future__ import annotations

import numpy as np

from common.dropout import keep_scale
from common.layers import Layer
from common.spec import Spec


def activate(name: str, a: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(a, 0.0)
    return np.tanh(a) if name == "tanh" else a


def activation_backward(name: str, a: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dy ⊙ act′(a), with y = act(a)."""
    if name == "relu":
        return dy * (a > 0.0)
    return dy * (1.0 - y**2) if name == "tanh" else dy


class Part:
    """One layer of the oracle's stack."""

    def __init__(self, layer: Layer, spec: Spec):
        self.layer = layer


class Dense(Part):
    def forward(self, params, x, flow):
        a = x @ params[self.layer.param("weight")]
        if self.layer.bias:
            a = a + params[self.layer.param("bias")]
        y = activate(self.layer.activation, a)
        return y, (x, a, y)

    def backward(self, params, cache, dy):
        x, a, y = cache
        da = activation_backward(self.layer.activation, a, y, dy)
        grads = {self.layer.param("weight"): x.T @ da}
        if self.layer.bias:
            grads[self.layer.param("bias")] = da.sum(axis=0)
        return da @ params[self.layer.param("weight")].T, grads


class Dropout(Part):
    def forward(self, params, x, flow):
        rate = self.layer.rate
        if flow.masks is not None:
            mask = flow.masks[self.layer.number]
        elif flow.rng is not None and rate > 0.0:
            mask = (flow.rng.random(x.shape) >= rate) * keep_scale(rate)
        else:
            return x, None
        return x * mask, mask

    def backward(self, params, mask, dy):
        return (dy if mask is None else dy * mask), {}


class Activation(Part):
    """The relu and tanh kinds: the activation alone."""

    def forward(self, params, x, flow):
        y = activate(self.layer.kind, x)
        return y, (x, y)

    def backward(self, params, cache, dy):
        return activation_backward(self.layer.kind, *cache, dy), {}


LAYERS = {"dense": Dense, "dropout": Dropout, "relu": Activation, "tanh": Activation}
