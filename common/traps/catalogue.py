"""The trap catalogue behind `parity conformance` (docs/design.md, "Traps"): each framework's native behaviour.

A :class:`Trap` names one cross-framework difference: the measurement each framework's probe must reproduce on the
installed versions (`expected`, keys checked by judge.matches), the framework-free semantics where there is one
(`canonical`), and the conversion exact mode applies, pointing at the `common/` rule. The probes
(`backends/<fw>_backend/probes.py`, registered in `PROBES`) MEASURE; a test fails when a measurement stops matching
`expected`, which is how a framework upgrade that changes a behaviour is caught.

Tolerances (per trap; 0 means exact): orders, counts, names, shapes and the binary-fraction optimizer results
(lr 0.5, μ 0.5, wd 0.25: every intermediate exact in float32 and float64) compare exactly; float64 Adam end points
1e-12 (rounding order only); first-step relative errors rtol 1e-4, atol 1e-12 (the ε-hat residual is ~1e-16);
Keras's clipped −log(1e-7) rtol 1e-6 (float32 log); initialiser statistics rtol 2% (sampling error of 2·10⁵ draws
is ~0.3% on the std; 2% still separates 1/√3, √(6/2100)·10/√3 and 1); LayerNorm ε recovered from float64 outputs
rtol 1e-6 (rounding leaves ~1e-15 relative; the three defaults are 10× apart or more).

Images and BatchNorm: pads, output sizes, orders, layouts, shapes, outcomes and the fast-variance verdicts compare
exactly (the float32 variance error itself is platform dependent, so only "error > 1e-3" is recorded: E[x²] − μ² at
|μ|/σ = 1e4 is off by ≥ 10%, the two-pass variance by ~1e-6); BatchNorm fractions, the running-variance factor and
the average-pool corner are float64 ratios, rtol 1e-12 (rounding only: 1 − 0.99 = 0.010000000000000009); BatchNorm
ε recovered from float64 outputs rtol 1e-6, as LayerNorm's; the running variance after a batch of one rtol 1e-6
(flax keeps batch_stats in float32, so 0.99·1 rounds to 0.99000000954: trap bn_statistics_dtype); Keras's masked
divisor offset δ = 1e-7 recovered from a 3e-8 relative difference in float64, rtol 1e-6 and atol 1e-12 (an exact
masked mean gives |δ| ~ 1e-16); flax's float32-statistics error 9.3958e-9 is one float32 rounding of 0.99, rtol 1e-6,
atol 1e-15 (exact mode's 0).

Data parallelism and accumulation: sampler indices, totals, orders, counts and names compare exactly; so do the
accumulated updates, loss values, divisors, penalties and scale factors, whose inputs are binary fractions (micro-
batches of 3 and 1 rows valued 0.5 … 2, lr 0.5, losses 0.5, 1, 1.5, L2 0.25 on [1, −2]: every sum, mean and quotient
is exact in float32 and float64, and the ratio 0.75/0.625 rounds to the double nearest 1.2 like the literal). The
accumulator-dtype errors are float64 relative errors of a mean of 0.1, 0.2, 0.4: optax's float32 accumulator's
1.703e-8 is float32 rounding, rtol 1e-6 (as bn_statistics_dtype); a float64 accumulator's error is rounding order
only (torch's Σ(g/K) and optax's Welford running mean 1.2e-16, Keras's Σg/K 0), atol 1e-15. BatchNorm under split
steps (sync_batchnorm_cpu, bn_jit_global_batch, bn_replica_stats) compares exactly as well: outcomes, names and flags,
and running means from momentum 0 (torch 1), i.e. BN_SPLIT's batch means, binary fractions exact under any summation
order; the probes name a (mean, biased variance) pair with reference.split_statistics_name at rtol 1e-9, where the
statistics differ by ≥ 25% (torch's unbiased running variance rescaled by (c − 1)/c is the only rounding).

Gradient clipping and learning-rate schedules (design sections "Gradient clipping" and "Learning-rate schedules"):
the clipping inputs make every norm and factor exact (CLIP_BOUNDARY's norms 3, 4 and 5 with power-of-2 entries, so
g'/g is the factor itself; CLIP_DECAY's norms 2 and 4, factors 1/2 and 1/4, exact even through optax's g·fl(1/n)·c),
and the schedules use lr₀ = 1, f = 1/4, γ = 1/2, so Keras's, optax's and the canonical values are exact; step
schedules, the float32 lr constants (one float32 rounding of 0.1: 0.10000000149011612) and the per-epoch lrs compare
exactly. torch's clip_grad_norm_ factors c/(n + 1e-6) are float64 quotients, recorded as measured with rtol 1e-12 (a
reordering of their rounding, ~1e-16, passes; the ε's own 2e-7 does not), which clip_epsilon and clip_before_decay
share; the research's case B (CLIP_SCOPE, 0.1 … 0.5: not binary) rtol 1e-12, rounding order only (the scope is named
by reference.clip_scope at rtol 1e-5 so that torch's ε, 1.35e-6 there, does not hide it; the two scopes differ by at
least 22%); the cosine values rtol 1e-12 (cos through libm or XLA, and torch's recursive CosineAnnealingLR:
1.0000000000000002 at 2·D).

keras_clip_per_replica compares exactly: CLIP_REPLICAS' two replicas, (1, 1, 1, 1) twice and (2, 2, 2, 2) with
(−1, −1, −1, −1), have norms 2 and 4 and sums of norm 4 and 2 at c = 1, so every clip factor (1/2, 1/4) is a power
of 2 and every Δw a binary fraction, exact in any summation order (Keras's c·min(1/n, 1/c) included); the placement
is named by reference.clip_replica_placement (exact inputs, candidates 0.5 or more apart), and the counts and names
compare exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common import clipping
from common.batching import BatchPlan
from common.distributed import Layout
from common.dropout import keep_scale
from common.layers import KINDS as LAYER_KINDS
from common.layers.image import out_size, same_pads
from common.spec import defaults
from common.traps.inputs import (
    ACCUMULATE,
    ACCUMULATOR,
    ADAM,
    AVERAGE_LOSS,
    AVG_POOL_SAME,
    BN_EPS_INPUT,
    BN_INPUT,
    BN_MASK,
    BN_MOMENTUM,
    BN_REPLICAS,
    BN_SPLIT,
    CLIP_DECAY,
    CLIP_REPLICAS,
    CLIP_SCOPE,
    CONV_KERNEL,
    CONV_SAME,
    DECAY,
    DROPOUT_RATES,
    EPS_HAT,
    FLATTEN_HWC,
    LAYER_NORM_INPUT,
    LAYOUT,
    LOSS_MASK,
    MOMENTUM,
    ORDER_N,
    ORDER_N_SMALL,
    PER_EPOCH,
    POOL_DEFAULT,
    SAMPLER,
    SCHEDULE,
    SCHEDULE_FLOAT32,
    SEED,
    SEQUENCES,
    SHUFFLE_BUFFER,
    SHUFFLE_EPOCHS,
    STEP_FIRST,
    conv_ramp,
)
from common.traps.judge import diverges, effect_ratio, listing, matches, normalise, spread, values_of
from common.traps.reference import (
    accumulated_updates,
    adam_reference,
    batch_norm_reference,
    clip_boundary_norm,
    clip_decay_references,
    clip_replica_references,
    clip_scope_references,
    conv2d_reference,
    layer_norm_reference,
    layout_epoch,
    pool_reference,
    schedule_lrs,
    schedule_table,
    sgd_decay_reference,
    sgd_momentum_reference,
    split_statistics,
)

NORM_EPS = defaults()["model"]["norm_eps"]  # Parity's layer_norm ε default (model.norm_eps), passed explicitly
BN_DEFAULT_MOMENTUM = LAYER_KINDS["batch_norm"].keys["momentum"].default  # Parity's m, decay convention (0.9)
CONV_PADDING_DEFAULT = LAYER_KINDS["conv2d"].keys["padding"].default  # Parity's conv2d padding default
BN_SYNC_DEFAULT = LAYER_KINDS["batch_norm"].keys["sync"].default  # Parity's batch_norm sync default (false)
SAME_PADS = [*same_pads(CONV_SAME["n"], CONV_SAME["kernel"], CONV_SAME["stride"])] * 2  # (top, bottom, left, right)


@dataclass(frozen=True)
class Trap:
    id: str
    title: str
    section: str  # the docs/design.md section it belongs to
    expected: dict[str, dict]  # framework → the measurement its probe must reproduce (keys checked)
    conversion: str  # what exact mode does about it, pointing at the common/ rule
    compare: tuple[str, ...] = ()  # keys compared across frameworks for `diverges`
    canonical: dict | None = None  # the framework-free semantics of those keys, where there is one
    rtol: float = 0.0
    atol: float = 0.0
    effect: Callable[[dict], tuple[float | None, str]] | None = field(default=None, repr=False)
    note: str = ""  # a measured finding beyond the one-line semantics (reported under the table)

    def matches(self, framework: str, measured) -> bool:
        """Whether `measured` reproduces `expected[framework]` (only the expected keys are checked)."""
        return matches(self.expected[framework], normalise(measured), self.rtol, self.atol)

    def diverges(self, measured: dict[str, Any]) -> bool | None:
        """True when two frameworks (or one and the canonical value) disagree on a compared key (judge.diverges)."""
        return diverges(measured, self.compare, self.canonical, self.rtol, self.atol)

    def effect_of(self, measured: dict[str, Any]) -> tuple[float | None, str]:
        """(size, text) of the effect, from whatever frameworks were measured."""
        if self.effect is None or not measured:
            return None, ""
        try:
            value, text = self.effect(measured)
        except Exception as exc:  # e.g. a framework the effect needs was not measured; never fail the matrix
            return None, f"n/a ({type(exc).__name__}: {exc})"
        return (None if value is None else float(value)), text


# ------------------------------------------------------------------------------- effects of single traps
def _effect_orders(m):
    orders = {fw: tuple(v["order"]) for fw, v in m.items()}
    orders["numpy"] = tuple(np.random.default_rng(SEED).permutation(ORDER_N).tolist())
    distinct = len(set(orders.values()))
    return distinct, f"{distinct} different orders of the same {ORDER_N} ids from seed {SEED} ({', '.join(orders)})"


def _effect_crossing(m):
    batches = m["tf"]["batches"]
    start, mixed = 0, 0
    for b in batches:
        mixed += (start // ORDER_N_SMALL) != ((start + len(b) - 1) // ORDER_N_SMALL)
        start += len(b)
    return mixed, f"{mixed} of {len(batches)} repeat(2).batch(3) batches over 5 ids mix two epochs"


def _effect_masked(m):
    return None, "all-masked batch: " + listing(m, "all_masked") + "; reduction: " + listing(m, "reduction")


def _effect_adam_equiv(m):
    def diff(key):
        return float(np.max(np.abs(np.array(m["torch"][key], np.float64) - np.array(m["jax"][key], np.float64))))

    worst = max(diff("adam_coupled"), diff("adamw"))
    text = (
        f"max |torch − optax| after {ADAM['steps']} steps, float64: Adam(wd) {diff('adam_coupled'):.2g}, "
        f"AdamW {diff('adamw'):.2g}"
    )
    if "adamw_f32" in m["torch"] and "adamw_f32" in m["jax"]:
        text += f"; float32 (x64 off): Adam(wd) {diff('adam_coupled_f32'):.2g}, AdamW {diff('adamw_f32'):.2g}"
    return worst, text + (" (bit for bit)" if worst == 0 else "")


def _effect_init(m):
    stds = {fw: float(v["weight_std"]) for fw, v in m.items()}
    ratio = max(stds.values()) / min(stds.values())
    return ratio, (
        "weight std·√fan_in: "
        + ", ".join(f"{fw} {s:.3f}" for fw, s in stds.items())
        + f" (×{ratio:.2f}); bias max·√fan_in: "
        + listing(m, "bias_max")
    )


def _effect_layer_norm(m):
    eps = {fw: float(e) for fw, e in values_of(m, "eps").items()}
    row = LAYER_NORM_INPUT[:1]
    xhat = {fw: float(layer_norm_reference(row, e)[0, 1]) for fw, e in eps.items()}
    size = max(xhat.values()) - min(xhat.values())
    return size, (
        "default ε: "
        + ", ".join(f"{fw} {e:.3g}" for fw, e in eps.items())
        + f" (×{max(eps.values()) / min(eps.values()):.3g}); x̂ of the row {row[0].tolist()}: "
        + ", ".join(f"{fw} {v:.4g}" for fw, v in xhat.items())
        + f" (ε = {NORM_EPS:g}: {layer_norm_reference(row, NORM_EPS)[0, 1]:.4g})"
    )


# ------------------------------------------------------------------------- effects of the image and BatchNorm traps
def _effect_pads(output: Callable[[tuple], np.ndarray], what: str):
    """An effect function: each framework's measured pads against the canonical (TF) pads, through `output(pads)`
    (the numpy conv or max pool of the CONV_SAME ramp): how many output pixels move, and by how much."""

    def effect(m):
        canonical = output(tuple(SAME_PADS))
        pads = {fw: v["pads"] for fw, v in m.items() if isinstance(v.get("pads"), list)}
        parts, worst = [], 0.0
        for fw, p in pads.items():
            y = output(tuple(p))
            if y.shape != canonical.shape:
                parts.append(
                    f"{fw} {p}: output {y.shape[0]}×{y.shape[1]}, not {canonical.shape[0]}×{canonical.shape[1]}"
                )
                worst = max(worst, 1.0)
                continue
            moved = int(np.sum(y != canonical))
            rel = float(np.max(np.abs(y - canonical)) / np.max(np.abs(canonical)))
            worst = max(worst, rel)
            parts.append(f"{fw} {p}: {moved} of {y.size} outputs differ (max {rel:.2g} of the largest)")
        n, k, s = CONV_SAME["n"], CONV_SAME["kernel"], CONV_SAME["stride"]
        return worst, (
            f"pads reached (top, bottom, left, right) by a {what}, {n}×{n} ramp, window {k}, stride {s}; "
            f"TF's rule {SAME_PADS}: " + "; ".join(parts)
        )

    return effect


def _effect_flatten(m):
    canonical = list(range(int(np.prod(FLATTEN_HWC))))
    moved = {fw: sum(a != b for a, b in zip(v["order"], canonical, strict=True)) for fw, v in m.items()}
    worst = max(moved.values())
    h, w, c = FLATTEN_HWC
    return worst / len(canonical), (
        f"flattening one {h}×{w}×{c} image: positions that hold another feature than NHWC's: "
        + ", ".join(f"{fw} {k} of {len(canonical)}" for fw, k in moved.items())
        + " (a dense layer after it reads its weights' rows against the wrong features)"
    )


def _effect_bn_momentum(m):
    fractions = {fw: float(f) for fw, f in values_of(m, "default_fraction").items()}
    ratio = max(fractions.values()) / min(fractions.values())
    return ratio, (
        "share of the batch statistic per step with the default momentum: "
        + ", ".join(f"{fw} {f:.3g} (≈{1 / f:.0f}-step memory)" for fw, f in fractions.items())
        + f" (×{ratio:.3g}); momentum={BN_MOMENTUM} means: "
        + listing(m, "fraction_at_0.9")
        + f"; Parity m = {BN_DEFAULT_MOMENTUM}: {1 - BN_DEFAULT_MOMENTUM:.3g}"
    )


def _effect_bn_eps(m):
    eps = {fw: float(e) for fw, e in values_of(m, "eps").items()}
    col = BN_EPS_INPUT[:, :1]
    xhat = {fw: float(batch_norm_reference(col, e)[1, 0]) for fw, e in eps.items()}
    size = max(xhat.values()) - min(xhat.values())
    return size, (
        "default ε: "
        + ", ".join(f"{fw} {e:.3g}" for fw, e in eps.items())
        + f" (×{max(eps.values()) / min(eps.values()):.3g}); x̂ of the batch {col[:, 0].tolist()}: "
        + ", ".join(f"{fw} {v:.4g}" for fw, v in xhat.items())
        + f" (ε = {NORM_EPS:g}: {batch_norm_reference(col, NORM_EPS)[1, 0]:.4g})"
    )


def _effect_bn_running_var(m):
    factors = {fw: float(f) for fw, f in values_of(m, "running_var_factor").items()}
    n = BN_INPUT.shape[0]
    # evaluation output scale, unbiased vs biased running variance (σ² ≫ ε): √((n − 1)/n)
    scale = {b: float(np.sqrt((b - 1) / b)) for b in (n, 32)}
    return max(factors.values()) / min(factors.values()), (
        f"running var / biased batch var at n = {n}: "
        + ", ".join(f"{fw} {f:.4g}" for fw, f in factors.items())
        + "; evaluated with the unbiased running var, x̂ shrinks by √((n − 1)/n): "
        + ", ".join(f"{1 - v:.2%} at n = {b}" for b, v in scale.items())
        + "; training normalises with: "
        + listing(m, "normalisation")
    )


def _effect_bn_batch_of_one(m):
    def running(v):
        return f"running var {v['running_var'][0]:.6g}" if "running_var" in v else ""

    return None, (
        "one row in training: "
        + "; ".join(f"{fw} {v['outcome']} {running(v)}".rstrip() for fw, v in m.items())
        + " (a zero batch variance enters the running var; the unbiased estimator would divide by n − 1 = 0)"
    )


def _effect_fast_variance(m):
    errors = {fw: float(v["rel_error"]) for fw, v in m.items() if "rel_error" in v}
    if not errors:
        return None, "error > 1e-3: " + listing(m, "error_large")
    return max(errors.values()), (
        "float32 batch variance at |μ|/σ = 1e4, relative error vs two-pass float64: "
        + ", ".join(f"{fw} {e:.2g}" for fw, e in errors.items())
        + (
            f"; flax use_fast_variance=False: {m['jax']['exact_mode_rel_error']:.2g}"
            if "exact_mode_rel_error" in m.get("jax", {})
            else ""
        )
    )


def _effect_avg_pool(m):
    p = AVG_POOL_SAME
    return spread(m, "corner", f" on a {p['n']}×{p['n']} ones image, window {p['size']}, stride {p['stride']}, 'same'")


def _effect_layout(m):
    return None, (
        "conv input layout: "
        + listing(m, "layout")
        + "; kernel shape: "
        + listing(m, "kernel_shape")
        + "; default padding: "
        + listing(m, "default_padding")
        + f" (Parity: NHWC, (k, k, in, out), {CONV_PADDING_DEFAULT!r})"
    )


def _effect_pool_stride(m):
    p = POOL_DEFAULT
    return None, (
        f"{p['size']}×{p['size']} max pool without a stride on {p['n']}×{p['n']}: output size "
        + listing(m, "out_size")
        + "; stride "
        + listing(m, "default_stride")
    )


def _effect_bn_masked(m):
    offset = float(m["tf"]["divisor_offset"])
    real = int(BN_MASK.sum())
    return offset / real, (
        f"Keras's masked moments divide by (Σ mask + {offset:.3g}): mean and variance off by −δ/n, "
        f"{offset / real:.2g} relative at n = {real} real rows, {offset / 7:.2g} at 7, {offset / 128:.2g} at 128 "
        "(the float64 tolerance is 1e-9)"
        + (f"; flax δ = {float(m['jax']['divisor_offset']):.2g}" if "jax" in m else "")
    )


def _effect_stats_dtype(m):
    dtypes = listing(m, "stats_dtype")
    if "jax" not in m or "rel_error" not in m["jax"]:
        return None, "running statistics dtype in float64 layers: " + dtypes
    error = float(m["jax"]["rel_error"])
    return error, (
        f"running statistics dtype in float64 layers: {dtypes}; flax's running var after one step from 1: "
        f"{error:.3g} relative (0.99·1 in float32), already 9× the float64 tolerance of 1e-9"
    )


# --------------------------------------------------------------- effects of the data parallelism and accumulation traps
EPOCH_SPLIT = layout_epoch()  # SAMPLER's epoch split by common.distributed.Layout (the canonical per-rank rows)
UPDATES = accumulated_updates()  # ACCUMULATE's step under each reduction (common.distributed.Layout.part_scales)
N_REAL, G_STEP = len(AVERAGE_LOSS["losses"]), AVERAGE_LOSS["global_batch"]
# the divisor exact mode gives the ragged step's Σ w·ℓ: 1/s of Layout.part_scales (global_mean, A = 1) = Σ_step w
RAGGED_DIVISOR = 1.0 / float(Layout(micro=G_STEP).part_scales(np.array([[N_REAL]]), averaged=1)[0, 0])
PENALTY_REPLICAS = 2  # the replica count the penalty effect is stated for (the probe process has one)


def _effect_sampler_padding(m):
    v, n = m["torch"], SAMPLER["n"]
    extra = (v["counted"] - n) / n
    return extra, (
        f"{n} rows over {SAMPLER['replicas']} ranks: {v['total']} fed, ids {v['repeated_ids']} counted twice per "
        f"epoch (+{extra:.0%} weight), rank r takes every {v['stride']}th id; drop_last: {v['drop_last_total']} fed, "
        f"ids {v['drop_last_missing']} never seen; Layout.split: {EPOCH_SPLIT['total']} fed, "
        f"{EPOCH_SPLIT['counted']} counted (filler weight 0), ranks {EPOCH_SPLIT['per_rank']}"
    )


def _effect_sampler_order(m):
    v = m["torch"]
    return None, (
        f"rank {SAMPLER['rank']} of {SAMPLER['order_replicas']}, seed {SEED}: without set_epoch "
        f"{v['without_set_epoch'][0]} in epoch 0 and again in epoch 1; with set_epoch(e): "
        f"{v['with_set_epoch'][0]} then {v['with_set_epoch'][1]}"
    )


def _effect_mean_of_means(m):
    ratio = max(float(v["ratio"]) for v in m.values())
    sizes = [len(b) for b in ACCUMULATE["micro"]]
    n, k = sum(sizes), len(sizes)
    weights = ", ".join(f"{n / (k * s):.3g}× in the {s}-row micro-batch" for s in sizes)
    return ratio, (
        f"K = {k} micro-batches of {sizes} rows, SGD lr {ACCUMULATE['lr']}: update "
        + listing(m, "update")
        + f"; the global mean's {UPDATES['global_mean']:g} (×{ratio:.3g}); a row weighs {weights} "
        "against its global-mean weight"
    )


def _effect_average_loss(m):
    v = m["tf"]
    factor = RAGGED_DIVISOR / float(v["divisor_global_batch_size"])
    return factor, (
        f"a ragged step of {N_REAL} real rows, G = {G_STEP}: global_batch_size=G divides by "
        f"{v['divisor_global_batch_size']:g}, so the step's loss and gradient are ×{factor:.3g} of the real-row mean; "
        f"weight-0 filler with sample_weight divides by {v['divisor_sample_weight']:g}, not Σw = {N_REAL}; "
        f"without G (the default strategy, {v['num_replicas_in_sync']} replica) by {v['divisor_default']:g}"
    )


def _effect_replica_penalty(m):
    v = m["tf"]
    scale = Layout(replicas=PENALTY_REPLICAS, micro=PENALTY_REPLICAS).penalty_scale(averaged=1)
    return 1.0 / scale, (
        f"L2 penalty {v['penalty']:g} = {v['model_losses_factor']:g}·λΣw² in every replica's loss: summed over "
        f"R = {PENALTY_REPLICAS} replicas it counts {1 / scale:g}×; scale_regularization_loss here "
        f"({v['num_replicas_in_sync']} replica) ×{v['scale_factor']:g}; penalty_scale(A = 1) at R = "
        f"{PENALTY_REPLICAS}: {scale:g}"
    )


def _effect_accumulator(m):
    errors = {fw: float(v["rel_error"]) for fw, v in m.items() if "rel_error" in v}
    return max(errors.values()), (
        "accumulator dtype for float64 gradients: "
        + listing(m, "accumulator_dtype")
        + f"; mean of {list(ACCUMULATOR['grads'])} against Σg/K in float64: "
        + ", ".join(f"{fw} {e:.3g}" for fw, e in errors.items())
        + " relative (the float64 tolerance is 1e-9)"
    )


def _split_xhat(name: str, replicas: int = 1) -> np.ndarray:
    """BN_SPLIT's first `replicas` replicas' rows normalised (ε = NORM_EPS) with the split_statistics entry `name`."""
    stats = split_statistics()[name]
    rows = BN_SPLIT[: replicas * len(BN_SPLIT) // BN_REPLICAS]
    return (rows - np.array(stats["mean"])) / np.sqrt(np.array(stats["var"]) + NORM_EPS)


def _stats_text(name: str) -> str:
    stats = split_statistics()[name]
    return f"mean {tuple(round(v, 4) for v in stats['mean'])}, var {tuple(round(v, 4) for v in stats['var'])}"


def _effect_sync_cpu(m):
    return None, (
        "synchronised BatchNorm in training on the CPU: "
        + listing(m, "cpu_training")
        + (
            f"; torch without a process group: {m['torch']['no_group']} as a per-process BatchNorm "
            f"(= F.batch_norm of the local rows: {m['torch']['no_group_equals_local_batch_norm']}), "
            f"DDP of a CPU module holding one {m['torch']['ddp_cpu_module']}, torch.batch_norm_stats on CPU "
            f"{m['torch']['batch_norm_stats_cpu']}"
            if "torch" in m
            else ""
        )
    )


def _effect_bn_global_batch(m):
    size = float(np.max(np.abs(_split_xhat("first_replica") - _split_xhat("global_batch"))))
    jax = m.get("jax", {})
    extra = (
        f" (flax: jit {jax['statistics']}, vmap {jax['per_replica_statistics']}, "
        f"axis_name {jax['synchronised_statistics']})"
        if "per_replica_statistics" in jax
        else ""
    )
    return size, (
        f"statistics replica 0 of {BN_REPLICAS} trains with: "
        + listing(m, "statistics")
        + extra
        + f"; its own rows' {_stats_text('first_replica')}, the global batch's {_stats_text('global_batch')}: "
        f"x̂ of its rows moves by up to {size:.3g}"
    )


def _effect_bn_replica_stats(m):
    first = _split_xhat("first_replica", BN_REPLICAS)
    size = float(np.max(np.abs(first - _split_xhat("replica_mean", BN_REPLICAS))))
    return size, (
        "running statistics a data-parallel port keeps: "
        + listing(m, "kept")
        + f"; first replica's {_stats_text('first_replica')}, the replicas' average {_stats_text('replica_mean')} "
        f"(the pooled batch's var {tuple(split_statistics()['global_batch']['var'])}): evaluating all "
        f"{len(BN_SPLIT)} rows, x̂ moves by up to {size:.3g}"
    )


# ------------------------------------------------------------- effects of the clipping and schedule traps
CLIP_N = clip_boundary_norm()  # CLIP_BOUNDARY's global norm (5)
CLIP_CANONICAL = {"factor_at_c": clipping.scale(CLIP_N, CLIP_N), "factor_at_2c": clipping.scale(CLIP_N, CLIP_N / 2)}
SCOPES = clip_scope_references()  # CLIP_SCOPE clipped by common.clipping's global and per-tensor rules
DECAY_ORDERS = clip_decay_references()  # CLIP_DECAY's Δw: the canonical order and the others
REPLICA_CLIPS = {case: clip_replica_references(case) for case in ("agree", "opposed")}  # CLIP_REPLICAS' Δw
COSINE = schedule_table("cosine", decay_steps=SCHEDULE["decay_steps"], final_lr=SCHEDULE["final_lr"])
WARMUP_COSINE = schedule_table(
    "warmup_cosine",
    warmup_steps=SCHEDULE["warmup_steps"],
    decay_steps=SCHEDULE["decay_steps"],
    final_lr=SCHEDULE["final_lr"],
)
STEP_FIRST_TABLE = schedule_table("step", step_size=STEP_FIRST["step_size"], gamma=STEP_FIRST["gamma"])
PER_EPOCH_TABLE = schedule_table("step", step_size=PER_EPOCH["step_size"], gamma=PER_EPOCH["gamma"])
PER_EPOCH_STEPS = PER_EPOCH["steps_per_epoch"] * PER_EPOCH["epochs"]
COSINE_CANONICAL_LRS = schedule_lrs(COSINE, SCHEDULE["lr"], SCHEDULE["cosine_at"])
WARMUP_CANONICAL_LRS = schedule_lrs(WARMUP_COSINE, SCHEDULE["lr"], SCHEDULE["warmup_at"])
FLOAT32_TABLE = schedule_table("step", step_size=SCHEDULE_FLOAT32["decay_steps"], gamma=SCHEDULE_FLOAT32["decay_rate"])


def _effect_clip_epsilon(m):
    worst = max(
        abs(float(v[k]) - CLIP_CANONICAL[k]) / CLIP_CANONICAL[k] for v in m.values() for k in CLIP_CANONICAL if k in v
    )

    def factors(key):
        return ", ".join(f"{fw} {float(v):.10g}" for fw, v in values_of(m, key).items())

    return worst, (
        f"clip factor at n = c = {CLIP_N:g}: {factors('factor_at_c')}; at n = 2c: {factors('factor_at_2c')} "
        f"(min(1, c/n): {CLIP_CANONICAL['factor_at_c']:g}, {CLIP_CANONICAL['factor_at_2c']:g}); torch's shortfall "
        f"1 − n/(n + 1e-6) is {1 - CLIP_N / (CLIP_N + clipping.TORCH_EPS):.2g} here, "
        f"{1 - 1e-3 / (1e-3 + clipping.TORCH_EPS):.2g} at n = 1e-3: above the float64 rtol 1e-9 whenever it clips"
    )


def _effect_clip_scope(m):
    a, b = len(CLIP_SCOPE["a"]), len(CLIP_SCOPE["b"])
    glob = SCOPES["global"]
    measured = {fw: np.array([*v["a"], *v["b"]], np.float64) for fw, v in m.items() if "a" in v and "b" in v}
    worst = max(float(np.max(np.abs(x - glob) / np.abs(glob))) for x in measured.values())
    return worst, (
        "scope of the clip a port writes: "
        + listing(m, "scope")
        + f"; c = {CLIP_SCOPE['c']:g}, ‖a‖ = {np.linalg.norm(CLIP_SCOPE['a']):.3g}, ‖b‖ = "
        f"{np.linalg.norm(CLIP_SCOPE['b']):.3g}, n = {np.linalg.norm([*CLIP_SCOPE['a'], *CLIP_SCOPE['b']]):.3g}: "
        f"per variable, a ({a} values) is not clipped (×1 instead of ×{glob[0] / CLIP_SCOPE['a'][0]:.3g}) and b "
        f"({b} values) is scaled by ×{SCOPES['per_tensor'][-1] / CLIP_SCOPE['b'][-1]:.3g}; max relative change "
        f"{worst:.2g}"
    )


def _effect_clip_decay(m):
    canonical = np.array(DECAY_ORDERS["decay_then_clip"])
    updates = {fw: np.array(v["update"], np.float64) for fw, v in m.items() if "update" in v}
    worst = max(float(np.max(np.abs(u - canonical))) for u in updates.values())
    return worst, (
        "clip and coupled decay: "
        + listing(m, "order")
        + f"; one SGD step (lr {CLIP_DECAY['lr']:g}, λ {CLIP_DECAY['wd']:g}, c {CLIP_DECAY['c']:g}): the regularized "
        f"gradient clipped gives Δw = {DECAY_ORDERS['decay_then_clip']}, the decay added after the clip "
        f"{DECAY_ORDERS['clip_then_decay']} (max |Δ| = {worst:.3g}): the decay term escapes the clip"
    )


def _effect_clip_replicas(m):
    reduced = np.array(REPLICA_CLIPS["agree"]["reduced"])
    ratios = {fw: float(np.linalg.norm(v["update"]) / np.linalg.norm(reduced)) for fw, v in m.items() if "update" in v}
    worst = max(ratios.values())

    def updates(key):
        return ", ".join(f"{fw} {v[0]:g}" for fw, v in values_of(m, key).items())

    agree, opposed = (CLIP_REPLICAS[case] for case in ("agree", "opposed"))
    norms = {case: [float(np.linalg.norm(g)) for g in CLIP_REPLICAS[case]] for case in ("agree", "opposed")}
    return worst, (
        "clip placement under tf.distribute: "
        + listing(m, "placement")
        + f"; {len(agree)} replicas, global clip c = {CLIP_REPLICAS['c']:g}, Δw per entry: equal replicas (norms "
        f"{norms['agree'][0]:g}, the sum's {np.linalg.norm(np.sum(agree, axis=0)):g}) {updates('update')}, the "
        f"step's gradient clipped {REPLICA_CLIPS['agree']['reduced'][0]:g} (×{worst:.3g}: each replica's share "
        f"clipped to c lets the step's gradient reach R·c); opposed replicas (norms {norms['opposed'][0]:g} and "
        f"{norms['opposed'][1]:g}, the sum's {np.linalg.norm(np.sum(opposed, axis=0)):g}) {updates('opposed_update')}, "
        f"the step's gradient clipped {REPLICA_CLIPS['opposed']['reduced'][0]:g}"
    )


def _effect_lrs(key: str, steps, canonical: list[float], what: str):
    """An effect function: max |lr − canonical lr| over the read steps, with each framework's lrs."""

    def effect(m):
        lrs = {fw: np.array(v[key], np.float64) for fw, v in m.items() if key in v}
        worst = max(float(np.max(np.abs(x - np.array(canonical)))) for x in lrs.values())
        listed = "; ".join(f"{fw} {[round(float(x), 6) for x in v]}" for fw, v in lrs.items())
        return worst, (
            f"{what} at t = {list(steps)}: {listed}; common.schedules.lr {[round(x, 6) for x in canonical]} "
            f"(max |Δ| = {worst:.3g})"
        )

    return effect


def _effect_float32_schedule(m):
    lrs = {fw: float(v["lr"]) for fw, v in m.items()}
    base = SCHEDULE_FLOAT32["lr"]
    worst = max(abs(v - base) / base for v in lrs.values())
    return worst, (
        f"lr(0) of a schedule given lr₀ = {base:g} as a Python float, in a float64 run: "
        + ", ".join(f"{fw} {v!r} ({m[fw]['dtype']})" for fw, v in lrs.items())
        + f": {worst:.3g} relative, ×{worst / 1e-9:.3g} the float64 rtol 1e-9 at every step"
    )


CATALOGUE: tuple[Trap, ...] = (
    Trap(
        "shuffle_order",
        "Shuffle orders differ for the same seed",
        "Batching and order",
        {
            "torch": {"order": [4, 1, 7, 5, 3, 9, 0, 8, 6, 2]},
            "tf": {"order": [4, 9, 1, 0, 7, 3, 5, 2, 8, 6]},
            "jax": {"order": [0, 1, 8, 5, 6, 4, 3, 2, 7, 9]},
        },
        "common.batching.BatchPlan.order: one numpy permutation per epoch, default_rng([seed, 2, epoch]), fed to "
        "DataLoader(batch_sampler), tf.data slices and JAX indexing",
        compare=("order",),
        canonical={"order": np.random.default_rng(SEED).permutation(ORDER_N).tolist()},
        effect=_effect_orders,
    ),
    Trap(
        "dataloader_global_rng",
        "DataLoader draws from the global torch RNG every epoch, even with shuffle=False",
        "Batching and order",
        {"torch": {"draws_per_epoch": 1, "draws_per_epoch_own_generator": 0}},
        "backends.torch_backend.data: DataLoader(batch_sampler=plan, generator=its own torch.Generator); exact mode "
        "draws no dropout from torch at all (common.dropout.shared_masks)",
        compare=("draws_per_epoch",),
        canonical={"draws_per_epoch": 0},
        effect=lambda m: (
            m["torch"]["draws_per_epoch"],
            f"{m['torch']['draws_per_epoch']} int64 drawn from the "
            "global torch RNG per epoch: every later native dropout mask shifts",
        ),
    ),
    Trap(
        "tf_shuffle_buffer",
        "tf.data shuffle(buffer_size < N) is not a uniform permutation",
        "Batching and order",
        {"tf": {"first_element_support": [0, 1]}},
        "common.batching: the plan's permutation is fed as tf.data.Dataset.from_tensor_slices(x[ids]); no .shuffle()",
        compare=("first_element_support",),
        canonical={
            "first_element_support": sorted(
                {int(np.random.default_rng(e).permutation(ORDER_N)[0]) for e in range(SHUFFLE_EPOCHS)}
            )
        },
        effect=lambda m: (
            len(m["tf"]["first_element_support"]) / ORDER_N,
            f"over {SHUFFLE_EPOCHS} epochs the first element came from only "
            f"{len(m['tf']['first_element_support'])} of {ORDER_N} ids (buffer {SHUFFLE_BUFFER}); "
            "a uniform shuffle reaches all",
        ),
    ),
    Trap(
        "repeat_batch_epochs",
        "repeat().batch() batches across epoch boundaries",
        "Batching and order",
        {
            "torch": {"batches": [[0, 1, 2], [3, 4], [0, 1, 2], [3, 4]]},
            "tf": {
                "batches": [[0, 1, 2], [3, 4, 0], [1, 2, 3], [4]],
                "batch_then_repeat": [[0, 1, 2], [3, 4], [0, 1, 2], [3, 4]],
            },
        },
        "common.batching.BatchPlan cuts batches per epoch; backends.tf_backend.data builds one dataset per epoch "
        "and calls .batch() on it (never repeat().batch())",
        compare=("batches",),
        canonical={
            "batches": [
                b.ids.tolist() for e in range(2) for b in BatchPlan(ORDER_N_SMALL, 3, False, "keep", SEED).batches(e)
            ]
        },
        effect=_effect_crossing,
    ),
    Trap(
        "ragged_recompile",
        "A ragged last batch recompiles a compiled step (batch sizes 4, 4, 2, 3)",
        "Batching and order",
        {
            "torch": {"compiles": 2},
            "tf": {"compiles": 3, "compiles_input_signature": 1},
            "jax": {"compiles": 3, "compiles_padded": 1},
        },
        "common.batching last_batch='pad': static batch B, filler rows weight 0, loss Σw·ℓ/Σw "
        "(common.metrics.weighted_mean); the TF step has an input_signature with batch None",
        compare=("compiles",),
        effect=lambda m: (
            max(v["compiles"] for v in m.values()),
            "compiles for 4 calls of sizes 4,4,2,3: "
            + listing(m, "compiles")
            + " (torch.compile marks the dim dynamic after one recompile); padded/None-signature: 1",
        ),
        note="not only JAX: tf.function retraces for every new batch size too (3), and torch.compile recompiles "
        "once and then goes dynamic (2).",
    ),
    Trap(
        "keras_pad_sequences",
        "Keras pad_sequences pads and truncates at the front by default",
        "Padding and masks",
        {"tf": {"padded": [[0, 1], [3, 4]], "padding": "pre", "truncating": "pre"}},
        "common.padding: pad and truncate sides come from sequence.pad / sequence.truncate and reach Keras as "
        'pad_sequences(padding=…, truncating=…); sequence.pad = "native" keeps Keras\'s pre (common.explain '
        "names the divergence when the mask is off)",
        compare=("padded",),
        canonical={"padded": [[1, 0], [2, 3]]},
        effect=lambda m: (None, f"maxlen 2 of {SEQUENCES}: {m['tf']['padded']} (post/post: [[1, 0], [2, 3]])"),
    ),
    Trap(
        "torch_pad_sequence",
        "torch pad_sequence is time-major unless batch_first=True; pads at the end",
        "Padding and masks",
        {"torch": {"default": [[1, 2], [0, 3], [0, 4]], "batch_first": [[1, 0, 0], [2, 3, 4]]}},
        "common.padding: batch-major (B, T); the torch collate_fn calls pad_sequence(batch_first=True, "
        "padding_side=sequence.pad)",
        compare=("default",),
        canonical={"default": [[1, 0, 0], [2, 3, 4]]},
        effect=lambda m: (None, f"default output is T×B {m['torch']['default']}, not B×T"),
    ),
    Trap(
        "tf_padded_batch",
        "tf.data padded_batch pads at the end",
        "Padding and masks",
        {"tf": {"default": [[1, 0, 0], [2, 3, 4]]}},
        "common.padding: padded_batch matches post-padding; pre-padding reverses each sequence, pads, and reverses "
        "the time axis back",
        compare=("default",),
        canonical={"default": [[1, 0, 0], [2, 3, 4]]},
        effect=lambda m: (None, f"{m['tf']['default']}: batch-major, padded at the end"),
    ),
    Trap(
        "rnn_padded_outputs",
        "What an RNN outputs at padded steps: torch packed 0, Keras the last state, flax keeps computing",
        "Padding and masks",
        {
            "torch": {"padded_output": "zero"},
            "tf": {"padded_output": "last_state"},
            "jax": {"padded_output": "computed"},
        },
        "common.padding: the models read only the state after each row's last real token (torch h_n of the packed "
        "sequence, Keras SimpleRNN's masked final state, flax nn.RNN's carry at seq_lengths), never the padded "
        "outputs",
        compare=("padded_output",),
        effect=lambda m: (None, ", ".join(f"{fw} {v['padded_output']}" for fw, v in m.items())),
    ),
    Trap(
        "pack_padded_pre",
        "torch pack_padded_sequence assumes post-padding: a pre-padded row packs its pads",
        "Padding and masks",
        {"torch": {"pre_padded_equals_real": False}},
        "the torch adapter packs pre-padded batches from their real tokens (torch_backend.sequence); "
        "common.padding defines the masked result as independent of the pad side",
        compare=("pre_padded_equals_real",),
        canonical={"pre_padded_equals_real": True},
        effect=lambda m: (
            None,
            "h_n of a pre-padded row packed with its length is the state after the pads and the "
            "first real tokens, not after the real tokens",
        ),
    ),
    Trap(
        "rnn_bias_vectors",
        "torch nn.RNN trains two bias vectors (b_ih + b_hh); Keras and flax one",
        "Padding and masks",
        {
            "torch": {"bias_vectors": 2, "effective_bias_step": 2.0},
            "tf": {"bias_vectors": 1},
            "jax": {"bias_vectors": 1},
        },
        "common.initializers: one canonical rnn.bias; the torch adapter loads it into bias_ih_l0 and freezes "
        "bias_hh_l0 at 0, so the effective bias gets one gradient step, not two",
        compare=("bias_vectors",),
        canonical={"bias_vectors": 1, "effective_bias_step": 1.0},
        rtol=1e-6,
        effect=lambda m: (
            (
                m["torch"].get("effective_bias_step"),
                f"one SGD step moves torch's b_ih + b_hh by {m['torch'].get('effective_bias_step'):g}× lr·∂L/∂b",
            )
            if "torch" in m
            else (None, "")
        ),
    ),
    Trap(
        "sparse_embedding_adam",
        "Keras Adam squares an Embedding's sparse gradient per occurrence",
        "Optimisers",
        {
            "torch": {"second_moment": "squared_sum"},
            "tf": {"second_moment": "sum_of_squares"},
            "jax": {"second_moment": "squared_sum"},
        },
        "exact mode densifies the Embedding's tf.IndexedSlices gradient before Keras Adam/AdamW "
        "(tf_backend.execution.step_body(dense_gradients=True)); Adam's v is defined on the row's whole gradient "
        "(common.optim)",
        compare=("second_moment",),
        canonical={"second_moment": "squared_sum"},
        effect=lambda m: (
            None,
            "a token seen k times in a batch: Keras v gets Σ g_k², not (Σ g_k)², so its Adam "
            "step differs from the second step on (with an l1/l2 penalty on the embedding the "
            "gradient is dense and the trap hides)",
        ),
    ),
    Trap(
        "masked_mean_loss",
        "Masked mean loss: valid-entry mean, NaN or per-example",
        "Padding and masks",
        {
            "torch": {"reduction": "weighted_mean", "all_masked": "nan"},
            "tf": {
                "reduction": "weighted_mean",
                "all_masked": 0.0,
                "ignore_class": "weighted_mean",
                "ignore_class_all_masked": 0.0,
            },
            "jax": {"reduction": "per_example", "all_masked": "per_example"},
        },
        "common.padding.masked_mean: loss = Σm·ℓ/max(Σm, 1) with m = w (per sequence) or w·L (per token): equal "
        "to Σm·ℓ/Σm whenever a row counts, 0 (Keras's value) for an all-padded batch, never NaN",
        compare=("reduction", "all_masked"),
        effect=_effect_masked,
    ),
    Trap(
        "sample_weight_reduction",
        "Keras sample_weight divides by N, not Σw",
        "Padding and masks",
        {
            "torch": {"default": "weighted_mean"},
            "tf": {"default": "sum_over_n", "mean_with_sample_weight": "weighted_mean"},
            "jax": {"default": "per_example"},
        },
        "common.metrics.weighted_mean (Σw·ℓ/Σw); backends.tf_backend: reduction='mean_with_sample_weight'",
        compare=("default",),
        canonical={"default": "weighted_mean"},
        effect=lambda m: (
            float(LOSS_MASK.sum() / LOSS_MASK.size),
            "default reductions: "
            + listing(m, "default")
            + f"; Keras's default is Σw/N = {LOSS_MASK.sum() / LOSS_MASK.size:g} × the weighted mean",
        ),
        note="torch has no sample_weight; its CrossEntropyLoss(weight=class weights) is measured and divides by Σw.",
    ),
    Trap(
        "dropout_scale",
        "Inverted dropout: how kept values are scaled (float32, p = 0.3 and 0.45)",
        "Dropout",
        {
            "torch": {"form": "x*fl(1/fl(1-p))", "scale_0.3": 1.4285714626312256, "scale_0.45": 1.8181817531585693},
            "tf": {
                "form": "x*fl(1/(1-p))",
                "scale_0.3": 1.4285714626312256,
                "scale_0.45": 1.8181818723678589,
                "tf.nn.dropout": "x*fl(1/(1-p))",
            },
            "jax": {
                "form": "x*fl(1/fl(1-p))",
                "scale_0.3": 1.4285714626312256,
                "scale_0.45": 1.8181817531585693,
                "jit_form": "x*fl(1/fl(1-p))",
            },
        },
        "common.dropout.shared_masks: h · m with m = keep · fl(1/(1−p)) (keep_scale in float64, then the spec "
        "dtype), an explicit multiply in every backend, so the frameworks' own rounding never enters exact mode",
        compare=("form", "scale_0.3", "scale_0.45"),
        canonical={
            "form": "x*fl(1/(1-p))",
            **{f"scale_{p:g}": float(np.float32(keep_scale(p))) for p in DROPOUT_RATES},
        },
        effect=lambda m: (
            spread(m, "scale_0.45")[0],
            "kept value: " + listing(m, "form") + "; scale at p = 0.3 equal everywhere "
            f"({float(np.float32(keep_scale(0.3))):.9g}), at p = 0.45: "
            + ", ".join(f"{fw} {v['scale_0.45']:.9g}" for fw, v in m.items())
            + " (1 float32 ulp)",
        ),
        note="torch "
        "(mask.div_(1 − p) in float32) and flax (x / keep_prob, which XLA rewrites into "
        "x · fl(1/keep_prob)) both multiply by the reciprocal of the float32-rounded 1 − p, while "
        "Keras/tf.nn.dropout multiply by 1/(1 − p) computed in float64 and then rounded. At p = 0.3 the "
        "two agree bit for bit; at p = 0.15 or 0.45 they differ by one float32 ulp.",
    ),
    Trap(
        "dropout_default_mode",
        "Dropout default mode: F.dropout and nnx.Dropout active, Keras Dropout off",
        "Dropout",
        {
            "torch": {"default_call": "active", "nn.Dropout": "active"},
            "tf": {"default_call": "inactive", "tf.nn.dropout": "active"},
            "jax": {"default_call": "active", "linen.Dropout": "ValueError"},
        },
        "common.driver: exact mode multiplies by the shared mask in train steps only; evaluation passes no mask",
        compare=("default_call",),
        effect=lambda m: (None, "called without a mode: " + listing(m, "default_call")),
        note="flax.linen.Dropout (the linen API the JAX backend uses) has no default: called without "
        "`deterministic` it raises ValueError; only nnx.Dropout is active by default.",
    ),
    Trap(
        "dropout_rate_one",
        "Dropout at rate 1.0: layers give zeros, raw tf.nn.dropout raises",
        "Dropout",
        {
            "torch": {"layer": "zeros", "functional": "zeros"},
            "tf": {"layer": "zeros", "functional": "ValueError"},
            "jax": {"layer": "zeros", "nnx": "zeros"},
        },
        "common.spec rejects dropout ≥ 1; exact mode never calls a framework dropout (common.dropout.shared_masks)",
        compare=("layer", "functional"),
        effect=lambda m: (None, "layer: " + listing(m, "layer") + "; functional: " + listing(m, "functional")),
    ),
    Trap(
        "l2_vs_weight_decay",
        "SGD weight_decay=λ gives λw, Keras L2(λ) gives 2λw",
        "Regularisation",
        {
            "torch": {"grad_per_lambda": 1.0},
            "tf": {"grad_per_lambda": 2.0, "converted": 1.0},
            "jax": {"grad_per_lambda": 1.0},
        },
        "common.regularization: coupled c → torch weight_decay=c, Keras L2(c/2) (the tf backend's L2 factor "
        "f = c/2 (backends.tf_backend.optim)), optax add_decayed_weights(c)",
        compare=("grad_per_lambda",),
        effect=effect_ratio("grad_per_lambda", "penalty gradient / (λ·w)"),
    ),
    Trap(
        "penalty_in_loss",
        "Keras reports regularizer penalties in the loss; torch weight_decay is not in it",
        "Regularisation",
        {
            "torch": {"reported_loss_includes_penalty": False},
            "tf": {"reported_loss_includes_penalty": True, "evaluate_includes_penalty": True},
            "jax": {"reported_loss_includes_penalty": False},
        },
        "common.record: the step loss is the cross-entropy alone (penalty recorded beside it, "
        "common.regularization.Regularization.penalty); the TF adapter returns ce, not ce + Σ model.losses",
        compare=("reported_loss_includes_penalty",),
        canonical={"reported_loss_includes_penalty": False},
        effect=lambda m: (
            m["tf"]["penalty"],
            f"Keras fit/evaluate loss = CE + Σ model.losses (+{m['tf']['penalty']:.4g} in the probe)",
        ),
    ),
    Trap(
        "optimizer_weight_decay",
        "Keras optimizer weight_decay is decoupled and decays biases too",
        "Regularisation",
        {
            "torch": {"sgd_has_weight_decay": True, "kernel": "coupled", "bias": "coupled"},
            "tf": {"sgd_has_weight_decay": True, "kernel": "decoupled", "bias": "decoupled"},
            "jax": {"sgd_has_weight_decay": False},
        },
        "common.regularization: coupled c → Keras L2(c/2); decoupled d → optimizer weight_decay=d with "
        "exclude_from_weight_decay for tensors Regularization.applies rejects (biases unless regularize_bias)",
        compare=("kernel", "bias"),
        effect=lambda m: (
            abs(sgd_decay_reference(True) - sgd_decay_reference(False)),
            f"SGD(momentum {DECAY['momentum']}, wd {DECAY['wd']}) from w = 1, 2 steps: coupled "
            f"{sgd_decay_reference(True)} vs decoupled {sgd_decay_reference(False)}; kernel: " + listing(m, "kernel"),
        ),
    ),
    Trap(
        "adam_weight_decay_equivalence",
        "torch Adam(wd) = chain(add_decayed_weights, adam); AdamW = optax.adamw",
        "Regularisation",
        {
            "torch": {"adam_coupled": adam_reference("coupled"), "adamw": adam_reference("decoupled")},
            "jax": {"adam_coupled": adam_reference("coupled"), "adamw": adam_reference("decoupled")},
        },
        "common.regularization: coupled c → torch Adam(weight_decay=c) / optax add_decayed_weights(c) before adam; "
        "decoupled d → AdamW(d) / optax.adamw(d, mask)",
        compare=("adam_coupled", "adamw"),
        rtol=1e-12,
        atol=1e-15,
        effect=_effect_adam_equiv,
        note="torch AdamW and optax.adamw agree to rounding only, not bit for bit: 2.2e-16 (1 ulp) after 5 float64 "
        "steps, 3.8e-6 in float32 with x64 off (optax then evaluates 1 − βᵗ in float32), 1.2e-7 in float32 with "
        "x64 on.",
    ),
    Trap(
        "optax_decay_mask",
        "optax.add_decayed_weights(mask=None) decays biases",
        "Regularisation",
        {"jax": {"kernel_decayed": True, "bias_decayed": True}},
        "common.regularization.Regularization.applies → the optax mask pytree (backends.jax_backend.optim); "
        "biases only with regularize_bias",
        compare=("bias_decayed",),
        canonical={"bias_decayed": False},
        effect=lambda m: (None, "mask=None decays every leaf, biases included"),
    ),
    Trap(
        "abs_subgradient",
        "Gradient of |x| at 0",
        "Regularisation",
        {
            "torch": {"grad_abs_at_0": 0.0},
            "tf": {"grad_abs_at_0": 0.0, "keras_l1_grad_at_0": 0.0},
            "jax": {"grad_abs_at_0": 1.0},
        },
        "common.regularization.Regularization.gradient: f·sign(w), sign(0) = 0; the JAX chain adds sign(w) "
        "explicitly (backends.jax_backend.optim.l1_sign)",
        compare=("grad_abs_at_0",),
        canonical={"grad_abs_at_0": 0.0},
        effect=lambda m: spread(m, "grad_abs_at_0"),
    ),
    Trap(
        "adam_eps_default",
        "Adam ε default",
        "Optimisers",
        {"torch": {"eps": 1e-8}, "tf": {"eps": 1e-7}, "jax": {"eps": 1e-8}},
        "the spec's optimizer.eps is passed explicitly; Keras gets common.optim.keras_epsilon_hat(eps, β2, t)",
        compare=("eps",),
        effect=effect_ratio("eps", "default ε"),
    ),
    Trap(
        "keras_epsilon_hat",
        "Keras Adam's ε-hat form differs from torch even at ε = 1e-8",
        "Optimisers",
        {"torch": {"eps_1e-8": 0.0}, "tf": {"eps_1e-8": 0.2326556, "eps_hat": 0.0}, "jax": {"eps_1e-8": 0.0}},
        "common.optim.keras_epsilon_hat: Keras ε̂_t = ε·√(1 − β2ᵗ) assigned before every step "
        "(backends.tf_backend.optim)",
        compare=("eps_1e-8",),
        canonical={"eps_1e-8": 0.0},
        rtol=1e-4,
        atol=1e-12,
        effect=lambda m: (
            m["tf"]["eps_1e-8"],
            f"first-step update, max relative error vs torch's ε placement: "
            f"Keras ε=1e-8 {m['tf']['eps_1e-8']:.3g}, Keras ε̂₁ {m['tf']['eps_hat']:.3g} "
            f"(g = {EPS_HAT['grad']})",
        ),
    ),
    Trap(
        "sgd_momentum_schedule",
        "SGD momentum: Keras m = μm − lr·g vs torch b = μb + g under an lr change",
        "Optimisers",
        {
            "torch": {"constant_lr": -2.125, "lr_changed": -1.6875},
            "tf": {"constant_lr": -2.125, "lr_changed": -1.875},
            "jax": {"constant_lr": -2.125, "lr_changed": -1.6875},
        },
        "common.optim: torch's b ← μb + g, w ← w − lr_t·b under any lr(t) (common.schedules); torch SGD and "
        "optax.sgd (trace, then scale_by_learning_rate) are that form. Keras's m ← μm − lr_t·g equals −lr_t·b only "
        "while lr is constant, so exact mode uses a keras.optimizers.SGD subclass whose update_step keeps torch's "
        "form (b ← μb + g; w ← w − lr_t·b; nesterov w ← w − lr_t·(g + μb)), built by backends.tf_backend.optim "
        "(rescaling m by lr_t/lr_{t−1} instead gives NaN after a warmup from lr 0); idiom keras_sgd_momentum keeps "
        "plain Keras SGD",
        compare=("constant_lr", "lr_changed"),
        canonical={"constant_lr": sgd_momentum_reference(False), "lr_changed": sgd_momentum_reference(True)},
        effect=lambda m: spread(
            m,
            "lr_changed",
            f" after {MOMENTUM['steps']} steps, lr {MOMENTUM['lr']} → "
            f"{MOMENTUM['lr_after']} at step {MOMENTUM['change_at']}",
        ),
    ),
    Trap(
        "default_init",
        "Default Dense initialisers (fan_in 100, fan_out 2000; statistics · √fan_in)",
        "Initialisation",
        {
            "torch": {"weight_std": 0.57735, "weight_max": 1.0, "bias_max": 1.0},
            "tf": {"weight_std": 0.30861, "weight_max": 0.53452, "bias_max": 0.0},
            "jax": {"weight_std": 1.0, "weight_max": 2.27370, "bias_max": 0.0},
        },
        "common.layers.init_params(spec model.init): one numpy init (torch_default | glorot_uniform | "
        "lecun_normal) copied into every framework",
        compare=("weight_std", "bias_max"),
        rtol=0.02,
        atol=1e-12,
        effect=_effect_init,
    ),
    Trap(
        "weight_layout",
        "Weight layout: torch Linear (out, in), Keras/flax kernel (in, out)",
        "Initialisation",
        {"torch": {"weight_shape": [2, 3]}, "tf": {"weight_shape": [3, 2]}, "jax": {"weight_shape": [3, 2]}},
        "common.initializers: canonical layer{i}.weight is (in, out); backends.torch_backend.model transposes on "
        "load and export",
        compare=("weight_shape",),
        canonical={"weight_shape": [3, 2]},
        effect=lambda m: (None, "Linear/Dense 3 → 2: " + listing(m, "weight_shape")),
    ),
    Trap(
        "loss_input_defaults",
        "Keras SparseCategoricalCrossentropy takes probabilities by default and clips them",
        "Losses and metrics",
        {
            "torch": {"input": "logits", "zero_prob_loss": "inf"},
            "tf": {"input": "probabilities", "from_logits": False, "zero_prob_loss": 16.118095},
            "jax": {"input": "logits", "zero_prob_loss": "inf"},
        },
        "common.metrics.cross_entropy on logits (ℓ = logsumexp(z) − z_y); the TF adapter uses "
        "SparseCategoricalCrossentropy(from_logits=True)",
        compare=("input", "zero_prob_loss"),
        rtol=1e-6,
        effect=lambda m: (
            None,
            "default input: "
            + listing(m, "input")
            + "; loss of a zero-probability label: "
            + listing(m, "zero_prob_loss")
            + " (Keras clips p to [1e-7, 1 − 1e-7]: −log 1e-7)",
        ),
    ),
    Trap(
        "fit_epoch_loss",
        "Keras fit's epoch loss is a running mean, not the loss of the final weights",
        "Losses and metrics",
        {"tf": {"fit_epoch_loss": "size_weighted_running_mean"}},
        "common.driver: exact mode evaluates train_loss after the epoch in eval mode (common.metrics.aggregate); "
        "native mode reproduces fit's common.native.running_epoch_loss",
        compare=("fit_epoch_loss",),
        canonical={"fit_epoch_loss": "final_weights"},
        effect=lambda m: (
            m["tf"]["fit"] - m["tf"]["final_weights"],
            f"fit reports {m['tf']['fit']:.5g}, the final weights give {m['tf']['final_weights']:.5g} "
            "(10 rows, batches 4, 4, 2, one epoch)",
        ),
    ),
    Trap(
        "metric_aggregation",
        "Per-batch-mean accuracy vs sample-weighted; Keras evaluate is sample-weighted",
        "Losses and metrics",
        {"tf": {"evaluate": "weighted", "batch_size_invariant": True}},
        "common.metrics.aggregate(spec metrics.aggregation): 'weighted' Σ S_b / Σ n_b by default; "
        "'per_batch_mean' reproduces the seeds' banding",
        compare=("evaluate",),
        canonical={"evaluate": "weighted"},
        effect=lambda m: (
            m["tf"]["per_batch_mean"] - m["tf"]["weighted"],
            f"same predictions, batches 4, 4, 2: weighted {m['tf']['weighted']:.3g}, "
            f"per-batch mean {m['tf']['per_batch_mean']:.3g}",
        ),
    ),
    Trap(
        "float64_conversion",
        "jnp.asarray(float64) becomes float32 unless x64 is on",
        "Precision",
        {
            "torch": {"dtype": "float64"},
            "tf": {"dtype": "float64", "keras.ops": "float64"},
            "jax": {"dtype": "float32", "with_x64": "float64"},
        },
        "backends.jax_backend.adapter enables jax_enable_x64 for every spec and casts every array to the spec dtype "
        "explicitly (backends.jax_backend.data)",
        compare=("dtype",),
        canonical={"dtype": "float64"},
        effect=lambda m: (None, "float64 numpy array converted: " + listing(m, "dtype")),
    ),
    Trap(
        "tf32_defaults",
        "TF32 default settings (fresh process)",
        "Precision",
        {
            "torch": {"matmul_tf32": False, "cudnn_tf32": True, "float32_matmul_precision": "highest"},
            "tf": {"matmul_tf32": True},
            "jax": {"matmul_tf32": "platform default", "default_matmul_precision": None},
        },
        "backends.torch_backend.adapter sets allow_tf32 = False (matmul, cuDNN) on CUDA; backends.jax_backend.core "
        "uses precision=HIGHEST; the settings are the defaults, the GPU decides whether TF32 is used",
        compare=("matmul_tf32",),
        effect=lambda m: (None, "matmul TF32: " + listing(m, "matmul_tf32")),
        note="these are the settings only; on this CPU machine no TF32 arithmetic happens. jax's "
        "jax_default_matmul_precision is None (backend default), which the GPU backend runs as TF32/bf16 "
        "passes on Ampere+.",
    ),
    Trap(
        "keras_auto_jit",
        "Keras jit_compile='auto' and op determinism",
        "Precision",
        {"tf": {"model_supports_jit": True, "with_op_determinism": False}},
        "none needed: the TF backend runs its own tf.function step (jit_compile is not used)",
        effect=lambda m: (
            None,
            f"model_supports_jit: {m['tf']['model_supports_jit']}; with op determinism on: "
            f"{m['tf']['with_op_determinism']}; 'auto' resolved to {m['tf']['auto_resolved']} here "
            f"(GPU: {m['tf']['gpu']})",
        ),
        note="on a CPU-only machine 'auto' resolves to False before determinism is consulted; the "
        "determinism switch is only visible through keras' model_supports_jit.",
    ),
    Trap(
        "last_batch_default",
        "Default last-batch handling keeps the partial batch",
        "Batching and order",
        {"torch": {"keeps_partial": True}, "tf": {"keeps_partial": True, "fit_steps": 3}},
        "common.batching: spec batching.last_batch (keep | drop | pad), default keep",
        compare=("keeps_partial",),
        canonical={"keeps_partial": True},
        effect=lambda m: (None, "10 rows, batch 4: DataLoader and Keras fit both run 3 steps (4, 4, 2)"),
    ),
    Trap(
        "keras_validation_split",
        "Keras fit(validation_split) takes the last rows, before shuffling",
        "Batching and order",
        {"tf": {"validation_rows": "last"}},
        "common.datasets: a seeded split of its own (test_fraction); validation_split is never used",
        effect=lambda m: (
            None,
            f"validation_split=0.2 of 10 rows validated on the {m['tf']['validation_rows']} "
            "2 rows even with shuffle=True",
        ),
    ),
    Trap(
        "keras_float64_hyper",
        "Keras casts Python-float hyperparameters through float32 in float64 runs",
        "Precision",
        {"tf": {"cast_python_0.9": 0.8999999761581421, "cast_numpy_0.9": 0.9, "sgd_rel_error_numpy_momentum": 0.0}},
        "backends.tf_backend.optim.hyper: hyperparameters go to Keras as numpy float64 scalars in float64 runs",
        compare=("cast_python_0.9",),
        canonical={"cast_python_0.9": 0.9},
        rtol=1e-15,
        effect=lambda m: (
            m["tf"]["sgd_rel_error_python_momentum"],
            f"ops.cast(0.9, float64) = {m['tf']['cast_python_0.9']!r}; SGD(momentum=0.9) float64 "
            f"after 2 steps is off by {m['tf']['sgd_rel_error_python_momentum']:.2g} relative",
        ),
        note="found by the TF backend (see backends.tf_backend.optim); "
        "it alone exceeds the float64 rtol of 1e-9 within a few Adam steps.",
    ),
    Trap(
        "layer_norm_eps",
        "LayerNorm ε default: torch 1e-5, Keras 1e-3, flax 1e-6 (variance biased in all three)",
        "Layer stacks",
        {
            "torch": {"eps": 1e-5, "measured_eps": 1e-5, "variance": "biased", "explicit_eps": NORM_EPS},
            "tf": {"eps": 1e-3, "measured_eps": 1e-3, "variance": "biased", "explicit_eps": NORM_EPS},
            "jax": {"eps": 1e-6, "measured_eps": 1e-6, "variance": "biased", "explicit_eps": NORM_EPS},
        },
        "pass eps explicitly (torch nn.LayerNorm(eps=ε), Keras LayerNormalization(epsilon=ε), flax "
        "nn.LayerNorm(epsilon=ε, use_fast_variance=False)): ε is the layer's eps, default model.norm_eps "
        "(common.layers layer_norm, biased two-pass variance; flax's default fast variance E[x²] − μ² loses "
        "float32 digits when |μ| ≫ σ)",
        compare=("eps", "variance"),
        canonical={"eps": NORM_EPS, "variance": "biased"},
        rtol=1e-6,
        effect=_effect_layer_norm,
    ),
    Trap(
        "conv_same_stride2",
        "'same' padding at stride 2: TF pads (0, 1); a torch port's padding=1 reaches (1, 0)",
        "Images and BatchNorm",
        {
            "torch": {
                "pads": [1, 0, 1, 0],
                "out_size": 4,
                "same_at_stride_2": "raises: ValueError",
                "exact_pads": SAME_PADS,
            },
            "tf": {"pads": SAME_PADS, "out_size": 4},
            "jax": {"pads": SAME_PADS, "out_size": 4},
        },
        "common.layers.image.same_pads (TF's rule, the odd pixel bottom/right) resolved into Layer.pads: torch "
        "F.pad(x, (left, right, top, bottom)) then nn.Conv2d(padding=0), flax nn.Conv(padding=((top, bottom), "
        "(left, right))), Keras Conv2D(padding='same') (TF's rule already); native mode writes padding=k // 2 "
        "(common.native.symmetric_pads)",
        compare=("pads", "out_size"),
        canonical={
            "pads": SAME_PADS,
            "out_size": out_size(CONV_SAME["n"], CONV_SAME["kernel"], CONV_SAME["stride"], "same"),
        },
        effect=_effect_pads(
            lambda pads: conv2d_reference(conv_ramp(CONV_SAME["n"]), CONV_KERNEL, CONV_SAME["stride"], pads), "conv"
        ),
        note="torch declares (1, 1) but at n = 8 its last window ends on row 7, so the bottom pad is never read: "
        "the windows are shifted one pixel up-left against TF's, which every output shows. "
        "nn.Conv2d(padding='same') refuses stride 2 outright (ValueError).",
    ),
    Trap(
        "flatten_order",
        "Flatten order: torch x.flatten(1) on NCHW is channel-major, Keras and flax NHWC",
        "Images and BatchNorm",
        {
            "torch": {"order": [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11], "exact": list(range(12))},
            "tf": {"order": list(range(12)), "channels_first_order": list(range(12))},
            "jax": {"order": list(range(12))},
        },
        "common.layers.image flatten: canonical NHWC order (h·W + w)·C + c; torch exact mode permutes NCHW → NHWC "
        "before flatten(1) (backends.torch_backend.image), so the following dense weight keeps its canonical rows; "
        "native mode keeps x.flatten(1) on NCHW",
        compare=("order",),
        canonical={"order": list(range(int(np.prod(FLATTEN_HWC))))},
        effect=_effect_flatten,
        note="Keras Flatten(data_format='channels_first') permutes to channels-last before flattening, so Keras "
        "gives the NHWC order in both layouts; linen has no Flatten layer (x.reshape(B, -1) is the idiom).",
    ),
    Trap(
        "bn_momentum_convention",
        "BatchNorm momentum: torch weighs the new statistic (0.1), Keras and flax the old value (0.99)",
        "Images and BatchNorm",
        {
            "torch": {"default_momentum": 0.1, "default_fraction": 0.1, "fraction_at_0.9": 0.9},
            "tf": {"default_momentum": 0.99, "default_fraction": 0.01, "fraction_at_0.9": 0.1},
            "jax": {"default_momentum": 0.99, "default_fraction": 0.01, "fraction_at_0.9": 0.1},
        },
        "common.layers batch_norm momentum m in the decay convention (running ← m·running + (1 − m)·batch, "
        f"default {BN_DEFAULT_MOMENTUM}): Keras and flax get momentum=m, torch momentum=1 − m",
        compare=("default_fraction", "fraction_at_0.9"),
        canonical={"default_fraction": 1 - BN_DEFAULT_MOMENTUM, "fraction_at_0.9": 1 - BN_MOMENTUM},
        rtol=1e-12,
        effect=_effect_bn_momentum,
    ),
    Trap(
        "bn_eps_default",
        "BatchNorm ε default: torch 1e-5, Keras 1e-3, flax 1e-5",
        "Images and BatchNorm",
        {
            "torch": {"eps": 1e-5, "measured_eps": 1e-5, "variance": "biased", "explicit_eps": NORM_EPS},
            "tf": {"eps": 1e-3, "measured_eps": 1e-3, "variance": "biased", "explicit_eps": NORM_EPS},
            "jax": {"eps": 1e-5, "measured_eps": 1e-5, "variance": "biased", "explicit_eps": NORM_EPS},
        },
        "pass eps explicitly (torch BatchNorm(eps=ε), Keras BatchNormalization(epsilon=ε), flax "
        "nn.BatchNorm(epsilon=ε)): ε is the layer's eps, default model.norm_eps (common.layers batch_norm)",
        compare=("eps", "variance"),
        canonical={"eps": NORM_EPS, "variance": "biased"},
        rtol=1e-6,
        effect=_effect_bn_eps,
    ),
    Trap(
        "bn_running_var",
        "BatchNorm running variance: torch keeps the unbiased n/(n − 1) estimate, Keras and flax the biased one",
        "Images and BatchNorm",
        {
            "torch": {"n": 4, "running_var_factor": 4 / 3, "estimator": "unbiased", "normalisation": "biased"},
            "tf": {"n": 4, "running_var_factor": 1.0, "estimator": "biased", "normalisation": "biased"},
            "jax": {"n": 4, "running_var_factor": 1.0, "estimator": "biased", "normalisation": "biased"},
        },
        "common.layers batch_norm running_var = 'biased' | 'unbiased' (default biased): where the framework's own "
        "estimator differs, only its running-variance update is replaced by common.layers.norm.convert_running_var "
        "(old, updated, m, f), f = (n − 1)/n for torch → biased, n/(n − 1) for Keras/flax → unbiased; the "
        "normalisation (biased everywhere) is never touched",
        compare=("running_var_factor", "normalisation"),
        canonical={"running_var_factor": 1.0, "normalisation": "biased"},
        rtol=1e-12,
        effect=_effect_bn_running_var,
    ),
    Trap(
        "bn_batch_of_one",
        "BatchNorm on a training batch of one row: torch raises, Keras and flax return β",
        "Images and BatchNorm",
        {
            "torch": {"outcome": "raises: ValueError", "message_names_rule": True, "conv_batch_of_one": "returns"},
            "tf": {"outcome": "returns beta", "output": [[0.0, 0.0]], "running_var": [0.99, 0.99]},
            "jax": {"outcome": "returns beta", "output": [[0.0, 0.0]], "running_var": [0.99, 0.99]},
        },
        "common.layers.norm.check_batch_statistics refuses the plan before any backend starts when a step gives a "
        "batch_norm fewer than 2 values per channel (one real row after a dense layer): exit 2, naming the step "
        "and the fixes (last_batch = 'drop', another batch_size)",
        compare=("outcome",),
        rtol=1e-6,
        effect=_effect_bn_batch_of_one,
        note="torch's rule is per channel, not per row: BatchNorm2d trains on one 2×2 image (4 values per "
        "channel). Keras and flax normalise x − μ = 0 to β and fold the zero batch variance into the running "
        "variance (1 → 0.99 at the default momentum).",
    ),
    Trap(
        "bn_fast_variance",
        "flax BatchNorm's default variance E[x²] − E[x]² loses float32 digits when |μ| ≫ σ",
        "Images and BatchNorm",
        {
            "torch": {"error_large": False},
            "tf": {"error_large": False},
            "jax": {"use_fast_variance": True, "error_large": True, "exact_mode_error_large": False},
        },
        "exact mode passes flax nn.BatchNorm(use_fast_variance=False) (backends.jax_backend.norm): the two-pass "
        "σ²_b = mean((x − μ)²) of common.layers batch_norm, as torch and Keras's tf.nn.moments compute it; native "
        "mode keeps flax's fast default",
        compare=("error_large",),
        canonical={"error_large": False},
        effect=_effect_fast_variance,
        note="Keras's TF moments are two-pass (tf.nn.moments) unless synchronized=True under a distribution "
        "strategy, which sums x and x² (E[x²] − E[x]²); flax's LayerNorm shares the same fast default "
        "(layer_norm_eps). The float32 error itself is platform dependent; only > 1e-3 is recorded.",
    ),
    Trap(
        "avg_pool_same_count",
        "Average pooling with 'same' padding: Keras divides by the real pixels, torch and flax by k²",
        "Images and BatchNorm",
        {
            "torch": {"corner": 4 / 9, "edge": 6 / 9, "count_include_pad": True, "corner_count_include_pad_false": 1.0},
            "tf": {"corner": 1.0, "edge": 1.0},
            "jax": {"corner": 4 / 9, "edge": 6 / 9, "count_include_pad": True, "corner_count_include_pad_false": 1.0},
        },
        "common.layers.image avg_pool divides by the count of real pixels (TF's rule): torch zero-pads by "
        "Layer.pads, sums with AvgPool2d(divisor_override=1) and divides by each window's real-pixel count "
        "(count_include_pad=False is right for symmetric pads only), flax nn.avg_pool(count_include_pad=False), "
        "Keras AveragePooling2D as is",
        compare=("corner",),
        canonical={
            "corner": float(
                pool_reference(
                    np.ones((AVG_POOL_SAME["n"],) * 2),
                    AVG_POOL_SAME["size"],
                    AVG_POOL_SAME["stride"],
                    tuple([*same_pads(AVG_POOL_SAME["n"], AVG_POOL_SAME["size"], AVG_POOL_SAME["stride"])] * 2),
                    "avg_real",
                )[0, 0]
            )
        },
        rtol=1e-12,
        effect=_effect_avg_pool,
    ),
    Trap(
        "default_layout",
        "Default conv layout: torch NCHW with (out, in, k, k) weights, Keras and flax NHWC with (k, k, in, out)",
        "Images and BatchNorm",
        {
            "torch": {"layout": "NCHW", "kernel_shape": [4, 3, 3, 3], "default_padding": "valid"},
            "tf": {
                "image_data_format": "channels_last",
                "layout": "NHWC",
                "kernel_shape": [3, 3, 3, 4],
                "default_padding": "valid",
            },
            "jax": {"layout": "NHWC", "kernel_shape": [3, 3, 3, 4], "default_padding": "same"},
        },
        "common.layers.image: canonical NHWC activations and (k, k, in, out) kernels as conv{i}.weight; torch "
        "permutes images to NCHW and kernels between (k, k, in, out) and (out, in, k, k) on load and export; the "
        f"layer's padding is always passed (spec default {CONV_PADDING_DEFAULT!r})",
        compare=("layout", "kernel_shape", "default_padding"),
        canonical={
            "layout": "NHWC",
            "kernel_shape": [LAYOUT["kernel"], LAYOUT["kernel"], LAYOUT["channels"], LAYOUT["filters"]],
            "default_padding": CONV_PADDING_DEFAULT,
        },
        effect=_effect_layout,
        note="flax nn.Conv's default padding is 'SAME', Keras Conv2D's 'valid' and torch's 0: a port that leaves "
        "it out changes the output size.",
    ),
    Trap(
        "max_pool_same_padding",
        "Max pooling 'same' at stride 2: TF pads (0, 1) with −∞; torch MaxPool2d(padding=1) reaches (1, 0)",
        "Images and BatchNorm",
        {
            "torch": {
                "pads": [1, 0, 1, 0],
                "out_size": 4,
                "negative_corner": -1.0,
                "padding_2": "raises: RuntimeError",
            },
            "tf": {"pads": SAME_PADS, "out_size": 4, "negative_corner": -1.0},
            "jax": {"pads": SAME_PADS, "out_size": 4, "negative_corner": -1.0},
        },
        "common.layers.image max_pool pads with −∞ by Layer.pads (TF's rule): torch F.pad(x, pads, value=−inf) "
        "then MaxPool2d(padding=0), flax nn.max_pool with the explicit pads, Keras MaxPooling2D(padding='same')",
        compare=("pads", "out_size"),
        canonical={"pads": SAME_PADS, "out_size": 4},
        effect=_effect_pads(
            lambda pads: pool_reference(
                conv_ramp(CONV_SAME["n"]), CONV_SAME["kernel"], CONV_SAME["stride"], pads, "max"
            ),
            "max pool",
        ),
        note="all three pad with −∞ (the corner of a −1 image is −1, never 0); torch refuses padding > kernel/2.",
    ),
    Trap(
        "pool_default_stride",
        "A pooling window without a stride: torch and Keras stride by the window, flax by 1",
        "Images and BatchNorm",
        {
            "torch": {"out_size": 4, "default_stride": 2},
            "tf": {"out_size": 4, "default_stride": 2},
            "jax": {"out_size": 7, "default_stride": 1, "stride_attribute": "None"},
        },
        "common.layers.image pools: stride 0 (the default) means the window size, resolved before any backend "
        "and passed explicitly (flax nn.max_pool/avg_pool strides=(s, s))",
        compare=("out_size", "default_stride"),
        canonical={
            "out_size": out_size(POOL_DEFAULT["n"], POOL_DEFAULT["size"], POOL_DEFAULT["size"], "valid"),
            "default_stride": LAYER_KINDS["max_pool"].keys["stride"].default or POOL_DEFAULT["size"],
        },
        effect=_effect_pool_stride,
    ),
    Trap(
        "bn_masked_statistics",
        "Masked BatchNorm statistics: Keras divides by Σ mask + 1e-7, flax exactly; torch has no mask",
        "Images and BatchNorm",
        {
            "torch": {"mask_argument": False},
            "tf": {"mask_argument": True, "divisor_offset": 1e-7, "filler_excluded": True},
            "jax": {"mask_argument": True, "divisor_offset": 0.0, "filler_excluded": True},
        },
        "last_batch = 'pad': the filler rows never enter the batch statistics (common.layers batch_norm): flax "
        "gets mask=, torch runs only the real rows through the layer (backends.torch_backend.norm), Keras gets "
        "mask= traced with keras.config.epsilon() at 0 (backends.tf_backend.norm), since δ/n is outside float64's "
        "1e-9",
        compare=("divisor_offset",),
        canonical={"divisor_offset": 0.0},
        rtol=1e-6,
        atol=1e-12,
        effect=_effect_bn_masked,
        note="Keras BatchNormalization._moments with a mask computes Σ/(Σ mask + backend.epsilon()) for the mean "
        "and the variance; without a mask it uses ops.moments (exact).",
    ),
    Trap(
        "bn_statistics_dtype",
        "flax BatchNorm keeps batch_stats in float32 even with param_dtype float64",
        "Images and BatchNorm",
        {
            "torch": {"stats_dtype": "float64"},
            "tf": {"stats_dtype": "float64"},
            "jax": {
                "stats_dtype": "float32",
                "rel_error": 9.395805862955348e-09,
                "exact_stats_dtype": "float64",
                "exact_rel_error": 0.0,
            },
        },
        "flax nn.BatchNorm(force_float32_reductions=False) in both modes (backends.jax_backend.norm): the running "
        "statistics are the spec dtype from init on, and the canonical bn{i}.mean / bn{i}.var load in that dtype",
        compare=("stats_dtype",),
        canonical={"stats_dtype": "float64"},
        rtol=1e-6,
        atol=1e-15,
        effect=_effect_stats_dtype,
        note="force_float32_reductions=True (the default) creates the running mean and variance as float32; "
        "momentum·var is then computed in float32 on the first step.",
    ),
    Trap(
        "sampler_padding",
        "DistributedSampler pads an epoch to ⌈N/R⌉·R by repeating the first ids (drop_last drops the tail)",
        "Data parallelism and accumulation",
        {
            "torch": {
                "per_rank": [[0, 4, 8], [1, 5, 9], [2, 6, 0], [3, 7, 1]],
                "total": 12,
                "counted": 12,
                "repeated_ids": [0, 1],
                "stride": 4,
                "drop_last_total": 8,
                "drop_last_missing": [8, 9],
            }
        },
        "common.distributed: the BatchPlan (batch S = K·G rows per optimizer step) holds every row once per epoch; "
        "Layout.split cuts each step into consecutive [replica][micro-batch] parts of c rows, the ragged last step "
        "filled in order and completed with weight-0 filler (the batch's ids cycled: static shapes, nothing added "
        "to Σ w·ℓ or Σ w); replica r is fed layout.split(batch)[r] (torch: the rank's own batch sampler, not "
        "DistributedSampler), and the driver checks the fed ids against the split (EpochRun.shards)",
        compare=("per_rank", "counted", "repeated_ids"),
        canonical=EPOCH_SPLIT,
        effect=_effect_sampler_padding,
        note="DistributedSampler deals the ids round-robin: rank r takes indices[r::R], not a consecutive chunk, so "
        "a port's replicas hold other rows of a step than Layout.split's (which matters under mean_of_means and "
        "for the shards check). The filler repeats the epoch's first ⌈N/R⌉·R − N indices (of the shuffled order "
        "under shuffle=True) at full weight; drop_last=True cuts the epoch to ⌊N/R⌋·R rows.",
    ),
    Trap(
        "sampler_same_order",
        "DistributedSampler(shuffle=True) repeats epoch 0's order until set_epoch is called",
        "Data parallelism and accumulation",
        {
            "torch": {
                "without_set_epoch": [[4, 7, 3, 0, 6], [4, 7, 3, 0, 6]],
                "with_set_epoch": [[4, 7, 3, 0, 6], [5, 1, 0, 9, 7]],
                "same_order_each_epoch": True,
                "set_epoch_same_order": False,
                "set_epoch_seeds_seed_plus_epoch": True,
            }
        },
        "common.batching.BatchPlan.order(epoch): one permutation per epoch keyed by (seed, epoch), split over the "
        "replicas by common.distributed.Layout.split, so no replica depends on a set_epoch call",
        compare=("same_order_each_epoch",),
        canonical={
            "same_order_each_epoch": bool(
                np.array_equal(*(BatchPlan(SAMPLER["n"], 1, True, "keep", SEED).order(e) for e in range(2)))
            )
        },
        effect=_effect_sampler_order,
        note="DistributedSampler.__iter__ seeds a fresh torch.Generator with seed + epoch (measured: the set_epoch "
        "orders are torch.randperm(N) from manual_seed(seed + e), strided by rank) and its epoch stays 0 until "
        "set_epoch(e) is called; the global RNG is not drawn.",
    ),
    Trap(
        "mean_of_means",
        "Gradient accumulation averages micro-batch means: the loss/K loop, Keras and optax.MultiSteps",
        "Data parallelism and accumulation",
        {
            "torch": {"update": -0.75, "global_mean_update": -0.625, "ratio": 1.2, "reduction": "mean_of_means"},
            "tf": {
                "update": -0.75,
                "global_mean_update": -0.625,
                "ratio": 1.2,
                "reduction": "mean_of_means",
                "applied_at_call": 2,
            },
            "jax": {
                "update": -0.75,
                "global_mean_update": -0.625,
                "ratio": 1.2,
                "reduction": "mean_of_means",
                "applied_at_call": 2,
            },
        },
        "the spec's batching.reduction: 'global_mean' (default) g = Σ_step w·∇ℓ / Σ_step w, the single-device "
        "gradient; 'mean_of_means' the engines' average over the P = R·K parts. "
        "common.distributed.Layout.part_scales(Σw per part, averaged=A) multiplies each part's Σ w·ℓ so that the "
        "engine's own combination (the part gradients summed, divided by A: DDP A = R, a MirroredStrategy replica "
        "sum A = 1, Keras gradient_accumulation_steps A = K) gives the reduction",
        compare=("update", "reduction"),
        canonical={"update": UPDATES["global_mean"], "reduction": "global_mean"},
        effect=_effect_mean_of_means,
        note="DDP's reduction needs a process group, so it is not measured in-process: DDP divides each gradient "
        "bucket by the world size before the allreduce (torch/csrc/distributed/c10d/reducer.cpp, "
        "bucket_view.div_(div_factor_), div_factor_ the process group's size; with a comm hook "
        "torch/distributed/algorithms/ddp_comm_hooks/default_hooks.py _allreduce_fut, tensor.div_(group.size())), "
        "so R ranks of a loss/K loop average R·K part means; lax.pmean under shard_map averages alike. Keras "
        "applies nothing before the K-th apply_gradients call and then (g + acc) / K; optax.MultiSteps returns "
        "zero updates until the K-th, then a Welford running mean (accumulator_dtype).",
    ),
    Trap(
        "average_loss_global_batch",
        "tf.nn.compute_average_loss divides a ragged step by global_batch_size, filler included",
        "Data parallelism and accumulation",
        {
            "tf": {
                "num_replicas_in_sync": 1,
                "value_global_batch_size": 0.75,
                "divisor_global_batch_size": 4.0,
                "value_default": 1.0,
                "divisor_default": 3.0,
                "value_sample_weight": 0.75,
                "divisor_sample_weight": 4.0,
            }
        },
        "exact mode never calls compute_average_loss: each replica's part loss is Σ w·ℓ · s with s from "
        "common.distributed.Layout.part_scales (global_mean: A / Σ_step w), so a ragged step and its weight-0 "
        "filler divide by the step's real rows (backends.tf_backend.distributed)",
        compare=("divisor_global_batch_size", "divisor_sample_weight"),
        canonical={"divisor_global_batch_size": RAGGED_DIVISOR, "divisor_sample_weight": RAGGED_DIVISOR},
        effect=_effect_average_loss,
        note="Without global_batch_size it divides by the local batch × num_replicas_in_sync (1 under the default "
        "strategy measured here), so under R replicas with static c-row parts it divides by R·c = G as well; "
        "sample_weight scales the losses, never the divisor. Keras 3's own losses divide by the local batch and "
        "then by num_replicas_in_sync (keras.src.losses.loss.scale_loss_for_distribution): the mean of the "
        "replicas' means.",
    ),
    Trap(
        "replica_regularization",
        "Keras regularizer losses are whole in every replica's loss; scale_regularization_loss divides by R",
        "Data parallelism and accumulation",
        {"tf": {"num_replicas_in_sync": 1, "penalty": 1.25, "model_losses_factor": 1.0, "scale_factor": 1.0}},
        "common.distributed.Layout.penalty_scale(A) = A / P multiplies a penalty every part's loss adds (Keras "
        "model.losses, L1), so the engine's combination counts it once per optimizer step "
        "(backends.tf_backend.distributed); tf.nn.scale_regularization_loss's 1 / R is the case A = 1, P = R "
        "(and A = K, P = R·K under Keras gradient accumulation)",
        compare=("scale_factor",),
        canonical={"scale_factor": Layout().penalty_scale(averaged=1)},
        effect=_effect_replica_penalty,
        note="Measured under the default strategy: one replica, so the scale is 1 and nothing diverges here; the "
        "1 / num_replicas_in_sync is scale_regularization_loss's source (reduce_sum(loss) / num_replicas_in_sync) "
        "and needs a multi-replica strategy to show. Keras 3's own train_step already divides Σ model.losses by "
        "num_replicas_in_sync (keras/src/backend/tensorflow/trainer.py _aggregate_additional_loss → "
        "scale_loss_for_distribution): the trap is a custom loop under strategy.run that adds Σ model.losses to "
        "each replica's loss.",
    ),
    Trap(
        "accumulator_dtype",
        "optax.MultiSteps accumulates float64 gradients in float32 by default",
        "Data parallelism and accumulation",
        {
            "torch": {"accumulator_dtype": "float64", "rel_error": 1.1895246692412389e-16},
            "tf": {"accumulator_dtype": "float64", "rel_error": 0.0},
            "jax": {
                "accumulator_dtype": "float32",
                "rel_error": 1.702989832486068e-08,
                "use_grad_mean": True,
                "float64_accumulator_rel_error": 1.1895246692412389e-16,
            },
        },
        "the JAX backend passes optax.MultiSteps(use_grad_mean=False, accumulator_dtype=spec dtype) "
        "(backends.jax_backend.distributed): the exact sum of the K gradients in the spec's dtype, A = 1 in "
        "common.distributed.Layout.part_scales; torch's .grad and Keras's accumulators take the variable's dtype",
        compare=("accumulator_dtype",),
        canonical={"accumulator_dtype": "float64"},
        rtol=1e-6,
        atol=1e-15,
        effect=_effect_accumulator,
        note="found while measuring mean_of_means: the accumulator_dtype default is jnp.float32 whatever the "
        "parameters' dtype (with x64 on), and use_grad_mean=True keeps a Welford mean acc + (g − acc)/(n + 1), "
        "which differs from Σg/K in the last bit even in float64.",
    ),
    Trap(
        "sync_batchnorm_cpu",
        "torch's SyncBatchNorm runs on CUDA only: on the CPU it raises under a process group, and falls back to "
        "per-process statistics without one",
        "Data parallelism and accumulation",
        {
            "torch": {
                "cpu_training": "raises: ValueError",
                "message_names_gpu": True,
                "no_group": "runs",
                "no_group_equals_local_batch_norm": True,
                "ddp_cpu_module": "raises: ValueError",
                "batch_norm_stats_cpu": "raises: NotImplementedError",
            },
            "tf": {
                "cpu_training": "runs",
                "statistics": "local",
                "mirrored_one_cpu": "runs",
                "mirrored_statistics": "local",
            },
            "jax": {"cpu_training": "runs", "statistics": "global_batch", "replicas_agree": True},
        },
        "batch_norm sync = true (common.layers.norm, 'under split steps'): micro-batch k's G rows' statistics over "
        "the R replicas of common.distributed.Layout, on any device. The torch backend never builds "
        "nn.SyncBatchNorm: its SyncBatchNorm1d/2d (backends.torch_backend.norm, AllRanks) all-reduce Σx and "
        "Σ(x − μ)² over the process group with an all-reduce autograd differentiates, on the CPU as on CUDA; Keras "
        "BatchNormalization(synchronized=True) and flax nn.BatchNorm(axis_name=…) as they are "
        "(backends.tf_backend.norm, backends.jax_backend.norm)",
        compare=("cpu_training",),
        canonical={"cpu_training": "runs"},
        effect=_effect_sync_cpu,
        note="torch: nn.SyncBatchNorm without a process group is silently a per-process BatchNorm (its output equals "
        "F.batch_norm of the local rows); under a 1-rank gloo group it refuses a CPU tensor in training (ValueError "
        "'SyncBatchNorm expected input tensor to be on GPU or XPU or privateuseone'), DDP refuses a CPU module "
        "holding one ('SyncBatchNorm layers only work with GPU modules'), and aten::batch_norm_stats has no CPU "
        "kernel (NotImplementedError). Keras's synchronized=True all-reduces Σx, Σx² and counts in its replica "
        "context, on the CPU too: one replica under the default strategy or a one-CPU MirroredStrategy, so the "
        "local rows' moments (as E[x²] − E[x]²: bn_fast_variance). flax pools over a vmap axis on the CPU.",
    ),
    Trap(
        "bn_jit_global_batch",
        "A jitted step over a sharded global batch gives BatchNorm the global batch's statistics",
        "Data parallelism and accumulation",
        {
            "torch": {"running_mean": [2.0, 2.0], "statistics": "per_replica"},
            "tf": {"running_mean": [2.0, 2.0], "statistics": "per_replica"},
            "jax": {
                "running_mean": [3.0, -1.0],
                "statistics": "global_batch",
                "per_replica_means": [[2.0, 2.0], [4.0, -4.0]],
                "per_replica_statistics": "per_replica",
                "synchronised_statistics": "global_batch",
                "jit_equals_synchronised": True,
                "jit_equals_per_replica": False,
            },
        },
        "the spec's batch_norm sync decides (common.layers.norm, 'under split steps'; default "
        f"{str(BN_SYNC_DEFAULT).lower()}): each part of common.distributed.Layout normalised with its own c rows, or "
        "with the micro-batch's G rows. With batch_norm layers and R > 1 the JAX backend runs the step as a "
        "shard_map over the replicas (backends.jax_backend.distributed), each device's c rows through the model, "
        "axis_name given to the sync = true layers only; torch and Keras replicas see their own rows already",
        compare=("statistics",),
        canonical={"statistics": "global_batch" if BN_SYNC_DEFAULT else "per_replica"},
        effect=_effect_bn_global_batch,
        note="Under jit (GSPMD) a BatchNorm's mean is over the whole global array whatever its sharding, so a port "
        "that shards the batch over devices and jits its single-device step trains with synchronised statistics, "
        "unlike each DDP process or MirroredStrategy replica; only a per-device program (shard_map, pmap) without "
        "axis_name gives per-replica ones. Measured on one CPU device (momentum 0: the running mean is the batch "
        "mean): the jit over the (R·c, F) batch equals the axis_name run bit for bit, vmap without axis_name gives "
        "each replica its own rows'. Canonical for sync = true: global_batch.",
    ),
    Trap(
        "bn_replica_stats",
        "Which replica's running statistics a data-parallel port keeps",
        "Data parallelism and accumulation",
        {
            "torch": {
                "broadcast_buffers_default": None,
                "forward_sync_buffers_default": None,
                "effective_broadcast_buffers": True,
                "syncs_buffers_before_forward": True,
                "broadcast_sources": [0, 0],
                "kept": "first_replica",
            },
            "tf": {
                "aggregation": "none",
                "mirrored_type": "MirroredVariable",
                "mirrored_aggregation": "none",
                "mirrored_synchronization": "on_write",
                "kept": "first_replica",
            },
            "jax": {
                "per_replica_means": [[2.0, 2.0], [4.0, -4.0]],
                "replicas_differ": True,
                "device_0": "first_replica",
                "replica_average_mean": [3.0, -1.0],
                "replica_average": "replica_mean",
                "kept": "replica_mean",
            },
        },
        "common.layers.norm ('under split steps'): the running statistics are the first replica's chain for sync "
        "= false (the micro-batch's for sync = true), one update per micro-batch of common.distributed.Layout: "
        "torch rank 0 evaluates and records its buffers (DDP's default buffer broadcast from rank 0), the TF "
        "backend reads the MirroredVariables' first copy, the JAX backend keeps device 0's batch_stats "
        "(backends.jax_backend.distributed), never the replicas' average",
        compare=("kept",),
        canonical={"kept": "first_replica"},
        effect=_effect_bn_replica_stats,
        note="torch 2.13 deprecates broadcast_buffers: the installed DistributedDataParallel signature defaults it "
        "to None and adds forward_sync_buffers (default None, meaning True), so the effective default is still "
        "True; measured under a 1-rank gloo group, a default DDP(BatchNorm1d) broadcasts its buffers from rank 0 "
        "before every forward. Keras's moving statistics have aggregation 'none'; under MirroredStrategy they are "
        "ON_WRITE MirroredVariables whose replica-context assigns write each replica's own copy and whose reads "
        "outside a replica give the current device's copy or the primary (only one CPU device here, so the copies "
        "are not compared). flax keeps one batch_stats per replica under vmap/shard_map; flax's ImageNet example "
        "averages them (cross_replica_mean, a lax.pmean): with equal replicas its mean is the global batch's, but "
        "its variance the replicas' average, neither replica 0's nor the pooled one.",
    ),
    Trap(
        "clip_epsilon",
        "torch clip_grad_norm_ scales by c/(n + 1e-6): it clips at n = c and is never exactly c/n",
        "Gradient clipping",
        {
            "torch": {"factor_at_c": 0.99999980000004, "factor_at_2c": 0.49999990000002, "exact_form_at_c": 1.0},
            "tf": {"factor_at_c": 1.0, "factor_at_2c": 0.5},
            "jax": {"factor_at_c": 1.0, "factor_at_2c": 0.5},
        },
        "common.clipping (optimizer.clip_norm, optimizer.clip): g ← g·min(1, c/n), no ε, n = 0 leaves g unchanged. "
        "torch exact mode takes n from torch.nn.utils.get_total_norm (each grad's own norm for per_tensor) and "
        "multiplies by clamp(c/n, max=1) (torch._foreach_mul_); Keras global_clipnorm / clipnorm and optax "
        "clip_by_global_norm / per-leaf projection_l2_ball are the rule as they are; idiom clip_epsilon keeps "
        "clip_grad_norm_ (common.clipping.torch_scale)",
        compare=("factor_at_c", "factor_at_2c"),
        canonical=CLIP_CANONICAL,
        rtol=1e-12,
        effect=_effect_clip_epsilon,
        note="torch scales whenever c/(n + 1e-6) < 1, i.e. from n > c − 1e-6 on, so it also clips at n = c "
        "(research case C: 13 → 13/(13 + 1e-6)). optax's select(n < c, g, (g/n)·c) takes the scaled branch at "
        "n = c, equal to g only up to rounding (exact here), and XLA evaluates g/n as g·fl(1/n): on (8, 6) with "
        "n = 10, c = 2.5 it gives 1.5000000000000002 for 1.5 (1 ulp). Keras computes g·c·min(1/n, 1/c); "
        "n = 0 leaves g unchanged in all three.",
    ),
    Trap(
        "keras_clipnorm_per_variable",
        "Keras clipnorm=c clips each variable by its own norm; clip_grad_norm_, global_clipnorm and "
        "clip_by_global_norm use the global norm",
        "Gradient clipping",
        {
            "torch": {
                "scope": "global",
                "a": [0.06741989533735587, 0.13483979067471175, 0.20225968601206762],
                "b": [0.2696795813494235, 0.33709947668677936],
            },
            "tf": {
                "scope": "per_tensor",
                "a": [0.1, 0.2, 0.3],
                "b": [0.31234752377721214, 0.39043440472151514],
                "global_clipnorm_scope": "global",
            },
            "jax": {
                "scope": "global",
                "a": [0.06741998624632421, 0.13483997249264842, 0.20225995873897262],
                "b": [0.26967994498529685, 0.337099931231621],
                "projection_l2_ball_scope": "per_tensor",
            },
        },
        "common.clipping: optimizer.clip = 'global' (default) clips by n = ‖all gradients‖, 'per_tensor' each "
        "tensor by its own norm. Keras: global → global_clipnorm=c, per_tensor → clipnorm=c; torch: "
        "get_total_norm over all grads or each grad's norm; optax: clip_by_global_norm(c), or "
        "projection_l2_ball(u, c) mapped over the leaves (optax has no per-leaf norm clip); idiom "
        "keras_clipnorm_per_variable writes clipnorm for a global clip",
        compare=("scope",),
        canonical={"scope": "global", "a": SCOPES["global"][:3].tolist(), "b": SCOPES["global"][3:].tolist()},
        rtol=1e-12,
        effect=_effect_clip_scope,
        note="Keras clipnorm is tf.clip_by_norm per variable (g·c/max(‖g‖, c), no ε) and the optimizer refuses "
        "more than one of clipnorm, global_clipnorm and clipvalue. optax's clip_by_block_rms(τ) is not a norm "
        "clip (g/max(1, rms/τ)); projection_l2_ball is Keras's clipnorm formula. torch's a and b carry its ε "
        "(1.35e-6 relative: clip_epsilon).",
    ),
    Trap(
        "clip_before_decay",
        "Where the clip sits against coupled decay: torch weight_decay and optax chain(clip, decay) leave the "
        "decay term unclipped; a Keras L2 regularizer is clipped",
        "Gradient clipping",
        {
            "torch": {
                "update": [-0.7499998750000625, -0.7499998750000625, -0.7499998750000625, -1.2500001249999375],
                "order": "clip_then_decay",
                "loss_term_update": DECAY_ORDERS["decay_then_clip"],
                "loss_term_order": "decay_then_clip",
            },
            "tf": {
                "update": [-0.25, -0.25, -0.25, -0.25],
                "order": "decay_then_clip",
                "weight_decay_update": [-0.75, -0.75, -0.75, -1.25],
                "weight_decay_order": "clip_then_decay",
            },
            "jax": {
                "update": [-0.75, -0.75, -0.75, -1.25],
                "order": "clip_then_decay",
                "decay_first_update": [-0.25, -0.25, -0.25, -0.25],
                "decay_first_order": "decay_then_clip",
            },
        },
        "common.clipping clips the regularized gradient (common.regularization: data gradient + L1 + coupled "
        "decay), after accumulation and the replica reduction, before the optimizer; decoupled decay is never "
        "clipped. torch exact mode carries coupled decay as the loss term (c/2)·Σw² (in .grad before the clip) "
        "instead of SGD(weight_decay); Keras's L2 regularizers are in the loss already (global_clipnorm clips "
        "them); optax chain(l1_sign, add_decayed_weights, clip, optimizer); idiom clip_before_decay keeps torch's "
        "weight_decay and optax's clip first",
        compare=("order", "update"),
        canonical={"order": "decay_then_clip", "update": DECAY_ORDERS["decay_then_clip"]},
        rtol=1e-12,
        effect=_effect_clip_decay,
        note="Keras's decoupled SGD(weight_decay = λ) (w −= lr·λ·w before the update) is not clipped either: for "
        "plain SGD it is the step of coupled decay added after the clip (weight_decay_update). In optax the chain "
        "decides; inside MultiSteps the clip acts on the accumulated mean.",
    ),
    Trap(
        "keras_clip_per_replica",
        "Keras under tf.distribute clips each replica's gradient before the all-reduce, not the step's gradient",
        "Gradient clipping",
        {
            "tf": {
                "replicas": 2,
                "update": [-1.0, -1.0, -1.0, -1.0],
                "placement": "per_replica",
                "one_device_update": [-0.5, -0.5, -0.5, -0.5],
                "one_device_placement": "reduced",
                "reduced_clip_placement": "reduced",
                "opposed_update": [0.0, 0.0, 0.0, 0.0],
                "opposed_placement": "per_replica",
                "opposed_one_device_update": [-0.5, -0.5, -0.5, -0.5],
                "opposed_one_device_placement": "reduced",
                "opposed_reduced_clip_placement": "reduced",
                "clipnorm_placement": "per_replica",
            },
        },
        "common.clipping clips the step's gradient after the replicas' reduction (and the accumulation), before the "
        "optimizer. tf exact mode (split steps, R > 1, clip_norm > 0): the Keras optimizer with "
        "backends.tf_backend.optim.ReducedClip mixed in, which all-reduces (SUM) the replicas' gradients in the "
        "replica context before Keras's _clip_gradients and skips Keras's own later all-reduce; torch's clip on "
        "p.grad after DDP's all-reduce (after backward, before step) and optax's clip in the chain after the "
        "pmean / psum clip the reduced gradient as they are; idiom keras_clip_per_replica keeps Keras's placement",
        compare=("placement", "update", "opposed_placement", "opposed_update"),
        canonical={
            "placement": "reduced",
            "update": REPLICA_CLIPS["agree"]["reduced"],
            "opposed_placement": "reduced",
            "opposed_update": REPLICA_CLIPS["opposed"]["reduced"],
        },
        effect=_effect_clip_replicas,
        note="measured under MirroredStrategy over 2 logical CPU devices (a fresh interpreter: "
        "backends.tf_backend.distributed.strategy), one apply_gradients per replica in strategy.run. Keras 3's "
        "BaseOptimizer.apply calls _clip_gradients and then _backend_update_step, whose _all_reduce_sum_gradients "
        "(keras/src/backend/tensorflow/optimizer.py) sums the replicas' gradients: global_clipnorm and clipnorm "
        "(clipnorm_placement) both act on each replica's own gradient. Under a global-batch loss each replica holds "
        "~1/R of the step's gradient, so with agreeing replicas the clip acts at R·c; opposed replicas can cancel "
        "to no update at all. The one-device optimizer on the summed gradient is the rule.",
    ),
    Trap(
        "cosine_annealing_period",
        "torch CosineAnnealingLR does not stop at T_max: the lr climbs back to lr₀ at 2·T_max",
        "Learning-rate schedules",
        {
            "torch": {"lr": [1.0, 0.25, 0.625, 1.0000000000000002], "lambda_lr": [1.0, 0.25, 0.25, 0.25]},
            "tf": {"lr": [1.0, 0.25, 0.25, 0.25]},
            "jax": {"lr": [1.0, 0.25, 0.25, 0.25]},
        },
        "common.schedules.lr, cosine: f + (lr₀ − f)·½(1 + cos(π·min(t, D)/D)), f after D. torch exact mode: "
        "LambdaLR(lambda t: lr(t)/lr₀) stepped after optimizer.step(); Keras CosineDecay(lr₀, D, alpha = f/lr₀) and "
        "optax cosine_decay_schedule(lr₀, D, alpha = f/lr₀) clamp at D already (float64 values: schedule_float32); "
        "idiom torch_cosine_annealing: CosineAnnealingLR(T_max = D, eta_min = f) (common.schedules.cosine_annealing)",
        compare=("lr",),
        canonical={"lr": COSINE_CANONICAL_LRS},
        rtol=1e-12,
        effect=_effect_lrs("lr", SCHEDULE["cosine_at"], COSINE_CANONICAL_LRS, "lr used"),
        note="lrs read back from SGD steps (g = 1, w reset to 0 after each step; optax: the update). Up to t = D "
        "the three agree with common.schedules to rounding; torch's recursive form ends 2.2e-16 above lr₀ at 2·D.",
    ),
    Trap(
        "warmup_decay_steps",
        "optax warmup_cosine_decay_schedule counts the warmup inside decay_steps; Keras CosineDecay does not",
        "Learning-rate schedules",
        {
            "tf": {"lr": [0.5, 0.8901650429449552, 0.625, 0.25]},
            "jax": {"lr": [0.5, 0.625, 0.25, 0.25], "decay_steps_w_plus_d": [0.5, 0.8901650429449552, 0.625, 0.25]},
        },
        "common.schedules.lr, warmup_cosine: lr₀·t/W for t < W, then the cosine over D steps after the warmup "
        "(W + D in all); Keras CosineDecay(0, D, alpha = f/lr₀, warmup_target = lr₀, warmup_steps = W) as it is; "
        "optax warmup_cosine_decay_schedule(0, lr₀, W, decay_steps = W + D, f); idiom optax_warmup_decay_steps "
        "passes D (common.schedules.optax_warmup_cosine)",
        compare=("lr",),
        canonical={"lr": WARMUP_CANONICAL_LRS},
        rtol=1e-12,
        effect=_effect_lrs(
            "lr",
            SCHEDULE["warmup_at"],
            WARMUP_CANONICAL_LRS,
            f"W = {SCHEDULE['warmup_steps']}, D = {SCHEDULE['decay_steps']}: lr used",
        ),
        note="optax runs its cosine over decay_steps − W steps, so D passed as the cosine's length ends W steps "
        "early (and not at all for D ≤ W); Keras's alpha is a fraction of warmup_target (f = α·lr₀). torch has no "
        "warmup-cosine scheduler: LinearLR refuses start_factor 0 and SequentialLR with CosineAnnealingLR is "
        "unclamped (cosine_annealing_period).",
    ),
    Trap(
        "scheduler_step_first",
        "torch: scheduler.step() before optimizer.step() skips lr(0) and warns",
        "Learning-rate schedules",
        {
            "torch": {
                "step_first": [0.5, 0.25, 0.125],
                "step_after": [1.0, 0.5, 0.25],
                "warning": "Detected call of `lr_scheduler.step()` before `optimizer.step()`",
            }
        },
        "common.schedules: t counts the optimizer steps already taken and the first update uses lr(0); the torch "
        "backend calls scheduler.step() after optimizer.step() (the constructor sets lr(0)); idiom "
        "scheduler_step_first (on only when listed) steps it first: step t + 1 uses lr(t + 1) "
        "(common.schedules.used)",
        compare=("step_first",),
        canonical={"step_first": schedule_lrs(STEP_FIRST_TABLE, STEP_FIRST["lr"], range(STEP_FIRST["steps"]))},
        effect=_effect_lrs(
            "step_first",
            range(STEP_FIRST["steps"]),
            schedule_lrs(STEP_FIRST_TABLE, STEP_FIRST["lr"], range(STEP_FIRST["steps"])),
            f"StepLR(step_size = {STEP_FIRST['step_size']}, γ = {STEP_FIRST['gamma']:g}) stepped first: lr used",
        ),
        note="the UserWarning comes once, at the first scheduler.step() before any optimizer.step(); from then on "
        "the whole schedule runs one step ahead.",
    ),
    Trap(
        "per_epoch_schedule",
        "torch: a scheduler stepped once per epoch counts epochs, not optimizer steps",
        "Learning-rate schedules",
        {
            "torch": {
                "lrs": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                "per_step_lrs": [1.0, 1.0, 0.5, 0.5, 0.25, 0.25],
            }
        },
        "common.schedules: t counts optimizer steps (with K accumulated micro-batches too); the torch backend steps "
        "its scheduler after every optimizer step; idiom per_epoch_schedule (on only when listed) steps it once per "
        "epoch: the steps of epoch e use lr(e) (common.schedules.used)",
        compare=("lrs",),
        canonical={"lrs": schedule_lrs(PER_EPOCH_TABLE, PER_EPOCH["lr"], range(PER_EPOCH_STEPS))},
        effect=_effect_lrs(
            "lrs",
            range(PER_EPOCH_STEPS),
            schedule_lrs(PER_EPOCH_TABLE, PER_EPOCH["lr"], range(PER_EPOCH_STEPS)),
            f"StepLR(step_size = {PER_EPOCH['step_size']}, γ = {PER_EPOCH['gamma']:g}) stepped once per epoch of "
            f"{PER_EPOCH['steps_per_epoch']} steps: lr used",
        ),
        note="with S steps per epoch the step t uses lr(⌊t/S⌋): the schedule runs S× slower, and a step_size or "
        "decay_steps meant in optimizer steps is read as epochs.",
    ),
    Trap(
        "schedule_float32",
        "Keras and optax schedules given Python-float constants run in float32, even in float64 / x64 runs",
        "Learning-rate schedules",
        {
            "torch": {"lr": 0.1, "dtype": "float", "sgd_lr": 0.1},
            "tf": {
                "lr": 0.10000000149011612,
                "dtype": "float32",
                "cosine_lr": 0.10000000149011612,
                "cosine_dtype": "float32",
                "float64_lr": 0.1,
                "float64_dtype": "float64",
                "sgd_lr": 0.10000000149011612,
            },
            "jax": {
                "lr": 0.10000000149011612,
                "dtype": "float32",
                "cosine_lr": 0.1,
                "cosine_dtype": "float64",
                "float64_lr": 0.1,
                "float64_dtype": "float64",
                "sgd_lr": 0.10000000149011612,
            },
        },
        "float64 runs hand every schedule constant over as a float64 scalar: Keras np.float64 "
        "initial_learning_rate, warmup_target and alpha (backends.tf_backend.optim.hyper), optax float64 (numpy or "
        "jnp) init and end values; torch's schedulers compute in Python floats (float64) already; idiom "
        "float32_hyper passes Python floats (as in keras_float64_hyper)",
        compare=("lr",),
        canonical={"lr": schedule_lrs(FLOAT32_TABLE, SCHEDULE_FLOAT32["lr"], [0])[0]},
        effect=_effect_float32_schedule,
        note="Keras converts initial_learning_rate with ops.convert_to_tensor (float32 for a Python float, floatx "
        "float64 or not) and runs the whole schedule in that dtype (ExponentialDecay and CosineDecay alike); "
        "optax's exponential_decay with its int32 count and Python floats computes in float32 under x64 while "
        "cosine_decay_schedule returns float64. The optimizer then applies the float32-rounded lr to float64 "
        "variables (sgd_lr).",
    ),
)

TRAPS: dict[str, Trap] = {t.id: t for t in CATALOGUE}


def for_framework(framework: str) -> list[Trap]:
    """The traps `framework` takes part in, in catalogue order."""
    return [t for t in CATALOGUE if framework in t.expected]
