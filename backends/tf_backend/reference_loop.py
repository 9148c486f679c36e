"""The hand-fused TF reference (common.benchtarget.EpochRunner): the fastest minimal loop TF offers for the spec.

No Keras and no tf.data. The parameters and optimizer slots are plain `tf.Variable`s, the training split is a
tensor on the device, and one `tf.function(jit_compile=True)` (one XLA program) runs a whole epoch:
  order  = argsort(`tf.random.stateless_uniform`) keyed by (seed, epoch), on the device (identity without shuffle);
  loop   = `tf.while_loop` over the full batches: `tf.gather` the rows, forward, `tf.GradientTape` backward, and the
           optimizer update written as TF ops;
  last   = "keep": the ragged last batch as one step after the loop; "pad": a full batch with weight-0 filler;
           "drop": nothing.
It trains the spec's layer stack of core kinds (dense, dropout, relu, tanh; common.layers) from the canonical init
with the spec's batch size, lr, optimizer (SGD with momentum / Nesterov, or Adam / AdamW in the torch/optax ε
placement, common.optim) and L1 / L2 / coupled and decoupled decay per tensor (common.regularization), with TF's own
stateless RNG for order and dropout masks (streams common.rng.TF_REFERENCE_*): not bit-equivalent to the adapter,
and not meant to be.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from backends.tf_backend.bench import tf_device
from common import rng
from common.driver import canonical_init, model_layers
from common.dropout import keep_scale
from common.regularization import Regularization
from common.spec import Spec

KINDS = ("dense", "dropout", "relu", "tanh")
ACTIVATIONS = {"relu": tf.nn.relu, "tanh": tf.tanh, "none": tf.identity}


class Reference:
    def __init__(self, spec: Spec, data, device: str):
        self.spec, self.device = spec, tf_device(device, "reference")
        self.dtype = tf.as_dtype(spec.dtype)
        self.reg = Regularization.from_spec(spec)
        o = spec.optimizer
        self.adam = o.name != "sgd"
        self.layers = model_layers(spec, data)
        unsupported = sorted({layer.kind for layer in self.layers} - set(KINDS))
        if unsupported:
            raise ValueError(f"the tf reference loop runs {', '.join(KINDS)} layers, not {', '.join(unsupported)}")
        init = canonical_init(spec, data)
        self.names = list(init)
        with tf.device(self.device):
            self.x = tf.constant(data.train_x.astype(spec.dtype))
            self.y = tf.constant(data.train_y.astype(np.int64))
            self.params = [tf.Variable(init[n]) for n in self.names]
            slots = 2 if self.adam else (1 if o.momentum else 0)
            self.slots = [[tf.Variable(np.zeros_like(init[n])) for n in self.names] for _ in range(slots)]
            self.t = tf.Variable(0, dtype=tf.int64)
        self.program = tf.function(self._epoch, jit_compile=True)
        self._epoch_index = 0

    def _forward(self, x, t):
        params = dict(zip(self.names, self.params, strict=True))
        h = x
        for layer in self.layers:
            if layer.kind == "dense":
                h = ACTIVATIONS[layer.activation](h @ params[layer.param("weight")] + params[layer.param("bias")])
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
        t = self.t.assign_add(1)
        with tf.GradientTape() as tape:
            logits = self._forward(tf.gather(self.x, ids), t)
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.gather(self.y, ids), logits)
            ce = tf.reduce_sum(w * ce) / tf.reduce_sum(w)
            total = ce + self._penalty()
        self._update(tape.gradient(total, self.params), t)
        return ce

    def _epoch(self, epoch):
        n, b = int(self.x.shape[0]), self.spec.batching.batch_size
        if self.spec.batching.shuffle:
            seed = tf.stack([tf.constant(self.spec.seed * 8 + rng.TF_REFERENCE_ORDER, tf.int64), epoch])
            order = tf.argsort(tf.random.stateless_uniform([n], seed))
        else:
            order = tf.range(n)
        s, r = divmod(n, b)
        ids = tf.reshape(order[: s * b], (s, b))
        ones = tf.ones((b,), self.dtype)
        loss = tf.constant(0.0, self.dtype)
        if s:
            _, loss = tf.while_loop(
                lambda i, _: i < s, lambda i, _: (i + 1, self._step(ids[i], ones)), (tf.constant(0), loss)
            )
        last = self.spec.batching.last_batch
        if r and last == "keep":
            loss = self._step(order[s * b :], tf.ones((r,), self.dtype))
        elif r and last == "pad":
            filler = tf.concat([order[s * b :], order[: b - r]], 0)
            loss = self._step(filler, tf.concat([tf.ones((r,), self.dtype), tf.zeros((b - r,), self.dtype)], 0))
        return loss

    def epoch(self):
        self._epoch_index += 1
        with tf.device(self.device):
            return self.program(tf.constant(self._epoch_index - 1, tf.int64))

    def sync(self, result) -> None:
        result.numpy()


def make_reference(spec: Spec, data, device: str) -> Reference:
    return Reference(spec, data, device)
