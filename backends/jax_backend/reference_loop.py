"""The JAX reference (common.benchtarget: REFERENCES, make_reference → EpochRunner): the fastest minimal loop JAX
allows for the spec's feature or image stack (KINDS), optimizer, lr and batch size, the yardstick of the bench's
modes (docs/design.md, "Performance methodology").

REFERENCES = ("scan",): one `jax.jit`-ed program per epoch, with the params / optimizer state / PRNG key carried
between epochs and donated to it:
- order: the plan's, `BatchPlan.slots(e)` drawn with numpy on the host (e = the epochs this runner ran, from 0)
  while the device still runs the previous epoch (`jax.random.permutation` sorts: 6 ms for 13k rows on CPU, longer
  than the epoch itself); its ids (S, B) int32 and weights (S, B) go in with the call;
- batches: `lax.scan` steps that gather their rows from the split put on the device once; a ragged "keep" tail is
  padded to B with weight-0 rows by the plan's "pad" rule (one static shape, the same mean loss Σ w·ℓ / Σ w);
  "drop" skips the remainder;
- forward: the stack's layers in order on the canonical-init params in flax's tree layout (no flax Module): dense
  as plain `jnp.dot` and conv2d as `lax.conv_general_dilated` (NHWC, "SAME" / "VALID", precision HIGHEST, as
  core.py and image.py), flax's pooling functions with their defaults, dropout `jax.random.bernoulli` inside the
  scan (its own RNG, not the shared masks), batch_norm over the batch's real rows (w > 0; μ = Σ w·x / n,
  σ² = Σ w·(x − μ)² / n, n = Σ w · H·W) with the layer's momentum and ε and the biased running variance, its running
  statistics carried by the scan;
- update: the spec's own optax chain (optim.build: the same optimizer, lr, decay and L1) over the params.
So without dropout its per-step losses are the eager mode's exact-mode losses (within common.tolerance); `epoch()`
returns them on the device and nothing waits on the device until `sync`.
"""

from __future__ import annotations

from dataclasses import replace
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
from common.batching import BatchPlan
from common.benchtarget import HAND_FUSED_KINDS
from common.datasets import Dataset
from common.driver import canonical_init, model_layers
from common.regularization import Regularization
from common.spec import Spec

REFERENCES = ("scan",)
KINDS = HAND_FUSED_KINDS
POOLS = {"max_pool": nn.max_pool, "avg_pool": nn.avg_pool}


class ReferenceLoop:
    def __init__(self, spec: Spec, data: Dataset, device: str, variant: str = "scan"):
        if variant not in REFERENCES:
            raise ValueError(f"jax has no reference '{variant}' (references: {', '.join(REFERENCES)})")
        jax.config.update("jax_enable_x64", True)  # as the adapter does, so dtypes are the spec's everywhere
        use_device(device)
        self.spec, self.data, self.device, self.variant = spec, data, device, variant
        self.layers = model_layers(spec, data)
        others = sorted({layer.kind for layer in self.layers} - set(KINDS))
        if others:
            raise ValueError(
                f"jax reference loop: layer kinds {', '.join(others)} are not in its hand-fused "
                f"forward (it covers {', '.join(KINDS)})"
            )
        self.dtype = dtype = np.dtype(spec.dtype)
        canonical = canonical_init(spec, data)
        plan = BatchPlan.from_spec(spec, data.train_x.shape[0])
        self.plan = replace(plan, last_batch="pad") if plan.last_batch == "keep" else plan
        self.epochs = 0
        self.tx = build(spec, Regularization.from_spec(spec), canonical)
        params, stats = split_state(jax.device_put(to_native({k: v.astype(dtype) for k, v in canonical.items()})))
        self.split = pipeline.on_device(data.train_x, data.train_y, dtype)
        self.state = (params, stats, self.tx.init(params), jax.random.PRNGKey(spec.seed))
        self._epoch = jax.jit(self._run_epoch, donate_argnums=0)

    def _forward(self, params, stats, x, w, key):
        """(logits, the batch_norm running statistics after this batch) of one training pass; w: the row weights
        (batch_norm's statistics over the real rows, w > 0)."""
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
                axes, real = tuple(range(x.ndim - 1)), w.reshape(-1, *(1,) * (x.ndim - 1))
                n = jnp.sum(w) * (x.size // (x.shape[0] * x.shape[-1]))
                mean = jnp.sum(real * x, axis=axes) / n
                var = jnp.sum(real * (x - mean) ** 2, axis=axes) / n
                updated[layer.name] = {"mean": m * old["mean"] + (1 - m) * mean, "var": m * old["var"] + (1 - m) * var}
                x = (x - mean) * jax.lax.rsqrt(var + layer.eps) * bn["scale"] + bn["bias"]
            elif layer.kind == "dropout" and layer.rate:
                key, sub = jax.random.split(key)
                x = jnp.where(jax.random.bernoulli(sub, 1.0 - layer.rate, x.shape), x / (1.0 - layer.rate), 0.0)
            elif layer.kind in ACTIVATIONS:
                x = ACTIVATIONS[layer.kind](x)
        return x, ({"batch_stats": updated} if updated else {})

    def _run_epoch(self, state, x_all, y_all, ids, w):
        params, stats, opt_state, key = state
        key, drop_key = jax.random.split(key)

        def loss_fn(p, s, x, y, wt, k):
            logits, s = self._forward(p, s, x, wt, k)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return jnp.sum(wt * ce) / jnp.sum(wt), s

        def body(carry, xs):
            p, s, o = carry
            ids_t, w_t, k = xs
            x, y = pipeline.take_rows(x_all, y_all, ids_t)
            (loss, s), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, s, x, y, w_t, k)
            updates, o = self.tx.update(grads, o, p)
            return (optax.apply_updates(p, updates), s, o), loss

        keys = jax.random.split(drop_key, ids.shape[0])
        (params, stats, opt_state), losses = jax.lax.scan(body, (params, stats, opt_state), (ids, w, keys))
        return (params, stats, opt_state, key), losses

    def epoch(self) -> Any:
        ids, w = self.plan.slots(self.epochs)
        self.epochs += 1
        b = self.plan.batch_size
        self.state, losses = self._epoch(
            self.state, *self.split, ids.astype(np.int32).reshape(-1, b), w.astype(self.dtype).reshape(-1, b)
        )
        return losses

    def sync(self, result: Any) -> None:
        jax.block_until_ready(result)

    def equivalence_losses(self, epochs: int) -> list[float]:
        fresh = ReferenceLoop(self.spec, self.data, self.device, self.variant)
        return np.concatenate(jax.device_get([fresh.epoch() for _ in range(epochs)])).tolist()


def make_reference(spec: Spec, data: Dataset, device: str, variant: str = "scan") -> ReferenceLoop:
    return ReferenceLoop(spec, data, device, variant)
