"""Numpy references for the probes: what a formula gives on the probe inputs (numpy + stdlib only).

They give the catalogue its canonical values and the classifiers (judge.py) their yardsticks: the SGD decay and
momentum end points, Adam's trajectory and first step (common.optim's formula), Keras's first ε̂, the float32
rounding forms of inverted dropout, and layer normalisation (the common.layers layer_norm definition). For the
image and BatchNorm traps: a single-channel conv and pool with explicit pads, batch normalisation, and the inverse
questions the probes ask of them (`window_pads`: which pads reproduce a measured output; `named_match`: which
named reference does), shared by the three probe files so that every framework is judged alike. For the data
parallelism traps: one epoch split over replicas and one accumulated step, both by common.distributed's Layout;
the batch statistics a data-parallel BatchNorm takes from BN_SPLIT's replicas (`split_statistics`), and their name.
For the clipping and schedule traps: common.clipping's factors and clipped gradients on the probe inputs, the names
of a measured clip's scope, of its place against coupled decay and of its place against the replicas' all-reduce,
and common.schedules' lr(t) of the probe schedules (`schedule_table`: a `[schedule]` table as common.schedules
reads it).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from common import clipping, schedules
from common.batching import Batch
from common.distributed import Layout
from common.optim import keras_epsilon_hat
from common.spec import defaults
from common.traps.inputs import (
    ACCUMULATE,
    ADAM,
    BN_REPLICAS,
    BN_SPLIT,
    CLIP_BOUNDARY,
    CLIP_DECAY,
    CLIP_REPLICAS,
    CLIP_SCOPE,
    DECAY,
    EPS_HAT,
    MOMENTUM,
    SAMPLER,
)


def sgd_decay_reference(coupled: bool) -> float:
    """w after DECAY's steps of SGD with momentum on a zero loss gradient.

    coupled (torch SGD weight_decay): g = wd·w, b ← μb + g, w ← w − lr·b.
    decoupled (Keras optimizer weight_decay): w ← w − lr·wd·w, then the momentum step on g = 0 (a no-op).
    """
    w, b, d = DECAY["w0"], 0.0, DECAY
    for _ in range(d["steps"]):
        if coupled:
            b = d["momentum"] * b + d["wd"] * w
            w = w - d["lr"] * b
        else:
            w = w - d["lr"] * d["wd"] * w
    return w


def sgd_momentum_reference(change_lr: bool) -> float:
    """torch's rule b ← μb + g, w ← w − lr_t·b from w = 0 under a constant gradient (common.optim)."""
    m, w, b = MOMENTUM, 0.0, 0.0
    for t in range(1, m["steps"] + 1):
        lr = m["lr_after"] if change_lr and t >= m["change_at"] else m["lr"]
        b = m["momentum"] * b + m["grad"]
        w -= lr * b
    return w


def adam_reference(decay: str) -> list[float]:
    """ADAM's trajectory end point by common.optim's formula, float64; decay "coupled" (g += wd·w) or "decoupled"."""
    p = ADAM
    w, a, b = (np.array(p[k], np.float64) for k in ("w0", "a", "b"))
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t in range(1, p["steps"] + 1):
        g = a * w + b + (p["wd"] * w if decay == "coupled" else 0.0)
        m = p["b1"] * m + (1 - p["b1"]) * g
        v = p["b2"] * v + (1 - p["b2"]) * g * g
        update = (m / (1 - p["b1"] ** t)) / (np.sqrt(v / (1 - p["b2"] ** t)) + p["eps"])
        w = w - p["lr"] * update - (p["lr"] * p["wd"] * w if decay == "decoupled" else 0.0)
    return w.tolist()


def adam_first_update_reference() -> np.ndarray:
    """Δw of the first Adam step with torch/optax's ε placement: −lr·g/(|g| + ε) at t = 1."""
    g = np.array(EPS_HAT["grad"], np.float64)
    return -EPS_HAT["lr"] * g / (np.abs(g) + EPS_HAT["eps"])


def keras_first_epsilon_hat() -> float:
    """The ε̂ that makes Keras's first Adam step equal torch's (common.optim.keras_epsilon_hat at t = 1)."""
    return keras_epsilon_hat(EPS_HAT["eps"], EPS_HAT["b2"], 1)


DROPOUT_FORMS = {
    # name: kept value of x (float32) at rate p
    "x*fl(1/(1-p))": lambda x, p: x * np.float32(1.0 / (1.0 - p)),  # reciprocal in float64, rounded
    "x*fl(1/fl(1-p))": lambda x, p: x * (np.float32(1.0) / np.float32(1.0 - p)),  # reciprocal of rounded 1−p
    "x/fl(1-p)": lambda x, p: x / np.float32(1.0 - p),  # true division
}


def layer_norm_reference(x, eps: float, ddof: int = 0) -> np.ndarray:
    """x̂ = (x − μ)/√(σ² + ε) over the last axis, float64, γ = 1, β = 0: σ² = Σ(x − μ)²/(n − ddof), biased at
    ddof = 0 (common.layers layer_norm and all three frameworks), unbiased at ddof = 1."""
    x = np.asarray(x, np.float64)
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).sum(axis=-1, keepdims=True) / (x.shape[-1] - ddof)
    return (x - mu) / np.sqrt(var + eps)


def conv2d_reference(x, kernel, stride: int, pads) -> np.ndarray:
    """y[i, j] = Σ_{u,v} x̃[s·i + u, s·j + v]·K[u, v], float64, one channel: x̃ is x zero-padded by
    pads = (top, bottom, left, right) (common.layers.image's `Layer.pads` order); a cross-correlation, as in
    torch, Keras and flax (no kernel flip)."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    top, bottom, left, right = pads
    xp = np.pad(x, ((top, bottom), (left, right)))
    k, s = kernel.shape[0], stride
    rows, cols = (xp.shape[0] - k) // s + 1, (xp.shape[1] - k) // s + 1
    return np.array(
        [[np.sum(xp[s * i : s * i + k, s * j : s * j + k] * kernel) for j in range(cols)] for i in range(rows)]
    )


def pool_reference(x, size: int, stride: int, pads, op: str) -> np.ndarray:
    """Pooling of one channel with pads (top, bottom, left, right): "max" (pads −∞: a pad never wins),
    "avg_real" (Σ over the window / the REAL pixels in it: TF's "same" rule) or "avg_all" (/ size², pads counted)."""
    x = np.asarray(x, np.float64)
    top, bottom, left, right = pads
    fill = -np.inf if op == "max" else 0.0
    xp = np.pad(x, ((top, bottom), (left, right)), constant_values=fill)
    real = np.pad(np.ones_like(x), ((top, bottom), (left, right)))
    rows, cols = (xp.shape[0] - size) // stride + 1, (xp.shape[1] - size) // stride + 1
    out = np.empty((rows, cols))
    for i in range(rows):
        for j in range(cols):
            win = (slice(stride * i, stride * i + size), slice(stride * j, stride * j + size))
            if op == "max":
                out[i, j] = xp[win].max()
            else:
                out[i, j] = xp[win].sum() / (real[win].sum() if op == "avg_real" else size * size)
    return out


def window_pads(output, reference, size: int) -> list[int] | None:
    """The pads [top, bottom, left, right] (each 0 … size − 1) for which `reference(pads)` reproduces `output`
    (same shape, equal to 1e-12 relative), the smallest first; None when none does.

    These are the pads the windows REACH: a pad row no window reads changes nothing, so torch's declared
    padding=1 at n = 8, k = 3, s = 2 (padded size 10, windows over rows −1 … 7) shows as [1, 0, …].
    """
    output = np.asarray(output, np.float64)
    for pads in sorted(np.ndindex(size, size, size, size), key=lambda p: (sum(p), p)):
        ref = reference(tuple(int(v) for v in pads))
        if ref.shape == output.shape and np.allclose(ref, output, rtol=1e-12, atol=0.0):
            return [int(v) for v in pads]
    return None


def batch_norm_reference(x, eps: float, ddof: int = 0) -> np.ndarray:
    """x̂ = (x − μ)/√(σ² + ε) over the rows (axis 0), float64, γ = 1, β = 0: σ² = Σ(x − μ)²/(n − ddof), biased at
    ddof = 0 (the common.layers batch_norm normalisation), unbiased at ddof = 1."""
    x = np.asarray(x, np.float64)
    mu = x.mean(axis=0, keepdims=True)
    var = ((x - mu) ** 2).sum(axis=0, keepdims=True) / (x.shape[0] - ddof)
    return (x - mu) / np.sqrt(var + eps)


def named_match(value, references: dict, rtol: float = 1e-9) -> str:
    """The first name in `references` whose array equals `value` (same shape, rtol relative), else "other"."""
    value = np.asarray(value, np.float64)
    for name, ref in references.items():
        ref = np.asarray(ref, np.float64)
        if ref.shape == value.shape and np.allclose(value, ref, rtol=rtol, atol=0.0):
            return name
    return "other"


def accumulation_measurement(trace: list[float], global_mean: float) -> dict:
    """A mean_of_means probe's result from the parameter after each accumulation call (`trace`, from w = 0; one
    entry for a loop that only steps at the end) and the global mean's update: the applied update, its ratio to the
    global mean's, which reduction of `accumulated_updates` it is, and the first call that changed the parameter."""
    return {
        "update": trace[-1],
        "global_mean_update": global_mean,
        "ratio": trace[-1] / global_mean,
        "reduction": named_match(trace[-1], accumulated_updates()),
        "applied_at_call": next(i for i, w in enumerate(trace, 1) if w != 0.0),
    }


def layout_epoch() -> dict:
    """SAMPLER's n rows split over its replicas by common.distributed as one step of G = R·⌈n/R⌉ rows
    (Layout.split: consecutive chunks, weight-0 filler): per rank the real ids, the rows fed ("total", filler
    included), the rows that count (weight > 0) and the ids counted more than once."""
    n, r = SAMPLER["n"], SAMPLER["replicas"]
    layout = Layout(replicas=r, micro=r * -(-n // r))
    parts = [replica[0] for replica in layout.split(Batch(np.arange(n), np.ones(n)))]
    counted = np.concatenate([p.real_ids for p in parts])
    ids, times = np.unique(counted, return_counts=True)
    return {
        "per_rank": [p.real_ids.tolist() for p in parts],
        "total": sum(p.rows for p in parts),
        "counted": int(counted.size),
        "repeated_ids": ids[times > 1].tolist(),
    }


def accumulated_updates() -> dict[str, float]:
    """Δw of one SGD step (lr) over ACCUMULATE's K micro-batches for the per-row loss ℓ = w·x (∇ℓ = x), by reduction.

    The micro-batches are the parts of one step (Layout with R = 1, G = the largest micro-batch, weight-0 filler);
    each part's Σ w·x is multiplied by Layout.part_scales (A = 1: the part gradients summed), so
    global_mean Δw = −lr·Σx/n and mean_of_means Δw = −lr·(1/K)·Σ_k mean_k; "sum_of_means" −lr·Σ_k mean_k is the
    accumulation loop that forgets to divide by K.
    """
    micro = [np.asarray(m, np.float64) for m in ACCUMULATE["micro"]]
    sums = np.array([[m.sum() for m in micro]])
    weights = np.array([[m.size for m in micro]], np.float64)
    updates = {}
    for reduction in ("global_mean", "mean_of_means"):
        layout = Layout(accumulate=len(micro), micro=max(m.size for m in micro), reduction=reduction)
        updates[reduction] = float(-ACCUMULATE["lr"] * np.sum(layout.part_scales(weights, averaged=1) * sums))
    updates["sum_of_means"] = len(micro) * updates["mean_of_means"]
    return updates


def split_statistics() -> dict[str, dict[str, list[float]]]:
    """BN_SPLIT's batch statistics per channel (float64; "var" biased, the normalisation's), as a data-parallel
    BatchNorm over its BN_REPLICAS replicas of c rows may take them (common.layers.norm, "under split steps"):
    "first_replica" replica 0's c rows (sync = false, and the running statistics Parity keeps), "replica_mean" the
    replicas' own statistics averaged (flax's examples: cross_replica_mean of the batch_stats), "global_batch" all
    R·c rows (sync = true; a jitted step over the global batch). Equal replicas make the two means equal: only the
    variance tells "replica_mean" from "global_batch"."""
    parts = np.asarray(BN_SPLIT, np.float64).reshape(BN_REPLICAS, -1, BN_SPLIT.shape[1])
    means, variances = parts.mean(axis=1), parts.var(axis=1)
    named = {
        "first_replica": (means[0], variances[0]),
        "replica_mean": (means.mean(axis=0), variances.mean(axis=0)),
        "global_batch": (BN_SPLIT.mean(axis=0), BN_SPLIT.var(axis=0)),
    }
    return {name: {"mean": m.tolist(), "var": v.tolist()} for name, (m, v) in named.items()}


def split_statistics_name(mean, var, replica_0: str = "first_replica") -> str:
    """Which `split_statistics` entry a measured (mean, biased variance) pair is ("other" when none; rtol 1e-9),
    replica 0's own statistics named `replica_0` (bn_jit_global_batch calls them "per_replica")."""
    refs = {
        replica_0 if name == "first_replica" else name: np.concatenate([s["mean"], s["var"]])
        for name, s in split_statistics().items()
    }
    return named_match(np.concatenate([np.ravel(mean), np.ravel(var)]), refs)


# ------------------------------------------------------------------------ gradient clipping and lr schedules
def clip_boundary_norm() -> float:
    """CLIP_BOUNDARY's global norm n (5, exact: the per-tensor norms are 3 and 4)."""
    return float(np.sqrt(sum(np.sum(np.square(CLIP_BOUNDARY[k])) for k in ("a", "b"))))


def clip_factor(clipped: dict, grads: dict) -> float | list[float]:
    """The factor a clip multiplied `grads` by: g'/g of every element (CLIP_BOUNDARY's entries are powers of 2, so
    the ratio is the factor exactly); one number when every element got the same factor, else the list."""
    ratios = np.concatenate(
        [np.ravel(np.asarray(clipped[k], np.float64) / np.asarray(grads[k], np.float64)) for k in grads]
    )
    return float(ratios[0]) if np.all(ratios == ratios[0]) else ratios.tolist()


def clip_scope_references() -> dict[str, np.ndarray]:
    """CLIP_SCOPE's a and b (concatenated) after common.clipping's global and per-tensor clips."""
    grads = {k: np.asarray(CLIP_SCOPE[k], np.float64) for k in ("a", "b")}
    return {
        form: np.concatenate([clipping.clip(grads, CLIP_SCOPE["c"], form)[0][k] for k in ("a", "b")])
        for form in ("global", "per_tensor")
    }


def clip_scope(a, b) -> str:
    """Which scope a measured clip of CLIP_SCOPE had: "global", "per_tensor" or "other". rtol 1e-5, so that torch's
    ε (1.35e-6 relative here: trap clip_epsilon) does not hide the scope; the two scopes differ by 30% or more."""
    return named_match(np.concatenate([np.ravel(a), np.ravel(b)]), clip_scope_references(), rtol=1e-5)


def clip_decay_references() -> dict[str, list[float]]:
    """Δw of CLIP_DECAY's SGD step (no momentum): "decay_then_clip" the common.clipping rule, the regularized
    gradient g + λw clipped; "clip_then_decay" the data gradient clipped and λw added after; "unclipped"."""
    p = CLIP_DECAY
    w, g = np.asarray(p["w"], np.float64), np.asarray(p["grad"], np.float64)
    decay = p["wd"] * w
    steps = {
        "decay_then_clip": clipping.clip({"w": g + decay}, p["c"], "global")[0]["w"],
        "clip_then_decay": clipping.clip({"w": g}, p["c"], "global")[0]["w"] + decay,
        "unclipped": g + decay,
    }
    return {name: (-p["lr"] * step).tolist() for name, step in steps.items()}


def clip_decay_order(update) -> str:
    """Which clip_decay_references entry a measured Δw is (rtol 1e-5: torch's ε aside, they differ by 50%+)."""
    return named_match(update, clip_decay_references(), rtol=1e-5)


def clip_replica_references(case: str) -> dict[str, list[float]]:
    """Δw of CLIP_REPLICAS[case]'s SGD step, the replicas' gradients summed by the all-reduce: "reduced" the
    common.clipping rule (the global clip of the summed gradient), "per_replica" each replica's gradient clipped
    alone and the clipped ones summed, "unclipped" the sum."""
    p = CLIP_REPLICAS
    grads = [np.asarray(g, np.float64) for g in p[case]]

    def clipped(g):
        return clipping.clip({"g": g}, p["c"], "global")[0]["g"]

    steps = {"reduced": clipped(sum(grads)), "per_replica": sum(clipped(g) for g in grads), "unclipped": sum(grads)}
    return {name: (0.0 - p["lr"] * step).tolist() for name, step in steps.items()}


def clip_replica_placement(update, case: str) -> str:
    """Which clip_replica_references(case) entry a measured Δw is (exact inputs; the entries differ by 0.5 or more)."""
    return named_match(update, clip_replica_references(case))


def schedule_table(kind: str, **keys) -> SimpleNamespace:
    """A `[schedule]` table (common.spec defaults, `keys` replaced) as common.schedules reads it."""
    return SimpleNamespace(**{**defaults()["schedule"], "kind": kind, **keys})


def schedule_lrs(schedule: SimpleNamespace, base: float, steps) -> list[float]:
    """common.schedules.lr(schedule, base, t) for each t of `steps`: the lr the (t + 1)-th optimizer step uses."""
    return [schedules.lr(schedule, base, t) for t in steps]
