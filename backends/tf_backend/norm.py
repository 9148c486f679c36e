"""Normalisation layers as Keras 3 layers: layer_norm, batch_norm (docs/design.md, "Layer stacks", "Images and
BatchNorm"; formulas in common.layers.norm).

layer_norm → `keras.layers.LayerNormalization(axis=-1)`: y = γ ⊙ (x − μ)/√(σ² + ε) + β, σ² biased, with γ = gamma
= canonical `ln{i}.scale` and β = beta = `ln{i}.offset` (no transposes), penalties on `gamma_regularizer` /
`beta_regularizer`. It passes ε = layer.eps (model.norm_eps unless the table sets it); the idiom `layer_norm_eps`
keeps Keras's own default ε (1e-3, common.traps "layer_norm_eps"), as a hand port would.

batch_norm → `keras.layers.BatchNormalization(axis=-1, synchronized=layer.sync)` over the last axis of (B, F) or
(B, H, W, C): gamma, beta = `bn{i}.scale`, `bn{i}.offset` (trainable, penalized like biases), moving_mean,
moving_variance = `bn{i}.mean`, `bn{i}.var` (non-trainable Keras variables: outside `trainable_variables`, never
seen by the optimizer). Keras's momentum m is the canonical decay convention, mean ← m·mean + (1 − m)·μ, and Keras
normalises with the biased σ²_b. The idioms `bn_momentum`, `bn_eps` and `bn_running_var` each keep one of Keras's
defaults (m = 0.99, ε = 1e-3, biased running variance; common.native.LAYER_DEFAULTS); with all three on the layer
is Keras's own `BatchNormalization(synchronized=layer.sync)` as a port writes it. Otherwise `BatchNorm`, with the
spec's value of each idiom that is off:
- momentum = layer.momentum, epsilon = layer.eps;
- a single-device training batch's real rows come in as Keras's own `mask` (shape of x without its channel axis,
  model.Stack broadcasts w > 0 to it): Keras's masked moments leave the filler rows of `last_batch = "pad"` out of
  μ and σ²_b. They divide by Σ mask + `keras.config.epsilon()` (1e-7, a relative error 1e-7/n in μ and σ²_b: 1.4e-8
  for a 7-row dense batch, outside float64's 1e-9), so the layer traces them with that fuzz factor at 0; the count
  is n ≥ 2 (common.layers.norm.check_batch_statistics);
- a split step's part (backends.tf_backend.distributed) is full and comes without a mask (Keras's masked moments
  ignore `synchronized`): sync = false, `tf.nn.moments` of the replica's c rows; sync = true, Keras's
  `_compute_moments_sync` (keras/src/backend/tensorflow/nn.py), the replicas' Σx, Σx² and counts all-reduced and
  σ²_b = max(E[x²] − μ², 0), one pass where the canonical σ²_b is two-pass (measured against the oracle on
  bn-r2-sync: 1e-15 in float64, 8e-7 in float32);
- running_var = "unbiased": Keras's running update uses σ²_b; the layer reads the old moving_variance, lets Keras
  update it, then assigns common.layers.norm.convert_running_var(old, updated, m, n/(n − 1)), n the values per
  channel the statistics were taken over (`BatchNorm.count`): Σ mask (rows·H·W), a part's c·H·W, or G·H·W
  synchronised. Only the running statistic changes, never the normalisation.
"""

from __future__ import annotations

from contextlib import contextmanager

import keras
import tensorflow as tf
from keras import ops

from backends.tf_backend.core import Build
from common.layers import Layer
from common.layers.norm import convert_running_var, running_var_factor
from common.native import LAYER_DEFAULTS

KERAS_RUNNING_VAR = LAYER_DEFAULTS["tf"]["running_var"]  # what Keras's BatchNormalization keeps


def layer_norm(layer: Layer, build: Build) -> keras.layers.LayerNormalization:
    eps = {} if build.on("layer_norm_eps") else {"epsilon": layer.eps}
    return keras.layers.LayerNormalization(
        axis=-1,
        dtype=build.dtype,
        name=layer.name,
        **eps,
        gamma_regularizer=build.regularizer(layer, "scale"),
        beta_regularizer=build.regularizer(layer, "offset"),
    )


@contextmanager
def _exact_counts():
    """keras.config.epsilon() at 0 while Keras's masked moments trace (module docstring)."""
    fuzz = keras.config.epsilon()
    keras.config.set_epsilon(0.0)
    try:
        yield
    finally:
        keras.config.set_epsilon(fuzz)


class BatchNorm(keras.layers.BatchNormalization):
    """Exact-mode batch_norm: Keras's layer with the real-row `mask` (single device) and the spec's running-variance
    estimator (module docstring). The mask only selects the rows of the statistics: it does not propagate
    downstream."""

    def __init__(self, running_var: str, **kwargs):
        super().__init__(**kwargs)
        self.running_var = running_var

    def call(self, inputs, training=None, mask=None):
        old = ops.copy(self.moving_variance)
        with _exact_counts():
            outputs = super().call(inputs, training=training, mask=mask)
        if training and self.trainable and self.running_var != KERAS_RUNNING_VAR:
            n = self.count(inputs, mask, old.dtype)
            factor = running_var_factor(KERAS_RUNNING_VAR, self.running_var, n)
            updated = ops.copy(self.moving_variance)
            self.moving_variance.assign(convert_running_var(old, updated, self.momentum, factor))
        return outputs

    def count(self, inputs, mask, dtype):
        """n, the values per channel of the batch statistics: Σ mask; without a mask (a split step's part) the
        part's c·H·W, times R when synchronized (Keras all-reduces the moments over the R replicas in sync; none
        outside a replica context, where it takes the local moments)."""
        if mask is not None:
            return ops.sum(ops.cast(mask, dtype))
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if self.synchronized and context is not None else 1
        return ops.cast(ops.prod(ops.shape(inputs)[:-1]) * replicas, dtype)

    @tf.autograph.experimental.do_not_convert
    def compute_mask(self, inputs, previous_mask):
        """None: the row mask selects the statistics' rows and stops here (a mask reaching the logits would make
        Keras mask the loss too). Kept out of autograph: a converted copy was once called unbound in a long test
        session ("tf__compute_mask() missing 1 required positional argument"), a conversion-cache effect."""
        return None


def row_mask(real, x):
    """Keras's BatchNormalization mask for x (B, F) or (B, H, W, C): the rows' `real` (B,) flags on every position
    of x's non-channel axes."""
    return ops.broadcast_to(ops.reshape(real, (-1,) + (1,) * (len(x.shape) - 2)), ops.shape(x)[:-1])


def batch_norm(layer: Layer, build: Build) -> keras.layers.BatchNormalization:
    keys = {
        "axis": -1,
        "dtype": build.dtype,
        "name": layer.name,
        "gamma_regularizer": build.regularizer(layer, "scale"),
        "beta_regularizer": build.regularizer(layer, "offset"),
        "synchronized": layer.sync,
    }
    native = {idiom: build.on(idiom) for idiom in ("bn_momentum", "bn_eps", "bn_running_var")}
    if all(native.values()):
        return keras.layers.BatchNormalization(**keys)
    defaults = LAYER_DEFAULTS["tf"]
    return BatchNorm(
        KERAS_RUNNING_VAR if native["bn_running_var"] else layer.running_var,
        momentum=defaults["bn_momentum"] if native["bn_momentum"] else layer.momentum,
        epsilon=defaults["bn_eps"] if native["bn_eps"] else layer.eps,
        **keys,
    )


LAYERS = {"layer_norm": layer_norm, "batch_norm": batch_norm}
VARIABLES = {
    "layer_norm": lambda native: {"scale": native.gamma, "offset": native.beta},
    "batch_norm": lambda native: {
        "scale": native.gamma,
        "offset": native.beta,
        "mean": native.moving_mean,
        "var": native.moving_variance,
    },
}
