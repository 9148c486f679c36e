"""The normalisation layer kinds (common.layers.norm) as flax.linen: layer_norm → `nn.LayerNorm` named `ln{i}`,
batch_norm → `nn.BatchNorm` named `bn{i}` (docs/design.md, "Images and BatchNorm").

layer_norm: passes the canonical ε = `layer.eps` and `use_fast_variance=False`, flax's two-pass variance
mean((x − μ)²), the canonical formula (flax's default computes E[x²] − μ²). The idiom `layer_norm_eps` on keeps
flax's defaults (ε = 1e-6, the fast variance): what a hand port writes (docs/design.md, "Native mode"). flax's
`scale` and `bias` are the canonical `ln{i}.scale` and `ln{i}.offset` (init 1 and 0 either way).

batch_norm: `nn.BatchNorm(use_running_average=not train, axis=-1)` over the last axis (features or channels).
It passes momentum = m (flax's momentum is the decay convention: ra ← m·ra + (1 − m)·batch), ε = `layer.eps` and
`use_fast_variance=False` (the two-pass σ²_b: E[x²] − μ² cancels on data with a large mean, trap
`bn_fast_variance`); each idiom on keeps flax's default instead: `bn_momentum` 0.99, `bn_eps` 1e-5,
`bn_fast_variance` the fast variance. Both modes give the
real rows (`call.real`, w > 0) as flax's own `mask=`, broadcast to the input's shape, so `last_batch = "pad"`'s
filler rows never enter the statistics. `force_float32_reductions=False` in both: for float32 and float64 it
changes no arithmetic (the statistics are computed in the input's dtype either way), only the dtype of the running
statistics, which are then the spec dtype from init on (flax would create them float32 and a float64 update would
change their dtype after step 1: a retrace, and a lax.scan carry of another type).
Names: `scale`, `bias` (params) are `bn{i}.scale`, `bn{i}.offset`; `mean`, `var` (the `batch_stats` collection) are
the state `bn{i}.mean`, `bn{i}.var` (model.py routes state names there, common.layers.is_state).
Running variance: flax keeps the biased σ²_b. With `running_var = "unbiased"` (idiom `bn_running_var` off)
`running_stats` replaces only that update, after `apply(..., mutable=["batch_stats"])`, by
common.layers.norm.convert_running_var with f = n/(n − 1), n the real values per channel of the batch (a traced
count: one compile per batch shape).
Split steps (common.layers.norm, "under split steps"; distributed.py): inside the engine's shard_map, `axis_name`
is the mesh axis, and a `sync = true` layer gets flax's `axis_name=` over it: with the two-pass variance flax's
`_compute_stats` takes μ = pmean_r μ_r (each device's mean over its c rows: with equal counts per device, the mean
of the G rows), then σ²_b = pmean_r mean_r (x − μ)², the biased variance of the G rows, and differentiates through
both collectives; n = psum_r n_r = G·H·W. A `sync = false` layer keeps its device's c rows (n = c·H·W). Outside
the shard_map (`axis_name` None) every layer sees the rows it is given.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from backends.jax_backend.core import Options
from common.layers import Layer
from common.layers.norm import convert_running_var, running_var_factor, values_per_channel
from common.native import LAYER_DEFAULTS

NATIVE_RUNNING_VAR = LAYER_DEFAULTS["jax"]["running_var"]  # what flax's BatchNorm keeps


def layer_norm(layer: Layer, options: Options):
    exact = {} if options.on("layer_norm_eps") else {"epsilon": layer.eps, "use_fast_variance": False}
    norm = nn.LayerNorm(dtype=options.dtype, param_dtype=options.dtype, name=layer.name, **exact)
    return lambda x, call: norm(x)


def batch_norm(layer: Layer, options: Options, axis_name: str | None = None):
    exact = {
        key: value
        for idiom, key, value in (
            ("bn_momentum", "momentum", layer.momentum),
            ("bn_eps", "epsilon", layer.eps),
            ("bn_fast_variance", "use_fast_variance", False),
        )
        if not options.on(idiom)
    }
    norm = nn.BatchNorm(
        axis=-1,
        axis_name=axis_name if layer.sync else None,
        dtype=options.dtype,
        param_dtype=options.dtype,
        force_float32_reductions=False,
        name=layer.name,
        **exact,
    )

    def apply(x, call):
        if call.real is None:
            return norm(x, use_running_average=not call.train)
        mask = jnp.broadcast_to(call.real.reshape(-1, *(1,) * (x.ndim - 1)), x.shape)
        return norm(x, use_running_average=not call.train, mask=mask)

    return apply


def running_stats(
    layers: tuple[Layer, ...], options: Options, before: dict, after: dict, real, axis_name: str | None = None
) -> dict:
    """The `batch_stats` after a training step, with the spec's running-variance estimator: flax's update `after`
    of `before`, each batch_norm whose `running_var` is not flax's getting its running variance converted (module
    docstring; idiom `bn_running_var` off); `real` (B,) bool are the real rows (the device's, inside the shard_map
    over `axis_name`, where a `sync = true` layer counts every device's)."""
    converted = [
        layer
        for layer in layers
        if layer.kind == "batch_norm" and not options.on("bn_running_var") and layer.running_var != NATIVE_RUNNING_VAR
    ]
    if not converted:
        return after
    stats = {name: dict(child) for name, child in after["batch_stats"].items()}
    rows = jnp.sum(real).astype(options.dtype)
    for layer in converted:
        counted = rows if axis_name is None or not layer.sync else jax.lax.psum(rows, axis_name)
        f = running_var_factor(NATIVE_RUNNING_VAR, layer.running_var, values_per_channel(layer, counted))
        old, updated = before["batch_stats"][layer.name]["var"], stats[layer.name]["var"]
        stats[layer.name]["var"] = convert_running_var(old, updated, layer.momentum, f)
    return {**after, "batch_stats": stats}


LAYERS = {"layer_norm": layer_norm, "batch_norm": batch_norm}
NAMES = {
    "layer_norm": {"scale": ("scale",), "offset": ("bias",)},
    "batch_norm": {"scale": ("scale",), "offset": ("bias",), "mean": ("mean",), "var": ("var",)},
}
