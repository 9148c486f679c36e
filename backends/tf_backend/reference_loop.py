"""The TF references (common.benchtarget.EpochRunner): the fastest minimal loops TF offers for the spec.

No Keras and no tf.data. The parameters and optimizer slots are plain `tf.Variable`s, the training split is a
tensor on the device, and one `tf.function` runs a whole epoch, in two variants (REFERENCES):
  graph  the TF graph executor (`tf.function`, TF's default for a custom loop);
  xla    one XLA program (`tf.function(jit_compile=True)`).
  order  = the plan's (common.benchtarget): epoch e's `BatchPlan.slots(e)` drawn on the host (e counting this
           runner's epochs from 0), a ragged "keep" batch completed by weight-0 filler rows (`np.resize` of the
           epoch's ids, as "pad" does), sent as one [S, B] ids tensor and its weights;
  loop   = `tf.while_loop` over the S steps: `tf.gather` the rows, forward, `tf.GradientTape` backward, and the
           optimizer update written as TF ops; the loss Σ w·ℓ / Σ w (filler rows count for nothing, so a padded
           "keep" batch has the ragged batch's mean loss), returned per step.
It trains the spec's layer stack (KINDS, common.layers) from the canonical init with the spec's batch size, lr,
optimizer (SGD with momentum / Nesterov, or Adam / AdamW in the torch/optax ε placement, common.optim) and L1 / L2 /
coupled and decoupled decay per tensor (common.regularization), so without dropout its per-step losses are the
eager mode's exact-mode losses (common.tolerance); dropout draws TF's own stateless masks (stream
common.rng.TF_REFERENCE_DROPOUT), which no adapter shares.

The layers as TF ops on canonical NHWC (formulas in common.layers.image and common.layers.norm):
  dense, conv2d   `h @ W + b` and `tf.nn.conv2d` (kernel (k, k, C, filters) as is) on the input zero-padded by
                  `tf.pad` with the resolved `layer.pads`, padding "VALID"; no `+ b` when `layer.bias` is False
                  (the canonical init then has no `.bias`);
  max_pool        `tf.nn.max_pool2d` "VALID" on the input padded with −∞ (a pad never wins);
  avg_pool        `tf.nn.avg_pool2d` "VALID" on the zero-padded input (÷ k²) times k²/(real pixels of the window),
                  a constant: the canonical divisor is the real pixels;
  global_avg_pool `reduce_mean` over H, W;  flatten  `reshape` (B, H·W·C), NHWC order;
  dropout         a stateless mask of the activation's shape (features or images), scaled by 1/(1 − rate);
  batch_norm      mean and biased variance over every axis but the channel's, over the real rows (w > 0) only,
                  normalised with the biased σ²_b, γ, β trained; the running mean and variance are non-trainable
                  `tf.Variable`s assigned in the step in the decay convention, mean ← m·mean + (1 − m)·μ,
                  var ← m·var + (1 − m)·f·σ²_b, f = common.layers.norm.running_var_factor("biased",
                  layer.running_var, n), n the real values per channel. They are state (`common.layers.is_state`):
                  no gradient, no optimizer slots, no penalty.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from backends.tf_backend.bench import tf_device
from common import rng
from common.batching import BatchPlan
from common.benchtarget import HAND_FUSED_KINDS
from common.driver import canonical_init, model_layers
from common.dropout import keep_scale
from common.layers import is_state
from common.layers.norm import running_var_factor
from common.regularization import Regularization
from common.spec import Spec

KINDS = HAND_FUSED_KINDS
REFERENCES = ("graph", "xla")
ACTIVATIONS = {"relu": tf.nn.relu, "tanh": tf.tanh, "none": tf.identity}


def _real_in_window(n: int, before: int, k: int, s: int, out: int) -> np.ndarray:
    """For each of `out` windows along one axis of a size-n input padded by `before`: its real (unpadded) pixels."""
    start = np.arange(out) * s - before
    return np.minimum(start + k, n) - np.maximum(start, 0)


def avg_pool_scale(layer) -> np.ndarray:
    """(H', W', 1): k² / (real pixels of each window), turning a zero-padded ÷k² average into the canonical one."""
    (h, w, _), (oh, ow, _) = layer.in_shape, layer.shape
    top, _, left, _ = layer.pads
    rows = _real_in_window(h, top, layer.kernel, layer.stride, oh)
    cols = _real_in_window(w, left, layer.kernel, layer.stride, ow)
    return (layer.kernel**2 / np.outer(rows, cols))[:, :, None]


def _pad(h, layer, value=0.0):
    top, bottom, left, right = layer.pads
    if not any(layer.pads):
        return h
    return tf.pad(h, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=value)


class Reference:
    def __init__(self, spec: Spec, data, device: str, variant: str):
        if variant not in REFERENCES:
            raise ValueError(f"tf has no reference '{variant}' (references: {', '.join(REFERENCES)})")
        self.spec, self.data, self.variant, self.device_name = spec, data, variant, device
        self.device = tf_device(device, f"reference {variant}")
        self.plan = BatchPlan.from_spec(spec, data.train_x.shape[0])
        self.dtype = tf.as_dtype(spec.dtype)
        self.reg = Regularization.from_spec(spec)
        o = spec.optimizer
        self.adam = o.name != "sgd"
        self.layers = model_layers(spec, data)
        unsupported = sorted({layer.kind for layer in self.layers} - set(KINDS))
        if unsupported:
            raise ValueError(f"the tf reference loop runs {', '.join(KINDS)} layers, not {', '.join(unsupported)}")
        init = canonical_init(spec, data)
        self.names = [n for n in init if not is_state(n)]  # the trained parameters
        self.state_names = [n for n in init if is_state(n)]  # batch_norm's running statistics
        self.avg_scales = {}
        with tf.device(self.device):
            self.x = tf.constant(data.train_x.astype(spec.dtype))
            self.y = tf.constant(data.train_y.astype(np.int64))
            self.params = [tf.Variable(init[n], name=n) for n in self.names]
            self.state = {n: tf.Variable(init[n], trainable=False, name=n) for n in self.state_names}
            slots = 2 if self.adam else (1 if o.momentum else 0)
            self.slots = [[tf.Variable(np.zeros_like(init[n])) for n in self.names] for _ in range(slots)]
            self.t = tf.Variable(0, dtype=tf.int64)
            for layer in self.layers:
                if layer.kind == "avg_pool":
                    self.avg_scales[layer.index] = tf.constant(avg_pool_scale(layer).astype(spec.dtype))
        self.program = tf.function(self._epoch, jit_compile=variant == "xla", autograph=False)
        self._epochs = 0

    def variables(self) -> dict[str, tf.Variable]:
        """Every canonical tensor by name: the trained parameters and the batch_norm state."""
        return {**dict(zip(self.names, self.params, strict=True)), **self.state}

    def _batch_norm(self, h, layer, params, real):
        """Training-mode batch_norm over every axis but the last, its statistics over the rows whose `real` (B,)
        weight is 1 (filler rows 0). Assigns the running statistics."""
        axes = list(range(len(h.shape) - 1))
        per_row = int(np.prod(h.shape[1:-1], dtype=np.int64))  # H·W on images, 1 on features
        mask = tf.reshape(real, (-1,) + (1,) * (len(h.shape) - 1))
        n = tf.reduce_sum(real) * per_row
        mean = tf.reduce_sum(h * mask, axes) / n
        var = tf.reduce_sum(tf.square(h - mean) * mask, axes) / n
        m = layer.momentum
        running_mean, running_var = self.state[layer.param("mean")], self.state[layer.param("var")]
        factor = running_var_factor("biased", layer.running_var, n)
        running_mean.assign(m * running_mean + (1 - m) * tf.stop_gradient(mean))
        running_var.assign(m * running_var + (1 - m) * factor * tf.stop_gradient(var))
        scale, offset = params[layer.param("scale")], params[layer.param("offset")]
        return (h - mean) * (tf.math.rsqrt(var + layer.eps) * scale) + offset

    def _forward(self, x, t, real):
        params = dict(zip(self.names, self.params, strict=True))
        h = x
        for layer in self.layers:
            if layer.kind == "dense":
                h = h @ params[layer.param("weight")]
                if layer.bias:
                    h = h + params[layer.param("bias")]
                h = ACTIVATIONS[layer.activation](h)
            elif layer.kind == "conv2d":
                s = layer.stride
                h = tf.nn.conv2d(_pad(h, layer), params[layer.param("weight")], (1, s, s, 1), "VALID")
                if layer.bias:
                    h = h + params[layer.param("bias")]
                h = ACTIVATIONS[layer.activation](h)
            elif layer.kind == "max_pool":
                h = tf.nn.max_pool2d(_pad(h, layer, -np.inf), layer.kernel, layer.stride, "VALID")
            elif layer.kind == "avg_pool":
                h = tf.nn.avg_pool2d(_pad(h, layer), layer.kernel, layer.stride, "VALID")
                if any(layer.pads):
                    h = h * self.avg_scales[layer.index]
            elif layer.kind == "global_avg_pool":
                h = tf.reduce_mean(h, axis=(1, 2))
            elif layer.kind == "flatten":
                h = tf.reshape(h, (-1, int(np.prod(layer.in_shape))))
            elif layer.kind == "batch_norm":
                h = self._batch_norm(h, layer, params, real)
            elif layer.kind in ACTIVATIONS:
                h = ACTIVATIONS[layer.kind](h)
            elif layer.rate:  # dropout
                seed = tf.stack(
                    [tf.constant(self.spec.seed * 8 + rng.TF_REFERENCE_DROPOUT * 4 + layer.number, tf.int64), t]
                )
                keep = tf.random.stateless_uniform(tf.shape(h), seed, dtype=self.dtype) >= layer.rate
                h = h * tf.cast(keep, self.dtype) * keep_scale(layer.rate)
        return h

    def _penalty(self):
        total = tf.constant(0.0, self.dtype)
        for name, p in zip(self.names, self.params, strict=True):
            f1 = self.reg.l1_coefficient(name, int(np.prod(p.shape)))
            c = self.reg.coupled if self.reg.applies(name) else 0.0
            if f1:
                total += f1 * tf.reduce_sum(tf.abs(p))
            if c:
                total += 0.5 * c * tf.reduce_sum(tf.square(p))
        return total

    def _update(self, grads, t):
        o = self.spec.optimizer
        lr = o.lr
        step = tf.cast(t, self.dtype)
        for k, (name, p, g) in enumerate(zip(self.names, self.params, grads, strict=True)):
            d = self.reg.decoupled if self.reg.applies(name) else 0.0
            if self.adam:
                m, v = self.slots[0][k], self.slots[1][k]
                m.assign(o.beta1 * m + (1 - o.beta1) * g)
                v.assign(o.beta2 * v + (1 - o.beta2) * g * g)
                m_hat = m / (1 - o.beta1**step)
                v_hat = v / (1 - o.beta2**step)
                u = m_hat / (tf.sqrt(v_hat) + o.eps)
            elif self.slots:
                b = self.slots[0][k]
                b.assign(o.momentum * b + g)
                u = g + o.momentum * b if o.nesterov else b
            else:
                u = g
            p.assign(p - lr * u - lr * d * p if d else p - lr * u)

    def _step(self, ids, w):
        """One step on rows `ids` with loss weights `w` (1 real, 0 filler)."""
        t = self.t.assign_add(1)
        real = tf.cast(w > 0, self.dtype)
        with tf.GradientTape() as tape:
            logits = self._forward(tf.gather(self.x, ids), t, real)
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.gather(self.y, ids), logits)
            ce = tf.reduce_sum(w * ce) / tf.reduce_sum(w)
            total = ce + self._penalty()
        self._update(tape.gradient(total, self.params), t)
        return ce

    def _epoch(self, ids, w):
        steps = ids.shape[0]

        def loop(i, losses):
            return i + 1, losses.write(i, self._step(ids[i], w[i]))

        _, losses = tf.while_loop(
            lambda i, _: i < steps, loop, (tf.constant(0), tf.TensorArray(self.dtype, size=steps))
        )
        return losses.stack()

    def order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch `epoch`'s [S, B] ids and weights: the plan's slots, a ragged last batch completed by weight-0
        filler rows (the module docstring)."""
        ids, weights = self.plan.slots(epoch)
        filler = np.resize(ids, -ids.shape[0] % self.plan.batch_size)
        ids = np.concatenate([ids, filler]).reshape(-1, self.plan.batch_size)
        weights = np.concatenate([weights, np.zeros(filler.shape[0])]).astype(self.spec.dtype)
        return ids, weights.reshape(ids.shape)

    def epoch(self):
        ids, weights = self.order(self._epochs)
        self._epochs += 1
        with tf.device(self.device):
            return self.program(tf.constant(ids), tf.constant(weights))

    def sync(self, result) -> None:
        result.numpy()

    def equivalence_losses(self, epochs: int) -> list[float]:
        fresh = Reference(self.spec, self.data, self.device_name, self.variant)
        return [float(v) for _ in range(epochs) for v in fresh.epoch().numpy()]


def make_reference(spec: Spec, data, device: str, variant: str) -> Reference:
    return Reference(spec, data, device, variant)
