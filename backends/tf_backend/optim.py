"""Keras optimizers and regularizers from common.regularization and common.optim (docs/design.md,
"Regularisation", "Optimisers").

- coupled c and L1 → `keras.regularizers.L1L2(l1=f_t, l2=c/2)` on each regularized tensor: Keras L2(f) adds f·Σw²,
  gradient 2f·w, so f = c/2 (`keras_l2_factor`); L1(f) adds f·Σ|w| with TF's |x|′(0) = 0 = sign(0).
- decoupled d → the optimizer's `weight_decay=d` (w ← w − lr·d·w on the pre-step weights, every variable), the
  unregularized tensors removed with `exclude_from_weight_decay(var_list=…)`.
- sgd → `SGD(momentum, nesterov)` (m = μ·m − lr·g, torch's b at constant lr); adam / adamw → `Adam` / `AdamW`,
  whose ε sits in the ε-hat form m/(√v + ε̂): ε̂_t = common.optim.keras_epsilon_hat(ε, β2, t), held in a Keras
  variable that `before_step(t)` (or the fused program) assigns before each update.
- float64 runs hand momentum, β1, β2, d and the L1L2 factors to Keras as numpy float64 scalars (`hyper`): Keras
  casts Python floats through a float32 tensor on TF (common.traps).
Native mode converts nothing: `native_regularizer` and `KerasOptimizer.native` follow common.native.
The optimizer gets the trainable variables only: the batch_norm moving statistics (common.layers.is_state) are
left out of its slots and of weight decay, and `common.layers.regularized` gives them no regularizer.
"""

from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np

from common.layers import Layer, is_state, param_shapes
from common.native import KERAS_DEFAULT_ADAM_EPSILON, l2_as_written
from common.optim import keras_epsilon_hat
from common.regularization import Regularization
from common.spec import Spec


def hyper(value: float, dtype: str) -> float:
    """A hyperparameter as Keras must receive it to keep the run's precision (see the module docstring)."""
    return np.float64(value) if dtype == "float64" else float(value)


def keras_l2_factor(reg: Regularization, name: str) -> float:
    """The Keras `L2(f)` factor of tensor `name`: f = c/2, since Keras L2(f) has gradient 2f·w (c = 2·l2 + coupled
    weight decay, common.regularization)."""
    return reg.coupled / 2.0 if reg.applies(name) else 0.0


def layer_regularizer(reg: Regularization, name: str, size: int, dtype: str) -> keras.regularizers.L1L2 | None:
    """The Keras regularizer of canonical tensor `name` (`size` entries), or None when it is not penalized."""
    l1, l2 = reg.l1_coefficient(name, size), keras_l2_factor(reg, name)
    if not (l1 or l2):
        return None
    regularizer = keras.regularizers.L1L2(l1=l1, l2=l2)
    # L1L2.__init__ validates and stores float(l1), float(l2); put the precision-keeping scalars back.
    regularizer.l1, regularizer.l2 = hyper(l1, dtype), hyper(l2, dtype)
    return regularizer


def native_regularizer(spec: Spec, reg: Regularization, name: str) -> keras.regularizers.L1L2 | None:
    """Native mode (common.native): the spec's numbers passed to Keras "as written": L1(l1) in its sum form and
    L2(λ), λ = l2 + coupled weight_decay (gradient 2λ·w), on weights and, with regularize_bias, biases."""
    l1, l2 = spec.regularization.l1, l2_as_written(spec)
    return keras.regularizers.L1L2(l1=l1, l2=l2) if reg.applies(name) and (l1 or l2) else None


def regularizers(spec: Spec, layers: tuple[Layer, ...]) -> dict[str, keras.regularizers.L1L2 | None]:
    """Canonical parameter name → its Keras regularizer (converted in exact mode, as written in native mode)."""
    reg = Regularization.from_spec(spec)
    if spec.mode == "native":
        return {name: native_regularizer(spec, reg, name) for name in param_shapes(layers)}
    return {
        name: layer_regularizer(reg, name, int(np.prod(shape)), spec.dtype)
        for name, shape in param_shapes(layers).items()
    }


def _keras_optimizer(o, epsilon, decay):
    """The Keras optimizer named by the spec's `optimizer` table `o`, with `weight_decay=decay` (None: off)."""
    if o.name == "sgd":
        return keras.optimizers.SGD(learning_rate=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=decay)
    if o.name == "adam":
        return keras.optimizers.Adam(
            learning_rate=o.lr, beta_1=o.beta1, beta_2=o.beta2, epsilon=epsilon, weight_decay=decay
        )
    return keras.optimizers.AdamW(
        learning_rate=o.lr,
        beta_1=o.beta1,
        beta_2=o.beta2,
        epsilon=epsilon,
        weight_decay=0.0 if decay is None else decay,
    )  # AdamW rejects None


def trainable(variables: dict[str, keras.Variable]) -> dict[str, keras.Variable]:
    """The trained variables of a canonical name → Keras variable dict: the state (common.layers.is_state) left out."""
    return {name: var for name, var in variables.items() if not is_state(name)}


class KerasOptimizer:
    """A Keras optimizer built for the spec and the model's variables, plus the per-step ε̂ hook (exact mode).

    Build under the spec's floatx: the Keras learning-rate variable takes `keras.config.floatx()`, and a float32
    copy of lr (0.01 → 0.0099999998) would already break the float64 tolerance.
    """

    def __init__(self, optimizer, variables: dict[str, keras.Variable], epsilon_hat=None, eps=0.0, beta2=0.0):
        self.optimizer, self.epsilon_hat, self.eps, self.beta2 = optimizer, epsilon_hat, eps, beta2
        optimizer.build(list(trainable(variables).values()))

    @classmethod
    def exact(cls, spec: Spec, variables: dict[str, keras.Variable]):
        """Converted: ε̂_t per step, decoupled d with unregularized tensors excluded, precision-keeping scalars."""
        reg, dtype, raw = Regularization.from_spec(spec), spec.dtype, spec.optimizer
        o = replace(raw, **{k: hyper(getattr(raw, k), dtype) for k in ("momentum", "beta1", "beta2")})
        epsilon_hat = None
        if o.name != "sgd":
            epsilon_hat = keras.Variable(
                keras_epsilon_hat(raw.eps, raw.beta2, 1), dtype=dtype, trainable=False, name="epsilon_hat"
            )
        optimizer = _keras_optimizer(o, epsilon_hat, hyper(reg.decoupled, dtype) if reg.decoupled else None)
        if optimizer.weight_decay is not None:
            optimizer.exclude_from_weight_decay(
                var_list=[v for name, v in trainable(variables).items() if not reg.applies(name)]
            )
        return cls(optimizer, variables, epsilon_hat, raw.eps, raw.beta2)

    @classmethod
    def native(cls, spec: Spec, variables: dict[str, keras.Variable]):
        """Native mode (common.native): Keras's default ε (1e-7, ε-hat form, constant) and a decoupled
        `weight_decay` that decays every variable, biases included."""
        r = spec.regularization
        decay = r.weight_decay if r.decay == "decoupled" and r.weight_decay else None
        return cls(_keras_optimizer(spec.optimizer, KERAS_DEFAULT_ADAM_EPSILON, decay), variables)

    def check_next_step(self, step: int) -> None:
        """Raise unless global step `step` (1-based) is the optimizer's own next iteration (ε̂ must match it); one
        host read of the iteration counter, so callers check once per epoch."""
        if self.epsilon_hat is not None and int(self.optimizer.iterations.numpy()) + 1 != step:
            raise RuntimeError(
                f"Keras optimizer is at iteration {int(self.optimizer.iterations.numpy())}, "
                f"the driver at step {step}: ε̂ would be set for the wrong step"
            )

    def epsilon_table(self, first_step: int, count: int) -> np.ndarray | None:
        """ε̂_t for the global steps first_step … first_step + count − 1 (None without ε̂), for a fused loop."""
        if self.epsilon_hat is None:
            return None
        return np.array(
            [keras_epsilon_hat(self.eps, self.beta2, first_step + k) for k in range(count)],
            dtype=self.epsilon_hat.dtype,
        )

    def before_step(self, step: int) -> None:
        """Set ε̂_t for global step t (1-based); no host sync (the epoch checked the iteration counter)."""
        if self.epsilon_hat is not None:
            self.epsilon_hat.assign(keras_epsilon_hat(self.eps, self.beta2, step))
