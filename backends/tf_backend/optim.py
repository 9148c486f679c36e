"""Keras optimizers and regularizers, translated from common.regularization and common.optim (DESIGN §5).

Native mechanisms, one per slot of `Regularization` (the conversions are decided there, not here):
- coupled c and L1 → `keras.regularizers.L1L2(l1=f_t, l2=c/2)` on each regularized tensor. Keras L2(f) adds f·Σw²
  (gradient 2f·w), hence `Regularization.keras_l2_factor` = c/2; L1(f) adds f·Σ|w| with TF's |x|′(0) = 0 = sign(0).
- decoupled d → the optimizer's own `weight_decay=d` (Keras applies w ← w − lr·d·w to the pre-step weights, i.e.
  decoupled, and to every variable), with the unregularized tensors (biases unless `regularize_bias`) removed by
  `exclude_from_weight_decay(var_list=…)`.
- sgd → `keras.optimizers.SGD(momentum, nesterov)`: Keras keeps m = μ·m − lr·g, equal to torch's b at constant lr.
- adam / adamw → `keras.optimizers.Adam` / `AdamW`. Keras places ε in the "ε-hat" form m/(√v + ε̂); it matches
  torch/optax only with the step-dependent ε̂_t = `common.optim.keras_epsilon_hat(ε, β2, t)`. The optimizer's
  `epsilon` is therefore a non-trainable Keras variable that `before_step(t)` assigns before each update; the
  update math is Keras's own, unchanged (Adam.update_step reads `self.epsilon` at every step).
"""

from __future__ import annotations

import keras

from common.optim import keras_epsilon_hat
from common.regularization import Regularization


def layer_regularizer(reg: Regularization, name: str, size: int) -> keras.regularizers.L1L2 | None:
    """The Keras regularizer of canonical tensor `name` (`size` entries), or None when it is not penalized."""
    l1, l2 = reg.l1_coefficient(name, size), reg.keras_l2_factor(name)
    return keras.regularizers.L1L2(l1=l1, l2=l2) if (l1 or l2) else None


class KerasOptimizer:
    """A Keras optimizer built for the spec and the model's variables, plus the per-step ε̂ hook.

    Build under the spec's floatx: the Keras learning-rate variable takes `keras.config.floatx()`, and a float32
    copy of lr (0.01 → 0.0099999998) would already break the float64 tolerance.
    """

    def __init__(self, spec: dict, reg: Regularization, variables: dict[str, keras.Variable], dtype: str):
        o = spec["optimizer"]
        decay = reg.decoupled
        self.eps, self.beta2, self.epsilon_hat = o["eps"], o["beta2"], None
        if o["name"] == "sgd":
            self.optimizer = keras.optimizers.SGD(learning_rate=o["lr"], momentum=o["momentum"],
                                                  nesterov=o["nesterov"], weight_decay=decay or None)
        else:
            self.epsilon_hat = keras.Variable(keras_epsilon_hat(self.eps, self.beta2, 1), dtype=dtype,
                                              trainable=False, name="epsilon_hat")
            kind = keras.optimizers.AdamW if o["name"] == "adamw" else keras.optimizers.Adam
            self.optimizer = kind(learning_rate=o["lr"], beta_1=o["beta1"], beta_2=o["beta2"],
                                  epsilon=self.epsilon_hat,
                                  weight_decay=decay if o["name"] == "adamw" else (decay or None))
        if self.optimizer.weight_decay is not None:
            self.optimizer.exclude_from_weight_decay(
                var_list=[v for name, v in variables.items() if not reg.applies(name)])
        self.optimizer.build(list(variables.values()))

    def before_step(self, step: int) -> None:
        """Set ε̂_t for global step t (1-based), which must be the optimizer's own next iteration."""
        if self.epsilon_hat is None:
            return
        if int(self.optimizer.iterations.numpy()) + 1 != step:
            raise RuntimeError(f"Keras optimizer is at iteration {int(self.optimizer.iterations.numpy())}, "
                               f"the driver at step {step}: ε̂ would be set for the wrong step")
        self.epsilon_hat.assign(keras_epsilon_hat(self.eps, self.beta2, step))
