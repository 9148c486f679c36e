"""Judging measurements: normalising, matching, divergence, the classifiers that name a measured behaviour, and
the effect helpers the catalogue's `effect` functions are built from (numpy + stdlib only).

Measurements are JSON-able dicts (`normalise`; non-finite floats become "nan", "inf", "-inf"). `matches` checks
only the keys `expected` lists, so a probe may report extra observations; numbers agree when
|a − b| ≤ atol + rtol·max(|a|, |b|) (the rule of common.tolerance), everything else must be equal. `diverges`:
for each compared key (the whole measurement when none), the frameworks that report it, plus the canonical value
when one is given, are checked pairwise; any disagreement is a divergence, and with fewer than two values nothing
can diverge (None). The classifiers are shared by the three probe files, so every framework is judged alike.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from common.traps.inputs import DECAY, LAYER_NORM_INPUT
from common.traps.reference import DROPOUT_FORMS, sgd_decay_reference


# ------------------------------------------------------------------------------------ normalising, matching
def finite_or_name(x: float):
    """x as a JSON-able float, or "nan" / "inf" / "-inf"."""
    x = float(x)
    return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))


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
        return isinstance(measured, dict) and all(
            k in measured and matches(v, measured[k], rtol, atol) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(measured, list)
            and len(expected) == len(measured)
            and all(matches(e, m, rtol, atol) for e, m in zip(expected, measured, strict=True))
        )
    if isinstance(expected, bool) or isinstance(measured, bool):
        return type(expected) is type(measured) and expected == measured
    if isinstance(expected, (int, float)) and isinstance(measured, (int, float)):
        return abs(expected - measured) <= atol + rtol * max(abs(expected), abs(measured))
    return type(expected) is type(measured) and expected == measured


def diverges(
    measured: dict[str, Any],
    compare: tuple[str, ...] = (),
    canonical: dict | None = None,
    rtol: float = 0.0,
    atol: float = 0.0,
) -> bool | None:
    """True when two frameworks (or one and the canonical value) disagree on a compared key; None when no key
    had two values to compare. `measured` is {framework: measurement}."""
    keys = compare or (None,)
    judged = False
    for key in keys:
        values = [
            v if key is None else v[key] for v in measured.values() if key is None or (isinstance(v, dict) and key in v)
        ]
        if canonical is not None and (key is None or key in canonical):
            values.append(canonical if key is None else canonical[key])
        if len(values) < 2:
            continue
        judged = True
        if any(not matches(a, b, rtol, atol) for i, a in enumerate(values) for b in values[i + 1 :]):
            return True
    return False if judged else None


# ----------------------------------------------------------------------------------------------- classifiers
def close(a: float, b: float, rtol: float = 1e-5) -> bool:
    """|a − b| ≤ rtol·max(|a|, |b|) (and a tiny floor, so that 0 equals 0)."""
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-30)


def rel_diff(update, reference) -> float:
    """max_i |u_i − r_i| / |r_i|."""
    u, r = np.asarray(update, np.float64), np.asarray(reference, np.float64)
    return float(np.max(np.abs(u - r) / np.abs(r)))


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
        if close(v, (1 - beta2) * total, 1e-6):
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
    for name, ref in (
        ("weighted_mean", (per_row * weights).sum() / weights.sum()),
        ("sum_over_n", (per_row * weights).sum() / per_row.size),
        ("plain_mean", per_row.mean()),
    ):
        if close(v, float(ref)):
            return name
    return "other"


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
    named = {
        "coupled": sgd_decay_reference(coupled=True),
        "decoupled": sgd_decay_reference(coupled=False),
        "none": DECAY["w0"],
    }
    return next((k for k, v in named.items() if close(w_final, v, 1e-9)), "other")


def classify_loss_input(loss: float) -> str:
    """Whether the loss read [0.2, 0.3, 0.5] (label 2) as "probabilities" (−log 0.5) or "logits" (log-softmax)."""
    v = np.array([0.2, 0.3, 0.5])
    if close(loss, -math.log(0.5)):
        return "probabilities"
    if close(loss, float(np.log(np.exp(v).sum()) - v[2])):
        return "logits"
    return "other"


def classify_layer_norm(outputs) -> dict:
    """ε and the variance's divisor, recovered from a LayerNorm's float64 output on LAYER_NORM_INPUT (γ = 1, β = 0).

    A row [0, d] gives x̂₂ = (d/2)/√(c·d² + ε), c = 1/4 for the biased variance (÷ n), 1/2 for the unbiased one
    (÷ n − 1), so q = (d/2)²/x̂₂² = c·d² + ε is linear in d²: the two rows give c and ε. Returns "measured_eps"
    and "variance": "biased", "unbiased" or "other".
    """
    d = LAYER_NORM_INPUT[:, 1] - LAYER_NORM_INPUT[:, 0]
    q = (d / 2) ** 2 / np.asarray(outputs, np.float64)[:, 1] ** 2
    c = float((q[1] - q[0]) / (d[1] ** 2 - d[0] ** 2))
    variance = next((name for name, ref in (("biased", 0.25), ("unbiased", 0.5)) if close(c, ref, 1e-6)), "other")
    return {"measured_eps": float(q[0] - c * d[0] ** 2), "variance": variance}


# ------------------------------------------------------------------------------------------ effect helpers
def values_of(m: dict, key: str) -> dict[str, Any]:
    """{framework: m[framework][key]} for the frameworks that measured `key`."""
    return {fw: v[key] for fw, v in m.items() if key in v}


def spread(m: dict, key: str, unit: str = "") -> tuple[float, str]:
    """(max − min of the measured `key`, a text listing each framework's value)."""
    vals = {fw: float(v) for fw, v in values_of(m, key).items()}
    size = max(vals.values()) - min(vals.values())
    text = ", ".join(f"{fw} {v:.6g}" for fw, v in vals.items())
    return size, f"{key}: {text} (max |Δ| = {size:.3g}{unit})"


def listing(m: dict, key: str) -> str:
    """ "fw value, …" for the frameworks that measured `key` (floats to 4 significant digits)."""
    return ", ".join(f"{fw} {v:.4g}" if isinstance(v, float) else f"{fw} {v}" for fw, v in values_of(m, key).items())


def effect_ratio(key: str, text: str):
    """An effect function: the largest measured `key` over the smallest, with a listing."""

    def effect(m):
        vals = [float(v) for v in values_of(m, key).values()]
        ratio = max(vals) / min(vals)
        listed = ", ".join(f"{fw} {v:.3g}" for fw, v in values_of(m, key).items())
        return ratio, f"{text}: {listed} (×{ratio:.3g})"

    return effect
