"""Canonical initial parameters, made once in numpy and copied into every framework (DESIGN §5, "Initialisation").

Layout: `layer{i}.weight` with shape (in, out) and `layer{i}.bias` with shape (out,), i counting the Dense layers
from 0 (the output layer last). torch stores weights (out, in): its adapter transposes.

- torch_default:  W, b ~ U(−1/√fan_in, 1/√fan_in). This is torch Linear's kaiming_uniform(a=√5):
                  gain = √(2/(1+a²)) = √(1/3), bound = gain·√(3/fan_in) = 1/√fan_in; the bias uses the same bound.
- glorot_uniform: W ~ U(−√(6/(fan_in+fan_out)), +…), b = 0 (Keras Dense default).
- lecun_normal:   W ~ N(0, σ²) truncated to ±2σ, σ = √(1/fan_in)/0.87962566103423978, b = 0 (flax default;
                  the constant is the std of a standard normal truncated to [−2, 2]).
Draws come from `default_rng([seed, 4, i])` per layer, weight before bias.
"""

from __future__ import annotations

import numpy as np

INIT_STREAM = 4
TRUNCATED_NORMAL_STD = 0.87962566103423978


def layer_sizes(n_features: int, hidden: list[int], n_classes: int) -> list[tuple[int, int]]:
    """(fan_in, fan_out) for each Dense layer of the MLP."""
    sizes = [n_features, *hidden, n_classes]
    return list(zip(sizes[:-1], sizes[1:]))


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, int], std: float) -> np.ndarray:
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * std


def initial_params(scheme: str, sizes: list[tuple[int, int]], seed: int, dtype) -> dict[str, np.ndarray]:
    """The canonical initial parameters for `scheme`, cast to `dtype`."""
    params = {}
    for i, (fan_in, fan_out) in enumerate(sizes):
        rng = np.random.default_rng([seed, INIT_STREAM, i])
        if scheme == "torch_default":
            bound = 1.0 / np.sqrt(fan_in)
            weight = rng.uniform(-bound, bound, (fan_in, fan_out))
            bias = rng.uniform(-bound, bound, fan_out)
        elif scheme == "glorot_uniform":
            bound = np.sqrt(6.0 / (fan_in + fan_out))
            weight, bias = rng.uniform(-bound, bound, (fan_in, fan_out)), np.zeros(fan_out)
        elif scheme == "lecun_normal":
            std = np.sqrt(1.0 / fan_in) / TRUNCATED_NORMAL_STD
            weight, bias = _truncated_normal(rng, (fan_in, fan_out), std), np.zeros(fan_out)
        else:
            raise ValueError(f"unknown init scheme {scheme!r}")
        params[f"layer{i}.weight"] = weight.astype(dtype)
        params[f"layer{i}.bias"] = bias.astype(dtype)
    return params


def is_regularized(name: str, regularize_bias: bool) -> bool:
    """Whether l1, l2 and weight decay touch parameter `name`: weights always, biases only if asked."""
    return name.endswith(".weight") or regularize_bias
