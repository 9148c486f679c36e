"""The sequence models (seq_pool, rnn) as Keras 3 layers, and the canonical ⇄ Keras parameter mapping.

Native mechanisms used:
- `keras.layers.Embedding(vocab, E, mask_zero=sequence.mask)`. Token 0 is the pad and never a real token
  (common.sequences), so Keras's own mask, `Embedding.compute_mask` = (tokens != 0), is exactly the token mask m_t
  of common.padding. The model asks the Embedding for it and hands it on explicitly (`mask=`), the way Keras's
  functional API propagates it. Row 0 of the embedding stays trainable (Keras has no padding_idx).
- seq_pool: `MaskedMeanPool`, Σ_t m_t·x_t / max(Σ_t m_t, 1). Keras's `GlobalAveragePooling1D` takes the same mask
  but divides by Σ_t m_t, which is 0/0 = NaN on an all-padded row; the max(·, 1) makes that row pool to 0 (the
  canonical rule). Without a mask: `GlobalAveragePooling1D` (plain mean over all T positions, pads included).
  Then the MLP's Dense layers, exactly as backends.tf_backend.model.MLP.
- rnn: `keras.layers.SimpleRNN(H, activation="tanh")` fed the Embedding's mask: Keras skips masked steps (the state
  is carried through them unchanged), so the final output is the state after each row's last real token for pre-
  and post-padding alike, and 0 for an all-padded row (h_0 = 0 is never updated). Without a mask it runs all T
  steps and returns h at T−1. Its cell holds kernel (E, H) = rnn.input.weight, recurrent_kernel (H, H) =
  rnn.recurrent.weight and ONE bias (H,) = rnn.bias: h_t = tanh(x_t·W + b + h_{t−1}·U), the canonical cell, no
  transposes. Then h ⊙ dropout mask and `Dense(C)` = layer0.
- Regularizers where Keras puts them: `embeddings_regularizer`, SimpleRNN's `kernel_regularizer` /
  `recurrent_regularizer` / `bias_regularizer`, Dense's `kernel_regularizer` / `bias_regularizer`.
- Dropout: exact mode multiplies the driver's shared masks explicitly (seq_pool: after each hidden activation;
  rnn: on the final state); native mode uses `keras.layers.Dropout` (same places), seeded from the spec seed.
- Native init (mode = "native"): Keras's defaults, seeded: Embedding "uniform" U(±0.05), SimpleRNN glorot_uniform
  kernel / orthogonal recurrent kernel / zero bias, Dense glorot_uniform / zeros.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from backends.tf_backend.model import INIT_STREAM, dense_layers, dropout_layers, dropped, layer_seed

EMBED_LAYER, RNN_LAYER = 1000, 1001  # init-seed slots for the native initializers (Dense layers use 0, 1, …)


class MaskedMeanPool(keras.layers.Layer):
    """Σ_t m_t·x_t / max(Σ_t m_t, 1) over axis 1 (NaN-free masked mean); consumes the mask."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is None:
            return ops.mean(inputs, axis=1)
        m = ops.expand_dims(ops.cast(mask, inputs.dtype), 2)
        return ops.sum(inputs * m, axis=1) / ops.maximum(ops.sum(m, axis=1), ops.cast(1, inputs.dtype))

    def compute_mask(self, inputs, mask=None):
        return None


class SequenceModel(keras.Model):
    """Embedding(mask_zero) → masked mean pool → MLP (seq_pool), or Embedding(mask_zero) → SimpleRNN → Dense (rnn)."""

    def __init__(self, kind: str, vocab: int, embed_dim: int, hidden: list[int], n_classes: int, activation: str,
                 mask: bool, dtype: str, regularizers: dict, native_dropout: float, seed: int,
                 native_init: bool = False):
        super().__init__(name=kind, dtype=dtype)
        self.kind = kind
        self.embed = keras.layers.Embedding(
            vocab, embed_dim, mask_zero=mask, dtype=dtype, name="embed",
            embeddings_initializer=keras.initializers.RandomUniform(
                -0.05, 0.05, seed=layer_seed(seed, INIT_STREAM, EMBED_LAYER)) if native_init else "uniform",
            embeddings_regularizer=regularizers.get("embed.weight"))
        if kind == "seq_pool":
            self.pool = MaskedMeanPool(dtype=dtype, name="pool") if mask else \
                keras.layers.GlobalAveragePooling1D(dtype=dtype, name="pool")
            sizes = list(zip([embed_dim, *hidden], [*hidden, n_classes]))
            n_dropout = len(hidden)
        else:
            init = layer_seed(seed, INIT_STREAM, RNN_LAYER)
            self.rnn = keras.layers.SimpleRNN(
                hidden[0], activation="tanh", dtype=dtype, name="rnn",
                kernel_initializer=keras.initializers.GlorotUniform(seed=init) if native_init else "glorot_uniform",
                recurrent_initializer=keras.initializers.Orthogonal(seed=init + 1) if native_init else "orthogonal",
                kernel_regularizer=regularizers.get("rnn.input.weight"),
                recurrent_regularizer=regularizers.get("rnn.recurrent.weight"),
                bias_regularizer=regularizers.get("rnn.bias"))
            sizes = [(hidden[0], n_classes)]
            n_dropout = 1
        self.dense = dense_layers(sizes, activation, dtype, regularizers, seed, native_init)
        self.dropout = dropout_layers(native_dropout, dtype, seed, n_dropout)

    def call(self, tokens, masks=None, training=False):
        x = self.embed(tokens)
        mask = self.embed.compute_mask(tokens)  # tokens != 0 with mask_zero, else None
        if self.kind == "seq_pool":
            h = self.pool(x, mask=mask)
            for i, dense in enumerate(self.dense[:-1]):
                h = dropped(dense(h), i, masks, self.dropout, training)
            return self.dense[-1](h)
        h = dropped(self.rnn(x, mask=mask), 0, masks, self.dropout, training)
        return self.dense[0](h)


def build_sequence_model(spec: dict, vocab: int, n_classes: int, regularizers: dict, native_dropout: float,
                         native_init: bool = False) -> SequenceModel:
    """The spec's model with its variables created (one eval-mode call on a one-token row)."""
    m = spec["model"]
    model = SequenceModel(m["kind"], vocab, m["embed_dim"], m["hidden"], n_classes, m["activation"],
                          spec["sequence"]["mask"], spec["dtype"], regularizers, native_dropout, spec["seed"],
                          native_init)
    model(np.ones((1, 1), dtype=np.int64))
    return model


def sequence_variables(model: SequenceModel) -> dict[str, keras.Variable]:
    """Canonical name → the Keras variable holding it."""
    out = {"embed.weight": model.embed.embeddings}
    if model.kind == "rnn":
        cell = model.rnn.cell
        out.update({"rnn.input.weight": cell.kernel, "rnn.recurrent.weight": cell.recurrent_kernel,
                    "rnn.bias": cell.bias})
    for i, dense in enumerate(model.dense):
        out[f"layer{i}.weight"], out[f"layer{i}.bias"] = dense.kernel, dense.bias
    return out


def parameter_sizes(spec: dict, vocab: int, n_classes: int) -> dict[str, int]:
    """Canonical name → number of entries (the L1 mean form divides by it)."""
    m = spec["model"]
    e, hidden = m["embed_dim"], m["hidden"]
    out = {"embed.weight": vocab * e}
    if m["kind"] == "rnn":
        h = hidden[0]
        out.update({"rnn.input.weight": e * h, "rnn.recurrent.weight": h * h, "rnn.bias": h})
        sizes = [(h, n_classes)]
    else:
        sizes = list(zip([e, *hidden], [*hidden, n_classes]))
    for i, (fan_in, fan_out) in enumerate(sizes):
        out[f"layer{i}.weight"], out[f"layer{i}.bias"] = fan_in * fan_out, fan_out
    return out


def load_sequence_params(model: SequenceModel, params: dict[str, np.ndarray]) -> None:
    """Copy canonical parameters in (every Keras layout equals the canonical one: no transposes)."""
    variables = sequence_variables(model)
    if set(variables) != set(params):
        raise ValueError(f"canonical parameters {sorted(params)} do not match the Keras model's {sorted(variables)}")
    for name, var in variables.items():
        if tuple(var.shape) != params[name].shape:
            raise ValueError(f"{name}: Keras shape {tuple(var.shape)}, canonical {params[name].shape}")
        var.assign(params[name])


def canonical_sequence_params(model: SequenceModel) -> dict[str, np.ndarray]:
    return {name: np.asarray(var.numpy()) for name, var in sequence_variables(model).items()}
