"""Canonical initial parameters, made once in numpy and copied into every framework (DESIGN §5, "Initialisation").

Layout: `layer{i}.weight` with shape (in, out) and `layer{i}.bias` with shape (out,), i counting the Dense layers
from 0 (the output layer last). torch stores weights (out, in): its adapter transposes.

- torch_default:  W, b ~ U(−1/√fan_in, 1/√fan_in). This is torch Linear's kaiming_uniform(a=√5):
                  gain = √(2/(1+a²)) = √(1/3), bound = gain·√(3/fan_in) = 1/√fan_in; the bias uses the same bound.
- glorot_uniform: W ~ U(−√(6/(fan_in+fan_out)), +…), b = 0 (Keras Dense default).
- lecun_normal:   W ~ N(0, σ²) truncated to ±2σ, σ = √(1/fan_in)/0.87962566103423978, b = 0 (flax default;
                  the constant is the std of a standard normal truncated to [−2, 2]).
Draws come from `default_rng([seed, 4, i])` per layer, weight before bias.

Sequence models (`sequence_params`) add, before the Dense layers:
- `embed.weight` (vocab, E), from `default_rng([seed, 4, 1000])`: torch_default N(0, 1) (nn.Embedding);
  glorot_uniform U(±0.05) (Keras Embedding's "uniform"); lecun_normal N(0, 1/E) truncated at ±2σ as above (flax
  Embed's variance_scaling(1, fan_in, out_axis=0)). Row 0 is the pad token's embedding: a masked model never reads
  it, an unmasked one does.
- rnn only: `rnn.input.weight` (E, H), `rnn.recurrent.weight` (H, H), `rnn.bias` (H,) of
  h_t = tanh(x_t·W + h_{t−1}·U + b), from `default_rng([seed, 4, 1001])`: torch_default U(±1/√H) for all three
  (nn.RNN); glorot_uniform / lecun_normal: W as above, U orthogonal (the Keras SimpleRNN and flax SimpleCell
  default: Q of the QR of a normal H×H matrix, columns signed by diag(R)), b = 0.
The Dense layers are `layer{i}`: seq_pool's MLP E → hidden → classes; rnn's one head H → classes (`layer0`).
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


def _dense(rng: np.random.Generator, scheme: str, fan_in: int, fan_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(weight (fan_in, fan_out), bias) of one Dense layer under `scheme`, weight drawn before bias."""
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


def initial_params(scheme: str, sizes: list[tuple[int, int]], seed: int, dtype) -> dict[str, np.ndarray]:
    """The canonical initial parameters for `scheme`, cast to `dtype`."""
    params = {}
    for i, (fan_in, fan_out) in enumerate(sizes):
        weight, bias = _dense(np.random.default_rng([seed, INIT_STREAM, i]), scheme, fan_in, fan_out)
        params[f"layer{i}.weight"] = weight.astype(dtype)
        params[f"layer{i}.bias"] = bias.astype(dtype)
    return params


EMBED_STREAM, RNN_STREAM = 1000, 1001


def _orthogonal(rng: np.random.Generator, size: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((size, size)))
    return q * np.sign(np.diag(r))


def sequence_params(spec: dict, vocab: int, n_classes: int) -> dict[str, np.ndarray]:
    """The canonical initial parameters of a seq_pool or rnn model (module docstring), in the spec dtype."""
    model, seed, dtype = spec["model"], spec["seed"], np.dtype(spec["dtype"])
    scheme, embed_dim = model["init"], model["embed_dim"]
    rng = np.random.default_rng([seed, INIT_STREAM, EMBED_STREAM])
    if scheme == "torch_default":
        embed = rng.standard_normal((vocab, embed_dim))
    elif scheme == "glorot_uniform":
        embed = rng.uniform(-0.05, 0.05, (vocab, embed_dim))
    else:
        embed = _truncated_normal(rng, (vocab, embed_dim), np.sqrt(1.0 / embed_dim) / TRUNCATED_NORMAL_STD)
    params = {"embed.weight": embed.astype(dtype)}
    if model["kind"] == "seq_pool":
        return {**params, **initial_params(scheme, layer_sizes(embed_dim, model["hidden"], n_classes), seed, dtype)}
    width = model["hidden"][0]
    rng = np.random.default_rng([seed, INIT_STREAM, RNN_STREAM])
    if scheme == "torch_default":
        bound = 1.0 / np.sqrt(width)
        rnn = {"rnn.input.weight": rng.uniform(-bound, bound, (embed_dim, width)),
               "rnn.recurrent.weight": rng.uniform(-bound, bound, (width, width)),
               "rnn.bias": rng.uniform(-bound, bound, width)}
    else:
        kernel, bias = _dense(rng, scheme, embed_dim, width)
        rnn = {"rnn.input.weight": kernel, "rnn.recurrent.weight": _orthogonal(rng, width), "rnn.bias": bias}
    params.update({k: v.astype(dtype) for k, v in rnn.items()})
    return {**params, **initial_params(scheme, [(width, n_classes)], seed, dtype)}


def is_regularized(name: str, regularize_bias: bool) -> bool:
    """Whether l1, l2 and weight decay touch parameter `name`: weights always, biases only if asked."""
    return name.endswith(".weight") or regularize_bias
