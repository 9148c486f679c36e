"""Keras optimizers, regularizers, clipping and learning-rate schedules from common.regularization, common.optim,
common.clipping and common.schedules (docs/design.md, "Regularisation", "Optimisers").

- coupled c and L1 → `keras.regularizers.L1L2(l1=f_t, l2=c/2)` on each regularized tensor: Keras L2(f) adds f·Σw²,
  gradient 2f·w, so f = c/2 (`keras_l2_factor`); L1(f) adds f·Σ|w| with TF's |x|′(0) = 0 = sign(0).
- decoupled d → the optimizer's `weight_decay=d` (w ← w − lr(t)·d·w on the pre-step weights, every variable), the
  unregularized tensors removed with `exclude_from_weight_decay(var_list=…)`.
- sgd → `SGD(momentum, nesterov)`; with momentum, `TorchMomentumSGD`, Keras's SGD with torch's buffer
  b ← μ·b + g, w ← w − lr_t·b (Keras keeps m = μ·m − lr_t·g: equal only at constant lr). adam / adamw → `Adam` /
  `AdamW`, whose ε sits in the ε-hat form m/(√v + ε̂): ε̂_t = common.optim.keras_epsilon_hat(ε, β2, t), held in a
  Keras variable that `before_step(t)` (or the fused program) assigns before each update.
- clipping (common.clipping) → `global_clipnorm=c` (global) / `clipnorm=c` (per_tensor, Keras clips each variable):
  Keras clips the gradient it is handed (the regularizer penalties are in the loss, so it is the regularized g)
  before its decoupled decay. Under tf.distribute Keras clips each replica's gradient before its all-reduce:
  `ReducedClip` all-reduces first (idiom `keras_clip_per_replica` off).
- schedules (common.schedules) → the optimizer's `learning_rate` is a Keras LearningRateSchedule called with
  `iterations`, the optimizer steps already taken (one `apply_gradients` per optimizer step; Keras's own
  gradient_accumulation_steps, which would count micro-steps, is not used): `ExponentialDecay(staircase=True)` for
  step, `CosineDecay(alpha = final/lr)` for cosine, with `warmup_target = lr, warmup_steps = W` from 0 for
  warmup_cosine. Every mode reads it inside the traced step (the fused epoch program too).
- float64 runs hand momentum, β1, β2, d, the L1L2 factors, the clip norm and the schedules' values to Keras as numpy
  float64 scalars (`hyper`): Keras casts Python floats through a float32 tensor on TF (common.traps).
Idioms (common.idioms, `on(spec, id)`): `l2_as_written` L2(λ) with λ = l2 + coupled wd; `keras_l1_sum` L1(l1) in
the sum form; `bias_decay` no exclusion from weight_decay; `keras_adam_eps` Keras's constant ε = 1e-7;
`float32_hyper` Python floats; `keras_clipnorm_per_variable` `clipnorm` for global clipping;
`keras_clip_per_replica` Keras's own clip of each replica's gradient; `keras_sgd_momentum` Keras's own SGD momentum.
The optimizer gets the trainable variables only: the batch_norm moving statistics
(common.layers.is_state) are left out of its slots and of weight decay, and `common.layers.regularized` gives them
no regularizer.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from common.idioms import on
from common.layers import Layer, is_state, param_shapes
from common.native import KERAS_DEFAULT_ADAM_EPSILON, l2_as_written
from common.optim import keras_epsilon_hat
from common.regularization import Regularization
from common.spec import Spec


def hyper(value: float, dtype: str) -> float:
    """A hyperparameter as Keras must receive it to keep the run's precision (see the module docstring)."""
    return np.float64(value) if dtype == "float64" else float(value)


def scalar(spec: Spec, value: float) -> float:
    """`hyper`, or with the idiom `float32_hyper` on the Python float a port writes."""
    return float(value) if on(spec, "float32_hyper") else hyper(value, spec.dtype)


def keras_l2_factor(reg: Regularization, name: str) -> float:
    """The Keras `L2(f)` factor of tensor `name`: f = c/2, since Keras L2(f) has gradient 2f·w (c = 2·l2 + coupled
    weight decay, common.regularization)."""
    return reg.coupled / 2.0 if reg.applies(name) else 0.0


def layer_regularizer(spec: Spec, reg: Regularization, name: str, size: int) -> keras.regularizers.L1L2 | None:
    """The Keras regularizer of canonical tensor `name` (`size` entries), or None when it is not penalized: the
    converted factors, or as written with `keras_l1_sum` (L1(l1)) and `l2_as_written` (L2(l2 + coupled wd))."""
    if not reg.applies(name):
        return None
    l1 = spec.regularization.l1 if on(spec, "keras_l1_sum") else reg.l1_coefficient(name, size)
    l2 = l2_as_written(spec) if on(spec, "l2_as_written") else keras_l2_factor(reg, name)
    if not (l1 or l2):
        return None
    regularizer = keras.regularizers.L1L2(l1=l1, l2=l2)
    # L1L2.__init__ validates and stores float(l1), float(l2); put the precision-keeping scalars back.
    regularizer.l1, regularizer.l2 = scalar(spec, l1), scalar(spec, l2)
    return regularizer


def regularizers(spec: Spec, layers: tuple[Layer, ...]) -> dict[str, keras.regularizers.L1L2 | None]:
    """Canonical parameter name → its Keras regularizer (`layer_regularizer`)."""
    reg = Regularization.from_spec(spec)
    return {
        name: layer_regularizer(spec, reg, name, int(np.prod(shape))) for name, shape in param_shapes(layers).items()
    }


def learning_rate(spec: Spec):
    """The optimizer's `learning_rate`: lr, or the Keras schedule of common.schedules' kind (module docstring)."""
    lr, s = spec.optimizer.lr, spec.schedule
    schedules = keras.optimizers.schedules
    if s.kind == "constant":
        return lr
    if s.kind == "step":
        return schedules.ExponentialDecay(scalar(spec, lr), s.step_size, scalar(spec, s.gamma), staircase=True)
    alpha = scalar(spec, s.final_lr / lr)
    if s.kind == "cosine":
        return schedules.CosineDecay(scalar(spec, lr), s.decay_steps, alpha=alpha)
    return schedules.CosineDecay(
        scalar(spec, 0.0), s.decay_steps, alpha=alpha, warmup_target=scalar(spec, lr), warmup_steps=s.warmup_steps
    )


def clipping(spec: Spec) -> dict:
    """The Keras clip argument: `global_clipnorm=c` or `clipnorm=c` (per variable: per_tensor, or global clipping
    written as `clipnorm` with the idiom `keras_clipnorm_per_variable`); none when clip_norm = 0."""
    o = spec.optimizer
    if not o.clip_norm:
        return {}
    per_variable = o.clip == "per_tensor" or on(spec, "keras_clipnorm_per_variable")
    return {"clipnorm" if per_variable else "global_clipnorm": scalar(spec, o.clip_norm)}


class TorchMomentumSGD(keras.optimizers.SGD):
    """Keras SGD with torch's momentum buffer (common.optim): b ← μ·b + g (b₁ = g from b₀ = 0), w ← w − lr_t·b,
    nesterov w ← w − lr_t·(g + μ·b). Keras's m = μ·m − lr_t·g equals −lr_t·b only at constant lr (trap
    sgd_momentum_schedule). Keras's own clipping and decoupled `_apply_weight_decay` run before it unchanged."""

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0:
            return super().update_step(gradient, variable, learning_rate)
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        mu = ops.cast(self.momentum, variable.dtype)
        b = self.momentums[self._get_variable_index(variable)]
        self.assign(b, ops.add(ops.multiply(b, mu), g))
        step = ops.add(g, ops.multiply(b, mu)) if self.nesterov else b
        self.assign_sub(variable, ops.multiply(step, lr))


class ReducedClip:
    """Mixin for a Keras optimizer under tf.distribute with R > 1 replicas: Keras clips in the replica context,
    each replica's own gradient, before `_all_reduce_sum_gradients`; this all-reduces (SUM, the same collective)
    before the clip, so the clip sees the step's gradient, and skips Keras's later all-reduce."""

    def _split(self) -> bool:
        return self._distribution_strategy.num_replicas_in_sync > 1 and tf.distribute.get_replica_context() is not None

    def _clip_gradients(self, grads):
        if self._split():
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, list(grads))
        return super()._clip_gradients(grads)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars) if self._split() else super()._all_reduce_sum_gradients(grads_and_vars)


def _keras_optimizer(spec: Spec, epsilon, decay, reduced_clip: bool):
    """The Keras optimizer named by the spec, with `weight_decay=decay` (None: off), its learning rate or schedule
    and its clip argument; `reduced_clip`: the `ReducedClip` variant."""
    o, s = spec.optimizer, lambda value: scalar(spec, value)
    common = {"learning_rate": learning_rate(spec), **clipping(spec)}
    if o.name == "sgd":
        kind = keras.optimizers.SGD if on(spec, "keras_sgd_momentum") or not o.momentum else TorchMomentumSGD
        kwargs = {"momentum": s(o.momentum), "nesterov": o.nesterov, "weight_decay": decay}
    else:
        kind = keras.optimizers.Adam if o.name == "adam" else keras.optimizers.AdamW
        kwargs = {"beta_1": s(o.beta1), "beta_2": s(o.beta2), "epsilon": epsilon}
        kwargs["weight_decay"] = 0.0 if decay is None and o.name == "adamw" else decay  # AdamW rejects None
    if reduced_clip:
        kind = type(f"Reduced{kind.__name__}", (ReducedClip, kind), {})
    return kind(**common, **kwargs)


def trainable(variables: dict[str, keras.Variable]) -> dict[str, keras.Variable]:
    """The trained variables of a canonical name → Keras variable dict: the state (common.layers.is_state) left out."""
    return {name: var for name, var in variables.items() if not is_state(name)}


class KerasOptimizer:
    """A Keras optimizer built for the spec and the model's variables, plus the per-step ε̂ hook.

    Build under the spec's floatx: the Keras learning-rate variable takes `keras.config.floatx()`, and a float32
    copy of lr (0.01 → 0.0099999998) would already break the float64 tolerance.
    """

    def __init__(self, spec: Spec, variables: dict[str, keras.Variable]):
        reg, o = Regularization.from_spec(spec), spec.optimizer
        self.epsilon_hat, self.eps, self.beta2 = None, o.eps, o.beta2
        self.scheduled = spec.schedule.kind != "constant"
        epsilon = KERAS_DEFAULT_ADAM_EPSILON
        if o.name != "sgd" and not on(spec, "keras_adam_eps"):
            epsilon = self.epsilon_hat = keras.Variable(
                keras_epsilon_hat(o.eps, o.beta2, 1), dtype=spec.dtype, trainable=False, name="epsilon_hat"
            )
        decay = scalar(spec, reg.decoupled) if reg.decoupled else None
        reduced_clip = bool(o.clip_norm) and not on(spec, "keras_clip_per_replica")
        self.optimizer = optimizer = _keras_optimizer(spec, epsilon, decay, reduced_clip)
        if optimizer.weight_decay is not None and not on(spec, "bias_decay"):
            optimizer.exclude_from_weight_decay(
                var_list=[v for name, v in trainable(variables).items() if not reg.applies(name)]
            )
        optimizer.build(list(trainable(variables).values()))

    def check_next_step(self, step: int) -> None:
        """Raise unless global step `step` (1-based) is the optimizer's own next iteration (ε̂ and the schedule's t
        must match it); one host read of the iteration counter, so callers check once per epoch."""
        if (self.epsilon_hat is not None or self.scheduled) and int(self.optimizer.iterations.numpy()) + 1 != step:
            raise RuntimeError(
                f"Keras optimizer is at iteration {int(self.optimizer.iterations.numpy())}, "
                f"the driver at step {step}: ε̂ and lr(t) would be taken for the wrong step"
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
