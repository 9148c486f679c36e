"""The MLP as Keras 3 layers, and the canonical ⇄ native parameter mapping.

Native mechanisms used:
- `keras.layers.Dense(activation=relu|tanh)` per layer. Its kernel is stored (in, out), which *is* the canonical
  layout, so loading and reading parameters is `set_weights` / `get_weights` without a transpose.
- Regularization is attached where Keras puts it, as `kernel_regularizer` / `bias_regularizer` on each Dense
  (built by optim.layer_regularizer); Keras then reports the penalties in `model.losses`.
- dtype: every layer is built with the spec dtype (and the adapter sets `keras.config.set_floatx`).
- Initialisation: exact mode loads the canonical parameters. Native mode keeps Dense's own default,
  glorot_uniform kernel and zero bias, seeded per layer from the spec seed (`GlorotUniform(seed=…)`).
- Dropout after every hidden layer, train only:
    exact mode:  h ← h · m with the driver's pre-scaled shared mask m, an explicit multiply, because no Keras layer
                 accepts an external mask (DESIGN §5, "Dropout");
    native mode: `keras.layers.Dropout(rate, seed=…)`, Keras's own inverted dropout and RNG, one seed per layer
                 derived from the spec seed; `training=False` turns it off.
"""

from __future__ import annotations

import keras
import numpy as np

if keras.backend.backend() != "tensorflow":
    raise RuntimeError(f"backends.tf_backend needs KERAS_BACKEND=tensorflow, but Keras was loaded with "
                       f"'{keras.backend.backend()}'")

DROPOUT_STREAM = 5
INIT_STREAM = 6


def layer_seed(seed: int, stream: int, layer: int) -> int:
    """An independent Keras seed per (spec seed, purpose, layer)."""
    return int(np.random.SeedSequence([seed, stream, layer]).generate_state(1)[0])


def _glorot(seed: int, layer: int) -> keras.initializers.GlorotUniform:
    """Dense's default kernel initializer, seeded (its default bias initializer is already zeros)."""
    return keras.initializers.GlorotUniform(seed=layer_seed(seed, INIT_STREAM, layer))


def dense_layers(sizes: list[tuple[int, int]], activation: str, dtype: str,
                 regularizers: dict[str, keras.regularizers.Regularizer | None], seed: int,
                 seeded_init: bool) -> list[keras.layers.Dense]:
    """`layer{i}` Dense layers for (fan_in, fan_out) sizes: activation on all but the last (the logits), the
    regularizers by canonical name, Keras's default init (seeded per layer in native mode)."""
    last = len(sizes) - 1
    return [keras.layers.Dense(fan_out, activation=activation if i < last else None, dtype=dtype, name=f"layer{i}",
                               kernel_initializer=_glorot(seed, i) if seeded_init else "glorot_uniform",
                               kernel_regularizer=regularizers.get(f"layer{i}.weight"),
                               bias_regularizer=regularizers.get(f"layer{i}.bias"))
            for i, (_, fan_out) in enumerate(sizes)]


def dropout_layers(rate: float, dtype: str, seed: int, count: int) -> list[keras.layers.Dropout]:
    """Native mode's seeded `keras.layers.Dropout`, one per dropout site (none when rate is 0 or in exact mode)."""
    return [keras.layers.Dropout(rate, dtype=dtype, name=f"dropout{i}", seed=layer_seed(seed, DROPOUT_STREAM, i))
            for i in range(count)] if rate > 0 else []


def dropped(h, i: int, masks, layers: list, training: bool):
    """Dropout at site i: the shared pre-scaled mask (exact mode), else the native layer, else nothing."""
    if masks is not None:
        return h * masks[i]
    return layers[i](h, training=training) if layers else h


class MLP(keras.Model):
    """Dense → act → dropout for each hidden layer, then a Dense output layer giving logits."""

    def __init__(self, sizes: list[tuple[int, int]], activation: str, dtype: str,
                 regularizers: dict[str, keras.regularizers.Regularizer | None], native_dropout: float, seed: int,
                 seeded_init: bool = False):
        super().__init__(name="mlp", dtype=dtype)
        self.dense = dense_layers(sizes, activation, dtype, regularizers, seed, seeded_init)
        self.dropout = dropout_layers(native_dropout, dtype, seed, len(sizes) - 1)

    def call(self, x, masks=None, training=False):
        h = x
        for i, dense in enumerate(self.dense[:-1]):
            h = dropped(dense(h), i, masks, self.dropout, training)
        return self.dense[-1](h)


def build_mlp(sizes, activation, dtype, regularizers, native_dropout, seed, seeded_init=False) -> MLP:
    """An MLP with its variables created (one eval-mode call on a zero row)."""
    model = MLP(sizes, activation, dtype, regularizers, native_dropout, seed, seeded_init)
    model(np.zeros((1, sizes[0][0]), dtype=dtype))
    return model


def load_params(model: MLP, params: dict[str, np.ndarray]) -> None:
    """Copy canonical parameters in (Keras kernel (in, out) = canonical weight, no transpose)."""
    for i, dense in enumerate(model.dense):
        dense.set_weights([params[f"layer{i}.weight"], params[f"layer{i}.bias"]])


def canonical_params(model: MLP) -> dict[str, np.ndarray]:
    """Current parameters in the canonical layout."""
    out = {}
    for i, dense in enumerate(model.dense):
        out[f"layer{i}.weight"], out[f"layer{i}.bias"] = dense.get_weights()
    return out


def dense_variables(model: MLP) -> dict[str, keras.Variable]:
    """Canonical name → the Keras variable that holds it (for per-tensor optimizer settings)."""
    return {name: var for i, dense in enumerate(model.dense)
            for name, var in ((f"layer{i}.weight", dense.kernel), (f"layer{i}.bias", dense.bias))}
