"""Native mode: what a user porting the spec by hand to each framework would write (docs/design.md, "Native mode").

In `mode = "native"` nothing is shared but the data split. Each adapter uses its framework's own order, default
init, dropout RNG and regularization knobs, as the table in the design document lists per framework, each one a
switch of common.idioms (`on(spec, id)`; exact mode with `native.idioms` turns some on), so the run shows the traps
instead of converting them away: Keras L2(λ) doubles the gradient, Keras Adam keeps ε = 1e-7 in
the ε-hat form, Keras decays biases, JAX's |x| has subgradient +1 at 0, and every RNG differs. Native runs are
therefore compared statistically over seeds (common.stats), never step by step.

Layer defaults (`LAYER_DEFAULTS`, measured by the conformance traps named there): what each framework's image and
BatchNorm layers do when a port writes them with their defaults; native-mode adapters build their layers that way
and records carry the row (`layer_settings`), which common.explain reads to name the traps two backends differ by.

Split steps (`SPLIT_IDIOMS`): how a port spreads one optimizer step over replicas and accumulated micro-batches
with each framework's own sampler, loss reduction and accumulation; records carry the row (`split_idiom`), which
common.explain reads to name the trap two backends differ by (docs/design.md, "Data parallelism and
accumulation").

The two rules adapters take from here: the one "L2 strength" a user passes to each framework's knob
(`l2_as_written`), and Keras `fit`'s epoch loss, the running mean of the step losses (`running_epoch_loss`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from common.distributed import Layout
from common.idioms import on

if TYPE_CHECKING:
    from common.spec import Spec

KERAS_DEFAULT_ADAM_EPSILON = 1e-7

# framework → its native layer behaviour; bn_momentum in the decay convention (torch's momentum=0.1 is 0.9 here).
# Traps: bn_momentum_convention, bn_eps_default, bn_running_var, flatten_order, conv_same_stride2,
# avg_pool_same_count (common.traps).
LAYER_DEFAULTS: dict[str, dict] = {
    "torch": {
        "bn_momentum": 0.9,
        "bn_eps": 1e-5,
        "running_var": "unbiased",
        "flatten": "nchw",
        "same_padding": "symmetric",
        "avg_pool_count": "window",
    },
    "tf": {
        "bn_momentum": 0.99,
        "bn_eps": 1e-3,
        "running_var": "biased",
        "flatten": "nhwc",
        "same_padding": "tf",
        "avg_pool_count": "real",
    },
    "jax": {
        "bn_momentum": 0.99,
        "bn_eps": 1e-5,
        "running_var": "biased",
        "flatten": "nhwc",
        "same_padding": "tf",
        "avg_pool_count": "window",
    },
}


# framework → its LayerNorm's default ε (trap layer_norm_eps), what a port gets without passing eps
LAYER_NORM_EPS = {"torch": 1e-5, "tf": 1e-3, "jax": 1e-6}
# a batch_norm table's values where the table leaves them out (common.layers.norm: momentum, running_var; eps is
# model.norm_eps)
BN_TABLE_DEFAULTS = {"momentum": 0.9, "running_var": "biased"}


def differs(spec: Spec, key: str) -> tuple[str, ...]:
    """The frameworks whose native default for `key` differs from some layer of the spec: `bn_momentum`, `bn_eps`,
    `running_var` (LAYER_DEFAULTS against the batch_norm tables) or `ln_eps` (LAYER_NORM_EPS against the layer_norm
    tables); what the layer idioms change for this spec (common.idioms)."""
    from common.layers import tables

    kind = "layer_norm" if key == "ln_eps" else "batch_norm"
    wanted = set()
    for table in (t for t in tables(spec) if t["kind"] == kind):
        if key in ("ln_eps", "bn_eps"):
            wanted.add(table.get("eps", spec.model.norm_eps))
        else:
            field = "momentum" if key == "bn_momentum" else "running_var"
            wanted.add(table.get(field, BN_TABLE_DEFAULTS[field]))
    native = {fw: LAYER_NORM_EPS[fw] if key == "ln_eps" else row[key] for fw, row in LAYER_DEFAULTS.items()}
    return tuple(fw for fw, value in native.items() if wanted - {value})


# framework → how a hand port runs a split step (common.distributed) in native mode:
# sampler: "distributed_sampler": torch `DistributedSampler(shuffle, seed)` + `set_epoch(e)`, the epoch order
#   padded to ⌈N/R⌉·R rows by repeating its first rows (`drop_last`: cut to ⌊N/R⌋·R), rank r taking every R-th
#   row, each rank's DataLoader batching its own rows by c; "global_batch": the framework's own shuffled global
#   micro-batches of G rows split over the replicas in order (tf.distribute rebatching: a ragged one of n rows as
#   ⌈n/R⌉ per replica, the last short or empty; a sharded JAX batch: a ragged one padded with weight-0 rows).
# loss: what a part's loss divides by: "part_mean": its own rows (F.cross_entropy's mean; DDP then averages the R
#   replicas); "global_batch": `tf.nn.compute_average_loss(global_batch_size=G)`, the constant G whatever the rows
#   (replicas summed); "micro_mean": the whole micro-batch's real rows (the mean over a sharded batch under jit).
# accumulate (K > 1): "loss_over_k": each micro-batch's loss divided by K, gradients summed, the optimizer stepped
#   every K micro-batches and at the end of the epoch; "multisteps_mean": `optax.MultiSteps(tx, K)` as constructed
#   by default: the running mean of K gradients, in a float32 accumulator, stepping every K-th call across epochs.
# The resulting step gradients, n the real rows of a part, n_k of micro-batch k, S = K·G:
#   torch (1/K)(1/R) Σ_k Σ_r Σ_part ∇ℓ / n_rk (mean_of_means); tf (1/K) Σ_k Σ_r Σ_part ∇ℓ / G = Σ_step ∇ℓ / S
#   (a ragged step shrinks by n/S: trap average_loss_global_batch); jax (1/K) Σ_k Σ_micro ∇ℓ / n_k (the mean of the
#   micro-batch means). Traps: sampler_padding, sampler_same_order, mean_of_means, average_loss_global_batch,
#   accumulator_dtype (common.traps).
SPLIT_IDIOMS: dict[str, dict] = {
    "torch": {"sampler": "distributed_sampler", "loss": "part_mean", "accumulate": "loss_over_k"},
    "tf": {"sampler": "global_batch", "loss": "global_batch", "accumulate": "loss_over_k"},
    "jax": {"sampler": "global_batch", "loss": "micro_mean", "accumulate": "multisteps_mean"},
}
# what the shared plan does in exact mode (and the oracle in both modes): the plan's split, the spec's reduction
CANONICAL_SPLIT = {"sampler": "plan", "loss": "reduction", "accumulate": "reduction"}


def split_reduction(row: dict, accumulate: int) -> str:
    """The step gradient a record's `split` row computed (the SPLIT_IDIOMS comment): the spec's reduction where the
    plan split the step; "mean_of_means" for part means (DDP) or micro-batch means averaged over K > 1; the
    "global_batch_divisor" Σ_step ∇ℓ / S of compute_average_loss; "global_mean" for a jitted mean over the micro
    batch without accumulation."""
    if row["loss"] == "reduction":
        return row["reduction"]
    if row["loss"] == "global_batch":
        return "global_batch_divisor"
    if row["loss"] == "part_mean" or accumulate > 1:
        return "mean_of_means"
    return "global_mean"


def split_idiom(spec: Spec, backend: str) -> dict | None:
    """How a backend split its steps, for the record: the native row of SPLIT_IDIOMS with the idiom `split_step`
    on, the canonical one (with the spec's reduction) otherwise and for the oracle; None when steps are not split."""
    if not Layout.from_spec(spec).is_split:
        return None
    if on(spec, "split_step") and backend in SPLIT_IDIOMS:
        return dict(SPLIT_IDIOMS[backend])
    return {**CANONICAL_SPLIT, "reduction": spec.batching.reduction}


# LAYER_DEFAULTS key → the idiom (common.idioms) that switches it
LAYER_IDIOMS = {
    "bn_momentum": "bn_momentum",
    "bn_eps": "bn_eps",
    "running_var": "bn_running_var",
    "flatten": "flatten_order",
    "same_padding": "same_padding",
    "avg_pool_count": "avg_pool_count",
}


def layer_settings(spec: Spec, backend: str, layers) -> dict | None:
    """What a backend's image and BatchNorm layers did in this run, for the record: per key the native value of
    LAYER_DEFAULTS where its idiom (LAYER_IDIOMS) is on, the spec's canonical value otherwise (and always for the
    numpy oracle, whose layers are canonical); None when the stack has no such layer. Keys of kinds absent from
    the stack are left out."""
    kinds = {layer.kind for layer in layers}
    bns = [layer for layer in layers if layer.kind == "batch_norm"]
    if not kinds & {"batch_norm", "flatten", "conv2d", "max_pool", "avg_pool"}:
        return None
    canonical = {
        "bn_momentum": bns[0].momentum if bns else None,
        "bn_eps": bns[0].eps if bns else None,
        "running_var": bns[0].running_var if bns else None,
        "flatten": "nhwc",
        "same_padding": "tf",
        "avg_pool_count": "real",
    }
    native = LAYER_DEFAULTS.get(backend, {})
    row = {
        key: native[key] if key in native and on(spec, LAYER_IDIOMS[key]) else value for key, value in canonical.items()
    }
    keep = {
        "bn_momentum": "batch_norm" in kinds,
        "bn_eps": "batch_norm" in kinds,
        "running_var": "batch_norm" in kinds,
        "flatten": "flatten" in kinds,
        "same_padding": any(layer.padding == "same" and layer.stride > 1 for layer in layers),
        "avg_pool_count": any(layer.kind == "avg_pool" and layer.padding == "same" for layer in layers),
    }
    return {key: value for key, value in row.items() if keep[key]}


def symmetric_pads(layer) -> tuple[int, int, int, int]:
    """torch native mode's "same": what a port writes, `padding=k // 2` on every side (PyTorch's own
    `padding="same"` refuses stride > 1). At stride 1 with an odd kernel it is TF's rule; at stride 2 the windows
    shift by one pixel (trap conv_same_stride2). An even kernel changes the output size: refused, naming the key."""
    from common.errors import InputError

    if layer.padding != "same":
        return (0, 0, 0, 0)
    p = layer.kernel // 2
    h, w = layer.in_shape[0], layer.in_shape[1]
    size = ((h + 2 * p - layer.kernel) // layer.stride + 1, (w + 2 * p - layer.kernel) // layer.stride + 1)
    if size != tuple(layer.shape[:2]):
        raise InputError(
            f"spec key 'model.layers[{layer.index}].{'kernel' if layer.kind == 'conv2d' else 'size'}': a torch "
            f"port's symmetric padding={p} gives "
            f"{size[0]}×{size[1]}, not the {layer.shape[0]}×{layer.shape[1]} of 'same'; native mode needs an odd "
            "kernel here"
        )
    return (p, p, p, p)


def l2_as_written(spec: Spec) -> float:
    """λ = l2 + coupled weight decay: the one "L2 strength" a user passes to each framework's own knob

    (torch `weight_decay=λ`, optax `add_decayed_weights(λ)`: gradient λ·w; Keras `L2(λ)`: gradient 2λ·w).
    """
    r = spec.regularization
    return r.l2 + (r.weight_decay if r.decay == "coupled" else 0.0)


def running_epoch_loss(losses: list[float], sizes: list[int]) -> float:
    """The `fit`-style epoch loss: Σ n_b·loss_b / Σ n_b over the epoch's steps, taken while the weights change."""
    return float(np.dot(losses, sizes) / np.sum(sizes))
