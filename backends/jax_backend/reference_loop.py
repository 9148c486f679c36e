"""The hand-fused JAX reference (common.benchtarget.EpochRunner): the fastest minimal loop JAX allows for the spec's
feature or image stack (KINDS), optimizer, lr and batch size, the baseline the bench's modes are
compared with (not held to equivalence; docs/design.md, "Performance methodology").

One `jax.jit`-ed program per epoch, with the params / optimizer state / PRNG key carried between epochs and
donated to it:
- order: a numpy `permutation` on the host, N int32 ids sent per epoch, drawn while the device still runs the
  previous epoch (`jax.random.permutation` sorts: 6 ms for 13k rows on CPU, longer than the epoch itself);
- batches: `lax.scan` steps that gather their rows from the split put on the device once; a short last batch is
  padded to B with weight-0 rows (one static shape, the same mean loss as "keep"); "drop" skips the remainder;
- forward: the stack's layers in order on the canonical-init params in flax's tree layout (no flax Module): dense
  as plain `jnp.dot` and conv2d as `lax.conv_general_dilated` (NHWC, "SAME" / "VALID", precision HIGHEST, as
  core.py and image.py), flax's pooling functions with their defaults, dropout `jax.random.bernoulli` inside the
  scan (its own RNG, not the shared masks), batch_norm over every row of the batch (a padded one too) with the
  layer's momentum and ε and the biased running variance, its running statistics carried by the scan;
- update: the spec's own optax chain (optim.build: the same optimizer, lr, decay and L1) over the params.
Only the epoch's order goes in and its losses come out; nothing waits on the device until `sync`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from backends.jax_backend import data as pipeline
from backends.jax_backend.bench import use_device
from backends.jax_backend.core import ACTIVATIONS
from backends.jax_backend.model import split_state, to_native
from backends.jax_backend.optim import build
from common.benchtarget import HAND_FUSED_KINDS
from common.datasets import Dataset
from common.driver import canonical_init, model_layers
from common.regularization import Regularization
from common.spec import Spec

KINDS = HAND_FUSED_KINDS
POOLS = {"max_pool": nn.max_pool, "avg_pool": nn.avg_pool}


class ReferenceLoop:
    def __init__(self, spec: Spec, data: Dataset, device: str):
        jax.config.update("jax_enable_x64", True)  # as the adapter does, so dtypes are the spec's everywhere
        use_device(device)
        self.layers = model_layers(spec, data)
        others = sorted({layer.kind for layer in self.layers} - set(KINDS))
        if others:
            raise ValueError(
                f"jax reference loop: layer kinds {', '.join(others)} are not in its hand-fused "
                f"forward (it covers {', '.join(KINDS)})"
            )
        dtype = np.dtype(spec.dtype)
        canonical = canonical_init(spec, data)
        self.n, b = data.train_x.shape[0], spec.batching.batch_size
        self.steps = self.n // b if spec.batching.last_batch == "drop" else -(-self.n // b)
        self.batch, self.shuffle = b, spec.batching.shuffle
        self.rng = np.random.default_rng(spec.seed)
        self.tx = build(spec, Regularization.from_spec(spec), canonical)
        params, stats = split_state(jax.device_put(to_native({k: v.astype(dtype) for k, v in canonical.items()})))
        self.split = pipeline.on_device(data.train_x, data.train_y, dtype)
        self.state = (params, stats, self.tx.init(params), jax.random.PRNGKey(spec.seed))
        self._epoch = jax.jit(self._run_epoch, donate_argnums=0)

    def _forward(self, params, stats, x, key):
        """(logits, the batch_norm running statistics after this batch) of one training pass."""
        p, updated = params["params"], {}
        for layer in self.layers:
            if layer.kind == "dense":
                dense = p[layer.name]
                x = ACTIVATIONS[layer.activation](
                    jnp.dot(x, dense["kernel"], precision="highest") + dense.get("bias", 0.0)
                )
            elif layer.kind == "conv2d":
                conv, s = p[layer.name], (layer.stride, layer.stride)
                x = jax.lax.conv_general_dilated(
                    x,
                    conv["kernel"],
                    s,
                    layer.padding.upper(),
                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                    precision="highest",
                )
                x = ACTIVATIONS[layer.activation](x + conv.get("bias", 0.0))
            elif layer.kind in POOLS:
                k, s = (layer.kernel, layer.kernel), (layer.stride, layer.stride)
                x = POOLS[layer.kind](x, k, s, layer.padding.upper())
            elif layer.kind == "global_avg_pool":
                x = jnp.mean(x, axis=(1, 2))
            elif layer.kind == "flatten":
                x = x.reshape(x.shape[0], -1)
            elif layer.kind == "batch_norm":
                bn, old, m = p[layer.name], stats["batch_stats"][layer.name], layer.momentum
                mean, var = jnp.mean(x, axis=tuple(range(x.ndim - 1))), jnp.var(x, axis=tuple(range(x.ndim - 1)))
                updated[layer.name] = {"mean": m * old["mean"] + (1 - m) * mean, "var": m * old["var"] + (1 - m) * var}
                x = (x - mean) * jax.lax.rsqrt(var + layer.eps) * bn["scale"] + bn["bias"]
            elif layer.kind == "dropout" and layer.rate:
                key, sub = jax.random.split(key)
                x = jnp.where(jax.random.bernoulli(sub, 1.0 - layer.rate, x.shape), x / (1.0 - layer.rate), 0.0)
            elif layer.kind in ACTIVATIONS:
                x = ACTIVATIONS[layer.kind](x)
        return x, ({"batch_stats": updated} if updated else {})

    def _run_epoch(self, state, x_all, y_all, order):
        params, stats, opt_state, key = state
        key, drop_key = jax.random.split(key)
        slots = self.steps * self.batch
        ids = jnp.resize(order, slots).reshape(self.steps, self.batch)
        w = (jnp.arange(slots) < self.n).astype(x_all.dtype).reshape(self.steps, self.batch)

        def loss_fn(p, s, x, y, wt, k):
            logits, s = self._forward(p, s, x, k)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return jnp.sum(wt * ce) / jnp.sum(wt), s

        def body(carry, xs):
            p, s, o = carry
            ids_t, w_t, k = xs
            x, y = pipeline.take_rows(x_all, y_all, ids_t)
            (loss, s), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, s, x, y, w_t, k)
            updates, o = self.tx.update(grads, o, p)
            return (optax.apply_updates(p, updates), s, o), loss

        keys = jax.random.split(drop_key, self.steps)
        (params, stats, opt_state), losses = jax.lax.scan(body, (params, stats, opt_state), (ids, w, keys))
        return (params, stats, opt_state, key), losses

    def epoch(self) -> Any:
        order = (self.rng.permutation(self.n) if self.shuffle else np.arange(self.n)).astype(np.int32)
        self.state, losses = self._epoch(self.state, *self.split, order)
        return losses

    def sync(self, result: Any) -> None:
        jax.block_until_ready(result)


def make_reference(spec: Spec, data: Dataset, device: str) -> ReferenceLoop:
    return ReferenceLoop(spec, data, device)
