"""The trap catalogue behind `parity conformance` (DESIGN §5): what each framework does natively, written down.

Each :class:`Trap` names one cross-framework trap, the value each framework's probe must measure on the installed
versions (`expected`), the framework-free semantics where one exists (`canonical`), and the conversion exact mode
applies, pointing at the `common/` rule. The probes live in `backends/<fw>_backend/probes.py` (one function per
trap, registered in `PROBES`); they MEASURE, and a test fails when a measurement stops matching `expected`, which
is how a framework upgrade that changes a behaviour is caught.

Measurements are JSON-able dicts. Matching (`matches`) checks only the keys `expected` lists, so a probe may
report extra observations. Numbers agree when |a − b| ≤ atol + rtol·max(|a|, |b|) (the rule of common.tolerance),
with the trap's own rtol/atol; everything else must be equal. Non-finite floats are the strings "nan", "inf".

`diverges`: for each key in `compare` (the whole measurement when empty), the frameworks that report it, plus the
canonical value when one is given, are checked pairwise; any disagreement is a divergence. With fewer than two
values nothing can diverge (None). `effect(m)` sizes the difference from the measurements m = {fw: value}.

Tolerances (per trap; 0 means exact): orders, counts, names, shapes and the binary-fraction optimizer results
(lr 0.5, μ 0.5, wd 0.25: every intermediate is exact in float32 and float64) compare exactly; float64 Adam end
points 1e-12 (rounding order only); first-step relative errors rtol 1e-4, atol 1e-12 (the ε-hat residual is
~1e-16); Keras's clipped −log(1e-7) rtol 1e-6 (float32 log); the initialiser statistics rtol 2% (sampling
error of 2·10⁵ draws is ~0.3% on the std and far less on the max; 2% still separates 1/√3, √(6/2100)·10/√3 and 1).

This module is numpy + stdlib only (it is part of `common`). The probe inputs and classifiers below are shared
by the three probe files, so that every framework is asked the same question and judged by the same rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from common.batching import BatchPlan
from common.dropout import keep_scale
from common.optim import keras_epsilon_hat

FRAMEWORKS = ("torch", "tf", "jax")

# ---------------------------------------------------------------------------------------------- probe inputs
SEED = 0
ORDER_N = 10                      # ids shuffled by the order probes
ORDER_N_SMALL = 5                 # the repeat/batch probe's dataset size
SHUFFLE_BUFFER, SHUFFLE_EPOCHS = 2, 200
LOSS_LOGITS = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, -0.3], [-1.5, 0.0, 1.0], [0.3, 2.5, -0.7]], np.float32)
MASK_LABELS = np.array([0, 1, 2, 1])            # masked-mean probe: rows 2, 3 masked out
LOSS_MASK = np.array([1.0, 1.0, 0.0, 0.0], np.float32)
WEIGHT_LABELS = np.array([0, 1, 2, 2])          # sample-weight probe: class weights (1, 1, 0) ≡ row weights LOSS_MASK
DROPOUT_RATES = (0.3, 0.45)       # 0.3 as asked; at 0.45 fl(1/(1−p)) ≠ fl(1/fl(1−p)) in float32
SEQUENCES = [[1], [2, 3, 4]]                    # padding probes
RNN_INPUT = [[[0.5], [-1.0], [0.0]]]            # RNN probes: one row, 3 steps, 2 real (post-padded), 1 feature
RNN_INPUT_PRE = [[[0.0], [0.5], [-1.0]]]        # the same row pre-padded
RNN_WIDTH = 2
EMBED_TOKENS, EMBED_COEF = [0, 0], [1.0, 2.0]   # sparse-Adam probe: loss = Σ_k c_k·E[token_k], token 0 seen twice
INIT_FAN_IN, INIT_FAN_OUT = 100, 2000
DECAY = dict(w0=1.0, lr=0.5, wd=0.25, momentum=0.5, steps=2)   # binary fractions: every result exact
MOMENTUM = dict(lr=0.5, lr_after=0.25, momentum=0.5, grad=1.0, steps=3, change_at=3)
ADAM = dict(w0=[0.5, -1.0, 2.0, 0.0], a=[1.0, 2.0, 0.5, 3.0], b=[0.1, -0.2, 0.3, 1e-3], lr=0.1, wd=0.1, steps=5,
            b1=0.9, b2=0.999, eps=1e-8)        # gradient g = a·w + b (float64)
EPS_HAT = dict(grad=[1e-6, 1e-3, 1.0], lr=0.25, b1=0.9, b2=0.999, eps=1e-8)


def dropout_input(n: int = 20000) -> np.ndarray:
    """float32 values in [0.5, 1.5): x·s and x/(1−p) round differently for ~10% of them at p = 0.3."""
    return (np.random.default_rng(11).random(n) + 0.5).astype(np.float32)


# ----------------------------------------------------------------------------------------------- classifiers
def _close(a: float, b: float, rtol: float = 1e-5) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-30)


def classify_padded_output(outputs) -> str:
    """What an RNN returned at the padded step of RNN_INPUT (outputs (1, 3, H)): "zero", "last_state" (the state
    of the last real step repeated) or "computed" (the cell kept running over the pad)."""
    out = np.asarray(outputs, np.float64)[0]
    if np.all(out[2] == 0):
        return "zero"
    return "last_state" if np.allclose(out[2], out[1]) else "computed"


def classify_second_moment(v: float, beta2: float = 0.999) -> str:
    """Adam's v for embedding row 0 after one step of the EMBED_* loss (gradient slices 1 and 2 on one row):
    "squared_sum" (1−β2)·(1 + 2)² — the row's gradient squared — or "sum_of_squares" (1−β2)·(1² + 2²), each
    occurrence squared apart."""
    for name, total in (("squared_sum", 9.0), ("sum_of_squares", 5.0)):
        if _close(v, (1 - beta2) * total, 1e-6):
            return name
    return "other"


def classify_reduction(value, per_row: np.ndarray, weights: np.ndarray) -> str:
    """Name the reduction that turned per-row losses ℓ with weights w into `value`.

    "per_example" (not reduced), "weighted_mean" Σw·ℓ/Σw, "sum_over_n" Σw·ℓ/N, "plain_mean" Σℓ/N, else "other".
    """
    value = np.asarray(value, np.float64)
    if value.ndim:
        return "per_example"
    per_row, weights = np.asarray(per_row, np.float64), np.asarray(weights, np.float64)
    v = float(value)
    for name, ref in (("weighted_mean", (per_row * weights).sum() / weights.sum()),
                      ("sum_over_n", (per_row * weights).sum() / per_row.size), ("plain_mean", per_row.mean())):
        if _close(v, float(ref)):
            return name
    return "other"


DROPOUT_FORMS = {
    # name: kept value of x (float32) at rate p
    "x*fl(1/(1-p))": lambda x, p: x * np.float32(1.0 / (1.0 - p)),              # reciprocal in float64, rounded
    "x*fl(1/fl(1-p))": lambda x, p: x * (np.float32(1.0) / np.float32(1.0 - p)),  # reciprocal of rounded 1−p
    "x/fl(1-p)": lambda x, p: x / np.float32(1.0 - p),                          # true division
}


def classify_dropout(x: np.ndarray, outputs: dict[float, np.ndarray]) -> dict:
    """How kept units were scaled, from float32 dropout outputs y = outputs[p] of the input x at each rate p.

    "form": the DROPOUT_FORMS entries that reproduce every kept value at every rate, joined by " = " when the
    rates cannot tell them apart ("other" when none does); "scale_<p>": the kept value of x = 1, i.e. the
    float32 factor (the median of y/x when no form holds); "kept_<p>": the kept fraction, 2 decimals.
    """
    forms = list(DROPOUT_FORMS)
    out = {}
    for p, y in outputs.items():
        kept = y != 0
        xs, ys = x[kept], y[kept]
        forms = [f for f in forms if np.array_equal(ys, DROPOUT_FORMS[f](xs, p))]
        out[f"kept_{p:g}"] = round(float(kept.mean()), 2)
        out[f"scale_{p:g}"] = float(np.median((ys / xs).astype(np.float64)))
    for p in outputs:
        if forms:
            out[f"scale_{p:g}"] = float(DROPOUT_FORMS[forms[0]](np.float32(1.0), p))
    return {"form": " = ".join(forms) or "other", **out}


def classify_decay(w_final: float) -> str:
    """Which weight decay produced `w_final` from DECAY's zero-gradient run: "coupled" | "decoupled" | "none"."""
    named = {"coupled": sgd_decay_reference(coupled=True), "decoupled": sgd_decay_reference(coupled=False),
             "none": DECAY["w0"]}
    return next((k for k, v in named.items() if _close(w_final, v, 1e-9)), "other")


def classify_loss_input(loss: float) -> str:
    """Whether the loss read [0.2, 0.3, 0.5] (label 2) as "probabilities" (−log 0.5) or "logits" (log-softmax)."""
    v = np.array([0.2, 0.3, 0.5])
    if _close(loss, -math.log(0.5)):
        return "probabilities"
    if _close(loss, float(np.log(np.exp(v).sum()) - v[2])):
        return "logits"
    return "other"


def finite_or_name(x: float):
    """x as a JSON-able float, or "nan" / "inf" / "-inf"."""
    x = float(x)
    return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))


# ------------------------------------------------------------------------------------- numpy references
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


def rel_diff(update, reference) -> float:
    """max_i |u_i − r_i| / |r_i|."""
    u, r = np.asarray(update, np.float64), np.asarray(reference, np.float64)
    return float(np.max(np.abs(u - r) / np.abs(r)))


def keras_first_epsilon_hat() -> float:
    """The ε̂ that makes Keras's first Adam step equal torch's (common.optim.keras_epsilon_hat at t = 1)."""
    return keras_epsilon_hat(EPS_HAT["eps"], EPS_HAT["b2"], 1)


# ------------------------------------------------------------------------------------------ the catalogue
@dataclass(frozen=True)
class Trap:
    id: str
    title: str
    section: str                   # the DESIGN §5 paragraph
    expected: dict[str, dict]      # framework → the measurement its probe must reproduce (keys checked)
    conversion: str                # what exact mode does about it, pointing at the common/ rule
    compare: tuple[str, ...] = ()  # keys compared across frameworks for `diverges`
    canonical: dict | None = None  # the framework-free semantics of those keys, where there is one
    rtol: float = 0.0
    atol: float = 0.0
    effect: Callable[[dict], tuple[float | None, str]] | None = field(default=None, repr=False)
    design_note: str = ""          # where DESIGN.md's claim differs from what the probes measured

    def matches(self, framework: str, measured) -> bool:
        """Whether `measured` reproduces `expected[framework]` (only the expected keys are checked)."""
        return matches(self.expected[framework], normalise(measured), self.rtol, self.atol)

    def diverges(self, measured: dict[str, Any]) -> bool | None:
        """True when two frameworks (or one and the canonical value) disagree on a compared key."""
        keys = self.compare or (None,)
        judged = False
        for key in keys:
            values = [v if key is None else v[key] for v in measured.values()
                      if key is None or (isinstance(v, dict) and key in v)]
            if self.canonical is not None and (key is None or key in self.canonical):
                values.append(self.canonical if key is None else self.canonical[key])
            if len(values) < 2:
                continue
            judged = True
            if any(not matches(a, b, self.rtol, self.atol) for i, a in enumerate(values) for b in values[i + 1:]):
                return True
        return False if judged else None

    def effect_of(self, measured: dict[str, Any]) -> tuple[float | None, str]:
        """(size, text) of the effect, from whatever frameworks were measured."""
        if self.effect is None or not measured:
            return None, ""
        try:
            value, text = self.effect(measured)
        except Exception as exc:  # e.g. a framework the effect needs was not measured; never fail the matrix
            return None, f"n/a ({type(exc).__name__}: {exc})"
        return (None if value is None else float(value)), text


def normalise(value):
    """A JSON-able copy: numpy scalars/arrays → Python, tuples → lists, non-finite floats → "nan"/"inf"."""
    if isinstance(value, dict):
        return {str(k): normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    if isinstance(value, np.ndarray):
        return normalise(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return finite_or_name(value)
    return value


def matches(expected, measured, rtol: float = 0.0, atol: float = 0.0) -> bool:
    """Recursive comparison; dicts: every expected key present and matching; numbers: within rtol/atol."""
    if isinstance(expected, dict):
        return isinstance(measured, dict) and all(k in measured and matches(v, measured[k], rtol, atol)
                                                  for k, v in expected.items())
    if isinstance(expected, list):
        return (isinstance(measured, list) and len(expected) == len(measured)
                and all(matches(e, m, rtol, atol) for e, m in zip(expected, measured)))
    if isinstance(expected, bool) or isinstance(measured, bool):
        return type(expected) is type(measured) and expected == measured
    if isinstance(expected, (int, float)) and isinstance(measured, (int, float)):
        return abs(expected - measured) <= atol + rtol * max(abs(expected), abs(measured))
    return type(expected) is type(measured) and expected == measured


# effect helpers ------------------------------------------------------------------------------------------
def _vals(m: dict, key: str) -> dict[str, Any]:
    return {fw: v[key] for fw, v in m.items() if key in v}


def _spread(m: dict, key: str, unit: str = "") -> tuple[float, str]:
    vals = {fw: float(v) for fw, v in _vals(m, key).items()}
    spread = max(vals.values()) - min(vals.values())
    listing = ", ".join(f"{fw} {v:.6g}" for fw, v in vals.items())
    return spread, f"{key}: {listing} (max |Δ| = {spread:.3g}{unit})"


def _listing(m: dict, key: str) -> str:
    return ", ".join(f"{fw} {v:.4g}" if isinstance(v, float) else f"{fw} {v}" for fw, v in _vals(m, key).items())


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
    return None, "all-masked batch: " + _listing(m, "all_masked") + "; reduction: " + _listing(m, "reduction")


def _effect_ratio(key: str, text: str):
    def effect(m):
        vals = [float(v) for v in _vals(m, key).values()]
        ratio = max(vals) / min(vals)
        return ratio, f"{text}: " + ", ".join(f"{fw} {v:.3g}" for fw, v in _vals(m, key).items()) + f" (×{ratio:.3g})"
    return effect


def _effect_adam_equiv(m):
    def diff(key):
        return float(np.max(np.abs(np.array(m["torch"][key], np.float64) - np.array(m["jax"][key], np.float64))))

    worst = max(diff("adam_coupled"), diff("adamw"))
    text = (f"max |torch − optax| after {ADAM['steps']} steps, float64: Adam(wd) {diff('adam_coupled'):.2g}, "
            f"AdamW {diff('adamw'):.2g}")
    if "adamw_f32" in m["torch"] and "adamw_f32" in m["jax"]:
        text += f"; float32 (x64 off): Adam(wd) {diff('adam_coupled_f32'):.2g}, AdamW {diff('adamw_f32'):.2g}"
    return worst, text + (" (bit for bit)" if worst == 0 else "")


def _effect_init(m):
    stds = {fw: float(v["weight_std"]) for fw, v in m.items()}
    ratio = max(stds.values()) / min(stds.values())
    return ratio, ("weight std·√fan_in: " + ", ".join(f"{fw} {s:.3f}" for fw, s in stds.items())
                   + f" (×{ratio:.2f}); bias max·√fan_in: " + _listing(m, "bias_max"))



CATALOGUE: tuple[Trap, ...] = (
    Trap(
        "shuffle_order", "Shuffle orders differ for the same seed", "Batching and order",
        {"torch": {"order": [4, 1, 7, 5, 3, 9, 0, 8, 6, 2]}, "tf": {"order": [4, 9, 1, 0, 7, 3, 5, 2, 8, 6]},
         "jax": {"order": [0, 1, 8, 5, 6, 4, 3, 2, 7, 9]}},
        "common.batching.BatchPlan.order: one numpy permutation per epoch, default_rng([seed, 2, epoch]), fed to "
        "DataLoader(batch_sampler), tf.data slices and JAX indexing",
        compare=("order",), canonical={"order": np.random.default_rng(SEED).permutation(ORDER_N).tolist()},
        effect=_effect_orders),
    Trap(
        "dataloader_global_rng", "DataLoader draws from the global torch RNG every epoch, even with shuffle=False",
        "Batching and order",
        {"torch": {"draws_per_epoch": 1, "draws_per_epoch_own_generator": 0}},
        "backends.torch_backend.data: DataLoader(batch_sampler=plan, generator=its own torch.Generator); exact mode "
        "draws no dropout from torch at all (common.dropout.shared_masks)",
        compare=("draws_per_epoch",), canonical={"draws_per_epoch": 0},
        effect=lambda m: (m["torch"]["draws_per_epoch"], f"{m['torch']['draws_per_epoch']} int64 drawn from the "
                          "global torch RNG per epoch: every later native dropout mask shifts")),
    Trap(
        "tf_shuffle_buffer", "tf.data shuffle(buffer_size < N) is not a uniform permutation", "Batching and order",
        {"tf": {"first_element_support": [0, 1]}},
        "common.batching: the plan's permutation is fed as tf.data.Dataset.from_tensor_slices(x[ids]); no .shuffle()",
        compare=("first_element_support",),
        canonical={"first_element_support": sorted({int(np.random.default_rng(e).permutation(ORDER_N)[0])
                                                    for e in range(SHUFFLE_EPOCHS)})},
        effect=lambda m: (len(m["tf"]["first_element_support"]) / ORDER_N,
                          f"over {SHUFFLE_EPOCHS} epochs the first element came from only "
                          f"{len(m['tf']['first_element_support'])} of {ORDER_N} ids (buffer {SHUFFLE_BUFFER}); "
                          "a uniform shuffle reaches all")),
    Trap(
        "repeat_batch_epochs", "repeat().batch() batches across epoch boundaries", "Batching and order",
        {"torch": {"batches": [[0, 1, 2], [3, 4], [0, 1, 2], [3, 4]]},
         "tf": {"batches": [[0, 1, 2], [3, 4, 0], [1, 2, 3], [4]],
                "batch_then_repeat": [[0, 1, 2], [3, 4], [0, 1, 2], [3, 4]]}},
        "common.batching.BatchPlan cuts batches per epoch; backends.tf_backend.data builds one dataset per epoch "
        "and calls .batch() on it (never repeat().batch())",
        compare=("batches",),
        canonical={"batches": [b.ids.tolist() for e in range(2)
                               for b in BatchPlan(ORDER_N_SMALL, 3, False, "keep", SEED).batches(e)]},
        effect=_effect_crossing),
    Trap(
        "ragged_recompile", "A ragged last batch recompiles a compiled step (batch sizes 4, 4, 2, 3)",
        "Batching and order",
        {"torch": {"compiles": 2}, "tf": {"compiles": 3, "compiles_input_signature": 1},
         "jax": {"compiles": 3, "compiles_padded": 1}},
        "common.batching last_batch='pad': static batch B, filler rows weight 0, loss Σw·ℓ/Σw "
        "(common.metrics.weighted_mean); the TF step has an input_signature with batch None",
        compare=("compiles",),
        effect=lambda m: (max(v["compiles"] for v in m.values()),
                          "compiles for 4 calls of sizes 4,4,2,3: " + _listing(m, "compiles")
                          + " (torch.compile marks the dim dynamic after one recompile); padded/None-signature: 1"),
        design_note="DESIGN names only JAX; tf.function retraces for every new batch size too (3), and "
                    "torch.compile recompiles once and then goes dynamic (2)."),
    Trap(
        "keras_pad_sequences", "Keras pad_sequences pads and truncates at the front by default",
        "Padding and masks",
        {"tf": {"padded": [[0, 1], [3, 4]], "padding": "pre", "truncating": "pre"}},
        "common.padding: pad and truncate sides come from sequence.pad / sequence.truncate and reach Keras as "
        "pad_sequences(padding=…, truncating=…); sequence.pad = \"native\" keeps Keras's pre (common.explain "
        "names the divergence when the mask is off)",
        compare=("padded",), canonical={"padded": [[1, 0], [2, 3]]},
        effect=lambda m: (None, f"maxlen 2 of {SEQUENCES}: {m['tf']['padded']} (post/post: [[1, 0], [2, 3]])")),
    Trap(
        "torch_pad_sequence", "torch pad_sequence is time-major unless batch_first=True; pads at the end",
        "Padding and masks",
        {"torch": {"default": [[1, 2], [0, 3], [0, 4]], "batch_first": [[1, 0, 0], [2, 3, 4]]}},
        "common.padding: batch-major (B, T); the torch collate_fn calls pad_sequence(batch_first=True, "
        "padding_side=sequence.pad)",
        compare=("default",), canonical={"default": [[1, 0, 0], [2, 3, 4]]},
        effect=lambda m: (None, f"default output is T×B {m['torch']['default']}, not B×T")),
    Trap(
        "tf_padded_batch", "tf.data padded_batch pads at the end", "Padding and masks",
        {"tf": {"default": [[1, 0, 0], [2, 3, 4]]}},
        "common.padding: padded_batch matches post-padding; pre-padding reverses each sequence, pads, and reverses "
        "the time axis back",
        compare=("default",), canonical={"default": [[1, 0, 0], [2, 3, 4]]},
        effect=lambda m: (None, f"{m['tf']['default']}: batch-major, padded at the end")),
    Trap(
        "rnn_padded_outputs", "What an RNN outputs at padded steps: torch packed 0, Keras the last state, flax "
        "keeps computing", "Padding and masks",
        {"torch": {"padded_output": "zero"}, "tf": {"padded_output": "last_state"},
         "jax": {"padded_output": "computed"}},
        "common.padding: the models read only the state after each row's last real token (torch h_n of the packed "
        "sequence, Keras SimpleRNN's masked final state, flax nn.RNN's carry at seq_lengths), never the padded "
        "outputs",
        compare=("padded_output",),
        effect=lambda m: (None, ", ".join(f"{fw} {v['padded_output']}" for fw, v in m.items()))),
    Trap(
        "pack_padded_pre", "torch pack_padded_sequence assumes post-padding: a pre-padded row packs its pads",
        "Padding and masks",
        {"torch": {"pre_padded_equals_real": False}},
        "the torch adapter packs pre-padded batches from their real tokens (torch_backend.sequence_model); "
        "common.padding defines the masked result as independent of the pad side",
        compare=("pre_padded_equals_real",), canonical={"pre_padded_equals_real": True},
        effect=lambda m: (None, "h_n of a pre-padded row packed with its length is the state after the pads and the "
                                "first real tokens, not after the real tokens")),
    Trap(
        "rnn_bias_vectors", "torch nn.RNN trains two bias vectors (b_ih + b_hh); Keras and flax one",
        "Padding and masks",
        {"torch": {"bias_vectors": 2, "effective_bias_step": 2.0}, "tf": {"bias_vectors": 1},
         "jax": {"bias_vectors": 1}},
        "common.initializers: one canonical rnn.bias; the torch adapter loads it into bias_ih_l0 and freezes "
        "bias_hh_l0 at 0, so the effective bias gets one gradient step, not two",
        compare=("bias_vectors",), canonical={"bias_vectors": 1, "effective_bias_step": 1.0}, rtol=1e-6,
        effect=lambda m: (m["torch"].get("effective_bias_step"),
                          f"one SGD step moves torch's b_ih + b_hh by {m['torch'].get('effective_bias_step'):g}× "
                          "lr·∂L/∂b") if "torch" in m else (None, "")),
    Trap(
        "sparse_embedding_adam", "Keras Adam squares an Embedding's sparse gradient per occurrence",
        "Optimisers",
        {"torch": {"second_moment": "squared_sum"}, "tf": {"second_moment": "sum_of_squares"},
         "jax": {"second_moment": "squared_sum"}},
        "exact mode densifies the Embedding's tf.IndexedSlices gradient before Keras Adam/AdamW "
        "(tf_backend.execution.step_body(dense_gradients=True)); Adam's v is defined on the row's whole gradient "
        "(common.optim)",
        compare=("second_moment",), canonical={"second_moment": "squared_sum"},
        effect=lambda m: (None, "a token seen k times in a batch: Keras v gets Σ g_k², not (Σ g_k)², so its Adam "
                                "step differs from the second step on (with an l1/l2 penalty on the embedding the "
                                "gradient is dense and the trap hides)")),
    Trap(
        "masked_mean_loss", "Masked mean loss: valid-entry mean, NaN or per-example", "Padding and masks",
        {"torch": {"reduction": "weighted_mean", "all_masked": "nan"},
         "tf": {"reduction": "weighted_mean", "all_masked": 0.0, "ignore_class": "weighted_mean",
                "ignore_class_all_masked": 0.0},
         "jax": {"reduction": "per_example", "all_masked": "per_example"}},
        "common.padding.masked_mean: loss = Σm·ℓ/max(Σm, 1) with m = w (per sequence) or w·L (per token): equal "
        "to Σm·ℓ/Σm whenever a row counts, 0 (Keras's value) for an all-padded batch, never NaN",
        compare=("reduction", "all_masked"), effect=_effect_masked),
    Trap(
        "sample_weight_reduction", "Keras sample_weight divides by N, not Σw", "Padding and masks",
        {"torch": {"default": "weighted_mean"},
         "tf": {"default": "sum_over_n", "mean_with_sample_weight": "weighted_mean"},
         "jax": {"default": "per_example"}},
        "common.metrics.weighted_mean (Σw·ℓ/Σw); backends.tf_backend: reduction='mean_with_sample_weight'",
        compare=("default",), canonical={"default": "weighted_mean"},
        effect=lambda m: (float(LOSS_MASK.sum() / LOSS_MASK.size),
                          "default reductions: " + _listing(m, "default")
                          + f"; Keras's default is Σw/N = {LOSS_MASK.sum() / LOSS_MASK.size:g} × the weighted mean"),
        design_note="torch has no sample_weight; its CrossEntropyLoss(weight=class weights) is measured and "
                    "divides by Σw."),
    Trap(
        "dropout_scale", "Inverted dropout: how kept values are scaled (float32, p = 0.3 and 0.45)", "Dropout",
        {"torch": {"form": "x*fl(1/fl(1-p))", "scale_0.3": 1.4285714626312256, "scale_0.45": 1.8181817531585693},
         "tf": {"form": "x*fl(1/(1-p))", "scale_0.3": 1.4285714626312256, "scale_0.45": 1.8181818723678589,
                "tf.nn.dropout": "x*fl(1/(1-p))"},
         "jax": {"form": "x*fl(1/fl(1-p))", "scale_0.3": 1.4285714626312256, "scale_0.45": 1.8181817531585693,
                 "jit_form": "x*fl(1/fl(1-p))"}},
        "common.dropout.shared_masks: h · m with m = keep · fl(1/(1−p)) (keep_scale in float64, then the spec "
        "dtype), an explicit multiply in every backend, so the frameworks' own rounding never enters exact mode",
        compare=("form", "scale_0.3", "scale_0.45"),
        canonical={"form": "x*fl(1/(1-p))", **{f"scale_{p:g}": float(np.float32(keep_scale(p)))
                                                for p in DROPOUT_RATES}},
        effect=lambda m: (_spread(m, "scale_0.45")[0],
                          "kept value: " + _listing(m, "form") + "; scale at p = 0.3 equal everywhere "
                          f"({float(np.float32(keep_scale(0.3))):.9g}), at p = 0.45: " + ", ".join(
                              f"{fw} {v['scale_0.45']:.9g}" for fw, v in m.items()) + " (1 float32 ulp)"),
        design_note="DESIGN says torch computes x * (mask * (1/(1-p))); measured, torch (mask.div_(1 − p) in "
                    "float32) and flax (x / keep_prob, which XLA rewrites into x · fl(1/keep_prob)) both multiply by "
                    "the reciprocal of the float32-rounded 1 − p, while Keras/tf.nn.dropout multiply by 1/(1 − p) "
                    "computed in float64 and then rounded. At p = 0.3 the two agree bit for bit; at p = 0.15 or "
                    "0.45 they differ by one float32 ulp."),
    Trap(
        "dropout_default_mode", "Dropout default mode: F.dropout and nnx.Dropout active, Keras Dropout off",
        "Dropout",
        {"torch": {"default_call": "active", "nn.Dropout": "active"},
         "tf": {"default_call": "inactive", "tf.nn.dropout": "active"},
         "jax": {"default_call": "active", "linen.Dropout": "ValueError"}},
        "common.driver: exact mode multiplies by the shared mask in train steps only; evaluation passes no mask",
        compare=("default_call",),
        effect=lambda m: (None, "called without a mode: " + _listing(m, "default_call")),
        design_note="flax.linen.Dropout (the linen API the JAX backend uses) has no default: called without "
                    "`deterministic` it raises ValueError; only nnx.Dropout is active by default."),
    Trap(
        "dropout_rate_one", "Dropout at rate 1.0: layers give zeros, raw tf.nn.dropout raises", "Dropout",
        {"torch": {"layer": "zeros", "functional": "zeros"},
         "tf": {"layer": "zeros", "functional": "ValueError"},
         "jax": {"layer": "zeros", "nnx": "zeros"}},
        "common.spec rejects dropout ≥ 1; exact mode never calls a framework dropout (common.dropout.shared_masks)",
        compare=("layer", "functional"),
        effect=lambda m: (None, "layer: " + _listing(m, "layer") + "; functional: " + _listing(m, "functional"))),
    Trap(
        "l2_vs_weight_decay", "SGD weight_decay=λ gives λw, Keras L2(λ) gives 2λw", "L1 / L2 / weight decay",
        {"torch": {"grad_per_lambda": 1.0}, "tf": {"grad_per_lambda": 2.0, "converted": 1.0},
         "jax": {"grad_per_lambda": 1.0}},
        "common.regularization: coupled c → torch weight_decay=c, Keras L2(c/2) (Regularization.keras_l2_factor), "
        "optax add_decayed_weights(c)",
        compare=("grad_per_lambda",), effect=_effect_ratio("grad_per_lambda", "penalty gradient / (λ·w)")),
    Trap(
        "penalty_in_loss", "Keras reports regularizer penalties in the loss; torch weight_decay is not in it",
        "L1 / L2 / weight decay",
        {"torch": {"reported_loss_includes_penalty": False},
         "tf": {"reported_loss_includes_penalty": True, "evaluate_includes_penalty": True},
         "jax": {"reported_loss_includes_penalty": False}},
        "common.record: the step loss is the cross-entropy alone (penalty recorded beside it, "
        "common.regularization.Regularization.penalty); the TF adapter returns ce, not ce + Σ model.losses",
        compare=("reported_loss_includes_penalty",), canonical={"reported_loss_includes_penalty": False},
        effect=lambda m: (m["tf"]["penalty"], f"Keras fit/evaluate loss = CE + Σ model.losses "
                          f"(+{m['tf']['penalty']:.4g} in the probe)")),
    Trap(
        "optimizer_weight_decay", "Keras optimizer weight_decay is decoupled and decays biases too",
        "L1 / L2 / weight decay",
        {"torch": {"sgd_has_weight_decay": True, "kernel": "coupled", "bias": "coupled"},
         "tf": {"sgd_has_weight_decay": True, "kernel": "decoupled", "bias": "decoupled"},
         "jax": {"sgd_has_weight_decay": False}},
        "common.regularization: coupled c → Keras L2(c/2); decoupled d → optimizer weight_decay=d with "
        "exclude_from_weight_decay for tensors Regularization.applies rejects (biases unless regularize_bias)",
        compare=("kernel", "bias"),
        effect=lambda m: (abs(sgd_decay_reference(True) - sgd_decay_reference(False)),
                          f"SGD(momentum {DECAY['momentum']}, wd {DECAY['wd']}) from w = 1, 2 steps: coupled "
                          f"{sgd_decay_reference(True)} vs decoupled {sgd_decay_reference(False)}; kernel: "
                          + _listing(m, "kernel"))),
    Trap(
        "adam_weight_decay_equivalence", "torch Adam(wd) = chain(add_decayed_weights, adam); AdamW = optax.adamw",
        "L1 / L2 / weight decay",
        {"torch": {"adam_coupled": adam_reference("coupled"), "adamw": adam_reference("decoupled")},
         "jax": {"adam_coupled": adam_reference("coupled"), "adamw": adam_reference("decoupled")}},
        "common.regularization: coupled c → torch Adam(weight_decay=c) / optax add_decayed_weights(c) before adam; "
        "decoupled d → AdamW(d) / optax.adamw(d, mask)",
        compare=("adam_coupled", "adamw"), rtol=1e-12, atol=1e-15, effect=_effect_adam_equiv,
        design_note="DESIGN says torch AdamW equals optax.adamw bit for bit; measured, the two agree to rounding "
                    "only: 2.2e-16 (1 ulp) after 5 float64 steps, 3.8e-6 in float32 with x64 off (optax then "
                    "evaluates 1 − βᵗ in float32), 1.2e-7 in float32 with x64 on."),
    Trap(
        "optax_decay_mask", "optax.add_decayed_weights(mask=None) decays biases", "L1 / L2 / weight decay",
        {"jax": {"kernel_decayed": True, "bias_decayed": True}},
        "common.regularization.Regularization.applies → the optax mask pytree (backends.jax_backend.optim); "
        "biases only with regularize_bias",
        compare=("bias_decayed",), canonical={"bias_decayed": False},
        effect=lambda m: (None, "mask=None decays every leaf, biases included")),
    Trap(
        "abs_subgradient", "Gradient of |x| at 0", "L1 / L2 / weight decay",
        {"torch": {"grad_abs_at_0": 0.0}, "tf": {"grad_abs_at_0": 0.0, "keras_l1_grad_at_0": 0.0},
         "jax": {"grad_abs_at_0": 1.0}},
        "common.regularization.Regularization.gradient: f·sign(w), sign(0) = 0; the JAX chain adds sign(w) "
        "explicitly (backends.jax_backend.optim.l1_sign)",
        compare=("grad_abs_at_0",), canonical={"grad_abs_at_0": 0.0},
        effect=lambda m: _spread(m, "grad_abs_at_0")),
    Trap(
        "adam_eps_default", "Adam ε default", "Optimisers",
        {"torch": {"eps": 1e-8}, "tf": {"eps": 1e-7}, "jax": {"eps": 1e-8}},
        "the spec's optimizer.eps is passed explicitly; Keras gets common.optim.keras_epsilon_hat(eps, β2, t)",
        compare=("eps",), effect=_effect_ratio("eps", "default ε")),
    Trap(
        "keras_epsilon_hat", "Keras Adam's ε-hat form differs from torch even at ε = 1e-8", "Optimisers",
        {"torch": {"eps_1e-8": 0.0}, "tf": {"eps_1e-8": 0.2326556, "eps_hat": 0.0}, "jax": {"eps_1e-8": 0.0}},
        "common.optim.keras_epsilon_hat: Keras ε̂_t = ε·√(1 − β2ᵗ) assigned before every step "
        "(backends.tf_backend.optim)",
        compare=("eps_1e-8",), canonical={"eps_1e-8": 0.0}, rtol=1e-4, atol=1e-12,
        effect=lambda m: (m["tf"]["eps_1e-8"], f"first-step update, max relative error vs torch's ε placement: "
                          f"Keras ε=1e-8 {m['tf']['eps_1e-8']:.3g}, Keras ε̂₁ {m['tf']['eps_hat']:.3g} "
                          f"(g = {EPS_HAT['grad']})")),
    Trap(
        "sgd_momentum_schedule", "SGD momentum: Keras m = μm − lr·g vs torch b = μb + g under an lr change",
        "Optimisers",
        {"torch": {"constant_lr": -2.125, "lr_changed": -1.6875}, "tf": {"constant_lr": -2.125, "lr_changed": -1.875},
         "jax": {"constant_lr": -2.125, "lr_changed": -1.6875}},
        "common.optim: torch's b ← μb + g; Keras's m = −lr·b agrees while lr is constant (the spec has no "
        "schedule; one would need m rescaled by lr_new/lr_old at the change)",
        compare=("constant_lr", "lr_changed"),
        canonical={"constant_lr": sgd_momentum_reference(False), "lr_changed": sgd_momentum_reference(True)},
        effect=lambda m: _spread(m, "lr_changed", f" after {MOMENTUM['steps']} steps, lr {MOMENTUM['lr']} → "
                                 f"{MOMENTUM['lr_after']} at step {MOMENTUM['change_at']}")),
    Trap(
        "default_init", "Default Dense initialisers (fan_in 100, fan_out 2000; statistics · √fan_in)",
        "Initialisation",
        {"torch": {"weight_std": 0.57735, "weight_max": 1.0, "bias_max": 1.0},
         "tf": {"weight_std": 0.30861, "weight_max": 0.53452, "bias_max": 0.0},
         "jax": {"weight_std": 1.0, "weight_max": 2.27370, "bias_max": 0.0}},
        "common.initializers.initial_params(spec model.init): one numpy init (torch_default | glorot_uniform | "
        "lecun_normal) copied into every framework",
        compare=("weight_std", "bias_max"), rtol=0.02, atol=1e-12, effect=_effect_init),
    Trap(
        "weight_layout", "Weight layout: torch Linear (out, in), Keras/flax kernel (in, out)", "Initialisation",
        {"torch": {"weight_shape": [2, 3]}, "tf": {"weight_shape": [3, 2]}, "jax": {"weight_shape": [3, 2]}},
        "common.initializers: canonical layer{i}.weight is (in, out); backends.torch_backend.model transposes on "
        "load and export",
        compare=("weight_shape",), canonical={"weight_shape": [3, 2]},
        effect=lambda m: (None, "Linear/Dense 3 → 2: " + _listing(m, "weight_shape"))),
    Trap(
        "loss_input_defaults", "Keras SparseCategoricalCrossentropy takes probabilities by default and clips them",
        "Losses and metrics",
        {"torch": {"input": "logits", "zero_prob_loss": "inf"},
         "tf": {"input": "probabilities", "from_logits": False, "zero_prob_loss": 16.118095},
         "jax": {"input": "logits", "zero_prob_loss": "inf"}},
        "common.metrics.cross_entropy on logits (ℓ = logsumexp(z) − z_y); the TF adapter uses "
        "SparseCategoricalCrossentropy(from_logits=True)",
        compare=("input", "zero_prob_loss"), rtol=1e-6,
        effect=lambda m: (None, "default input: " + _listing(m, "input") + "; loss of a zero-probability label: "
                          + _listing(m, "zero_prob_loss") + " (Keras clips p to [1e-7, 1 − 1e-7]: −log 1e-7)")),
    Trap(
        "fit_epoch_loss", "Keras fit's epoch loss is a running mean, not the loss of the final weights",
        "Losses and metrics",
        {"tf": {"fit_epoch_loss": "size_weighted_running_mean"}},
        "common.driver: exact mode evaluates train_loss after the epoch in eval mode (common.metrics.aggregate); "
        "native mode reproduces fit's common.native.running_epoch_loss",
        compare=("fit_epoch_loss",), canonical={"fit_epoch_loss": "final_weights"},
        effect=lambda m: (m["tf"]["fit"] - m["tf"]["final_weights"],
                          f"fit reports {m['tf']['fit']:.5g}, the final weights give {m['tf']['final_weights']:.5g} "
                          "(10 rows, batches 4, 4, 2, one epoch)")),
    Trap(
        "metric_aggregation", "Per-batch-mean accuracy vs sample-weighted; Keras evaluate is sample-weighted",
        "Losses and metrics",
        {"tf": {"evaluate": "weighted", "batch_size_invariant": True}},
        "common.metrics.aggregate(spec metrics.aggregation): 'weighted' Σ S_b / Σ n_b by default; "
        "'per_batch_mean' reproduces the seeds' banding",
        compare=("evaluate",), canonical={"evaluate": "weighted"},
        effect=lambda m: (m["tf"]["per_batch_mean"] - m["tf"]["weighted"],
                          f"same predictions, batches 4, 4, 2: weighted {m['tf']['weighted']:.3g}, "
                          f"per-batch mean {m['tf']['per_batch_mean']:.3g}")),
    Trap(
        "float64_conversion", "jnp.asarray(float64) becomes float32 unless x64 is on", "Precision and determinism",
        {"torch": {"dtype": "float64"}, "tf": {"dtype": "float64", "keras.ops": "float64"},
         "jax": {"dtype": "float32", "with_x64": "float64"}},
        "backends.jax_backend.adapter enables jax_enable_x64 for every spec and casts every array to the spec dtype "
        "explicitly (backends.jax_backend.data)",
        compare=("dtype",), canonical={"dtype": "float64"},
        effect=lambda m: (None, "float64 numpy array converted: " + _listing(m, "dtype"))),
    Trap(
        "tf32_defaults", "TF32 default settings (fresh process)", "Precision and determinism",
        {"torch": {"matmul_tf32": False, "cudnn_tf32": True, "float32_matmul_precision": "highest"},
         "tf": {"matmul_tf32": True},
         "jax": {"matmul_tf32": "platform default", "default_matmul_precision": None}},
        "backends.torch_backend.adapter sets allow_tf32 = False (matmul, cuDNN) on CUDA; backends.jax_backend.model "
        "uses precision=HIGHEST; the settings are the defaults, the GPU decides whether TF32 is used",
        compare=("matmul_tf32",),
        effect=lambda m: (None, "matmul TF32: " + _listing(m, "matmul_tf32")),
        design_note="these are the settings only; on this CPU machine no TF32 arithmetic happens. jax's "
                    "jax_default_matmul_precision is None (backend default), which the GPU backend runs as TF32/bf16 "
                    "passes on Ampere+."),
    Trap(
        "keras_auto_jit", "Keras jit_compile='auto' and op determinism", "Precision and determinism",
        {"tf": {"model_supports_jit": True, "with_op_determinism": False}},
        "none needed: the TF backend runs its own tf.function step (jit_compile is not used)",
        effect=lambda m: (None, f"model_supports_jit: {m['tf']['model_supports_jit']}; with op determinism on: "
                          f"{m['tf']['with_op_determinism']}; 'auto' resolved to {m['tf']['auto_resolved']} here "
                          f"(GPU: {m['tf']['gpu']})"),
        design_note="on a CPU-only machine 'auto' resolves to False before determinism is consulted; the "
                    "determinism switch is only visible through keras' model_supports_jit."),
    Trap(
        "last_batch_default", "Default last-batch handling keeps the partial batch", "Batching and order",
        {"torch": {"keeps_partial": True}, "tf": {"keeps_partial": True, "fit_steps": 3}},
        "common.batching: spec batching.last_batch (keep | drop | pad), default keep",
        compare=("keeps_partial",), canonical={"keeps_partial": True},
        effect=lambda m: (None, "10 rows, batch 4: DataLoader and Keras fit both run 3 steps (4, 4, 2)")),
    Trap(
        "keras_validation_split", "Keras fit(validation_split) takes the last rows, before shuffling",
        "Batching and order",
        {"tf": {"validation_rows": "last"}},
        "common.datasets: a seeded split of its own (test_fraction); validation_split is never used",
        effect=lambda m: (None, f"validation_split=0.2 of 10 rows validated on the {m['tf']['validation_rows']} "
                          "2 rows even with shuffle=True")),
    Trap(
        "keras_float64_hyper", "Keras casts Python-float hyperparameters through float32 in float64 runs",
        "Precision and determinism",
        {"tf": {"cast_python_0.9": 0.8999999761581421, "cast_numpy_0.9": 0.9, "sgd_rel_error_numpy_momentum": 0.0}},
        "backends.tf_backend.optim.hyper: hyperparameters go to Keras as numpy float64 scalars in float64 runs",
        compare=("cast_python_0.9",), canonical={"cast_python_0.9": 0.9}, rtol=1e-15,
        effect=lambda m: (m["tf"]["sgd_rel_error_python_momentum"],
                          f"ops.cast(0.9, float64) = {m['tf']['cast_python_0.9']!r}; SGD(momentum=0.9) float64 "
                          f"after 2 steps is off by {m['tf']['sgd_rel_error_python_momentum']:.2g} relative"),
        design_note="not in DESIGN §5: found by the TF backend (see backends.tf_backend.optim); "
                    "it alone exceeds the float64 rtol of 1e-9 within a few Adam steps."),
)

TRAPS: dict[str, Trap] = {t.id: t for t in CATALOGUE}


def for_framework(framework: str) -> list[Trap]:
    """The traps `framework` takes part in, in catalogue order."""
    return [t for t in CATALOGUE if framework in t.expected]
