"""Normalisation layers: layer_norm over the features of each row (B, F), batch_norm over the rows of a batch.

layer_norm:  μ = mean_j x_j,  σ² = mean_j (x_j − μ)²  (biased),  x̂ = (x − μ)/√(σ² + ε),  y = γ ⊙ x̂ + β,
             γ as `ln{i}.scale` (init 1), β as `ln{i}.offset` (init 0), i counting the layer_norm layers from 0.
             ε is canonical and passed explicitly to every framework: `eps`, default model.norm_eps (1e-5). Native
             defaults differ (torch nn.LayerNorm 1e-5, Keras LayerNormalization 1e-3, flax nn.LayerNorm 1e-6;
             common.traps "layer_norm_eps"). γ and β are bias-like: regularized only with regularize_bias.
batch_norm:  per channel c (the last axis: features (B, F) or images (B, H, W, C)), over the n = R·H·W values of
             the R REAL rows of a training batch (filler rows of `last_batch = "pad"` never enter the statistics):
                 μ = mean x,  σ²_b = mean (x − μ)²  (biased, in every framework),  x̂ = (x − μ)/√(σ²_b + ε),
                 y = γ ⊙ x̂ + β;
             running statistics, in the decay convention (Keras and flax `momentum`; torch's `momentum` is 1 − m):
                 mean ← m·mean + (1 − m)·μ,   var ← m·var + (1 − m)·v,
                 v = σ²_b (`running_var = "biased"`, Keras and flax) or σ²_b·n/(n − 1) ("unbiased", torch);
             evaluation: x̂ = (x − mean)/√(var + ε). γ `bn{i}.scale` (init 1), β `bn{i}.offset` (init 0), both
             bias-like; `bn{i}.mean` (init 0) and `bn{i}.var` (init 1) are state: recorded and compared, never
             trained nor regularized. Keys: momentum m ∈ [0, 1) (default 0.9, torch's 0.1), eps > 0 (default
             model.norm_eps), running_var (default "biased"). Batch statistics need n ≥ 2 values per channel
             (`check_batch_statistics`): torch raises on one row, and σ²_b of one value is 0.
batch_norm under split steps (common.distributed.Layout: R replicas, K micro-batches; docs/design.md, "Data
             parallelism and accumulation"), key `sync` (default false):
               statistics: each part (replica r, micro-batch k: its c rows) is normalised with its own batch
                 statistics (sync = false: torch BatchNorm under DDP, Keras under MirroredStrategy, flax without
                 axis_name under shard_map), or with those of micro-batch k's G rows over all R replicas (sync =
                 true: nn.SyncBatchNorm, Keras `synchronized=True`, flax `axis_name`); with R = 1 both are the
                 micro-batch's. The gradient flows through the statistics the part was normalised with.
               running statistics: one update per micro-batch (K per optimizer step, in micro-batch order) from
                 the statistics it was normalised with: sync = true, the micro-batch's (n = G·H·W values per
                 channel); sync = false, the FIRST replica's (n = c·H·W): DDP broadcasts rank 0's buffers before a
                 synchronised forward, a Keras moving statistic under MirroredStrategy is a MirroredVariable whose
                 replicas' copies each take their own assign and which reads its first copy; the flax port keeps
                 device 0's `batch_stats`. (flax's examples average the replicas' instead: trap bn_replica_stats.)
               Every part of every step is full (no filler rows), else common.distributed.check_batch_norm refuses
               the plan: a padded or ragged step would give the parts unequal or no rows, and Keras's synchronized
               moments take no mask.
"""

from __future__ import annotations

import numpy as np

from common.errors import InputError
from common.layers.base import FEATURES, IMAGES, Key, Layer, LayerKind, Param

RUNNING_VAR = ("biased", "unbiased")


class LayerNorm(LayerKind):
    kind, prefix = "layer_norm", "ln"
    keys = {"eps": Key(float, None, lambda v: None if 0.0 < v < 1.0 else "must be in (0.0, 1.0)")}
    params = {
        "scale": Param(lambda layer: (layer.width,), kernel=False),
        "offset": Param(lambda layer: (layer.width,), kernel=False),
    }

    def default(self, key, spec, last, n_classes):
        return spec.model.norm_eps

    def init(self, layer, scheme, seed):
        return {"scale": np.ones(layer.width), "offset": np.zeros(layer.width)}


class BatchNorm(LayerKind):
    kind, prefix = "batch_norm", "bn"
    reads, gives = (FEATURES, IMAGES), None
    keys = {
        "momentum": Key(float, 0.9, lambda v: None if 0.0 <= v < 1.0 else "must be in [0.0, 1.0)"),
        "eps": Key(float, None, lambda v: None if 0.0 < v < 1.0 else "must be in (0.0, 1.0)"),
        "running_var": Key(str, "biased", lambda v: None if v in RUNNING_VAR else "must be one of biased, unbiased"),
        "sync": Key(bool, False),
    }
    params = {
        "scale": Param(lambda layer: (layer.width,), kernel=False),
        "offset": Param(lambda layer: (layer.width,), kernel=False),
        "mean": Param(lambda layer: (layer.width,), kernel=False, state=True),
        "var": Param(lambda layer: (layer.width,), kernel=False, state=True),
    }

    def default(self, key, spec, last, n_classes):
        return spec.model.norm_eps

    def init(self, layer, scheme, seed):
        ones, zeros = np.ones(layer.width), np.zeros(layer.width)
        return {"scale": ones, "offset": zeros, "mean": zeros.copy(), "var": ones.copy()}


def running_var_factor(native: str, wanted: str, n):
    """f turning a running-variance update made with estimator `native` into one made with `wanted`: n/(n − 1)
    (biased → unbiased), (n − 1)/n (unbiased → biased), 1 (same); n may be an array (a traced count)."""
    if native == wanted:
        return 1.0
    return n / (n - 1) if wanted == "unbiased" else (n - 1) / n


def convert_running_var(old, updated, momentum: float, factor):
    """The running variance after one update of `old`, converted to the spec's estimator: a framework updated
    `old` to m·old + (1 − m)·v with its own estimator v; the spec's is f·v (running_var_factor), so the result is
    m·old + (updated − m·old)·f. Plain arithmetic: it applies to numpy, torch, tf and jax arrays alike, and only the
    running-statistics update changes, never the normalisation (docs/design.md, "Images and BatchNorm")."""
    return momentum * old + (updated - momentum * old) * factor


def values_per_channel(layer: Layer, rows: int) -> int:
    """n: how many values one channel of a batch_norm layer sees in a batch of `rows` real rows (rows·H·W)."""
    return rows * int(np.prod(layer.shape[:-1], dtype=np.int64))


def check_batch_statistics(layers: tuple[Layer, ...], real_rows: list[int]) -> None:
    """Refuse a training plan with a step whose batch statistics are undefined: a batch_norm layer seeing fewer
    than 2 values per channel (module docstring). `real_rows`: the real rows of each step of an epoch."""
    for layer in layers:
        if layer.kind != "batch_norm":
            continue
        for step, rows in enumerate(real_rows, start=1):
            if values_per_channel(layer, rows) < 2:
                raise InputError(
                    f"spec key 'batching.batch_size': step {step} of each epoch trains on {rows} real row(s), and "
                    f"batch_norm {layer.name} (model.layers[{layer.index}]) then has {values_per_channel(layer, rows)} "
                    f"value(s) per channel: its batch statistics are undefined (torch raises, the unbiased variance "
                    f'divides by zero); set batching.last_batch = "drop" or another batch_size'
                )


KINDS = (LayerNorm(), BatchNorm())
