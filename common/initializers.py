"""Canonical init schemes, drawn once in numpy and copied into every framework (docs/design.md, "Initialisation").

Each layer kind (common.layers) picks its generator, default_rng([seed, rng.INIT, sub-stream]), and calls one of
these; weights are drawn before biases.

- torch_default:  dense W, b ~ U(−1/√fan_in, 1/√fan_in) (torch Linear's kaiming_uniform(a=√5): gain √(1/3), bound
                  gain·√(3/fan_in)); embedding N(0, 1) (nn.Embedding); rnn W, U, b ~ U(±1/√units) (nn.RNN).
- glorot_uniform: dense W ~ U(±√(6/(fan_in+fan_out))), b = 0 (Keras Dense); embedding U(±0.05) (Keras
                  "uniform"); rnn W as dense, U orthogonal, b = 0 (Keras SimpleRNN).
- lecun_normal:   dense W ~ N(0, σ²) truncated to ±2σ, σ = √(1/fan_in)/0.87962566103423978, b = 0 (flax Dense; the
                  constant is the std of a standard normal truncated to [−2, 2]); embedding the same with
                  fan_in = dim (flax Embed's variance_scaling(1, fan_in, out_axis=0)); rnn W as dense, U orthogonal,
                  b = 0 (flax SimpleCell).
Conv kernels (kh, kw, in, out) use the dense rules with fan_in = kh·kw·in and fan_out = kh·kw·out (torch's
kaiming_uniform(a=√5) bound 1/√fan_in and bias bound 1/√fan_in, Keras glorot_uniform, flax lecun_normal); drawn as
a (kh·kw·in, out) matrix reshaped in C order.
Orthogonal: Q of the QR of a normal units×units matrix, columns signed by diag(R).
"""

from __future__ import annotations

import numpy as np

SCHEMES = ("torch_default", "glorot_uniform", "lecun_normal")
TRUNCATED_NORMAL_STD = 0.87962566103423978


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, int], std: float) -> np.ndarray:
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * std


def dense(rng: np.random.Generator, scheme: str, fan_in: int, fan_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight (fan_in, fan_out), bias (fan_out,)) of a dense layer under `scheme`."""
    if scheme == "torch_default":
        bound = 1.0 / np.sqrt(fan_in)
        weight = rng.uniform(-bound, bound, (fan_in, fan_out))
        return weight, rng.uniform(-bound, bound, fan_out)
    if scheme == "glorot_uniform":
        bound = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-bound, bound, (fan_in, fan_out)), np.zeros(fan_out)
    if scheme == "lecun_normal":
        std = np.sqrt(1.0 / fan_in) / TRUNCATED_NORMAL_STD
        return _truncated_normal(rng, (fan_in, fan_out), std), np.zeros(fan_out)
    raise ValueError(f"unknown init scheme {scheme!r}")


def conv(rng: np.random.Generator, scheme: str, kh: int, kw: int, cin: int, cout: int) -> tuple[np.ndarray, ...]:
    """(kernel (kh, kw, cin, cout), bias (cout,)) of a conv layer under `scheme` (module docstring)."""
    fan_in, fan_out = kh * kw * cin, kh * kw * cout
    if scheme == "torch_default":
        bound = 1.0 / np.sqrt(fan_in)
        weight = rng.uniform(-bound, bound, (fan_in, cout))
        bias = rng.uniform(-bound, bound, cout)
    elif scheme == "glorot_uniform":
        bound = np.sqrt(6.0 / (fan_in + fan_out))
        weight, bias = rng.uniform(-bound, bound, (fan_in, cout)), np.zeros(cout)
    elif scheme == "lecun_normal":
        std = np.sqrt(1.0 / fan_in) / TRUNCATED_NORMAL_STD
        weight, bias = _truncated_normal(rng, (fan_in, cout), std), np.zeros(cout)
    else:
        raise ValueError(f"unknown init scheme {scheme!r}")
    return weight.reshape(kh, kw, cin, cout), bias


def embedding(rng: np.random.Generator, scheme: str, vocab: int, dim: int) -> np.ndarray:
    """The (vocab, dim) embedding table under `scheme`."""
    if scheme == "torch_default":
        return rng.standard_normal((vocab, dim))
    if scheme == "glorot_uniform":
        return rng.uniform(-0.05, 0.05, (vocab, dim))
    return _truncated_normal(rng, (vocab, dim), np.sqrt(1.0 / dim) / TRUNCATED_NORMAL_STD)


def _orthogonal(rng: np.random.Generator, size: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((size, size)))
    return q * np.sign(np.diag(r))


def recurrent(rng: np.random.Generator, scheme: str, dim: int, units: int) -> tuple[np.ndarray, ...]:
    """(W (dim, units), U (units, units), b (units,)) of an Elman RNN under `scheme`."""
    if scheme == "torch_default":
        bound = 1.0 / np.sqrt(units)
        return (
            rng.uniform(-bound, bound, (dim, units)),
            rng.uniform(-bound, bound, (units, units)),
            rng.uniform(-bound, bound, units),
        )
    kernel, bias = dense(rng, scheme, dim, units)
    return kernel, _orthogonal(rng, units), bias
