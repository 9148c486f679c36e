"""Name the cause of a divergence where the records show a known trap (docs/design.md, "Tolerances").

`explain(records)` returns one entry per (pair, cause): {a, b, trap, why}. The first two rules read what two
records say they did, not the numbers:

- `pad-side-unmasked`: the pair padded on different sides (common.padding.resolve_sides) with `sequence.mask` off,
  so an unmasked model read the pads before the real tokens on one side and after them on the other;
- `truncate-side`: the pair cut over-long rows from different ends and some training row exceeds the cap;
- the layer traps (`LAYER_TRAPS`): the pair's image and BatchNorm layers did different things (the `layers` row of
  each record, common.native.layer_settings): `bn-momentum-convention`, `bn-eps-default`, `bn-running-var`,
  `flatten-order`, `same-padding-stride2`, `avg-pool-same-count`;
- `bias-before-batch-norm` (exact mode, Adam): a dense or conv2d layer with a bias reaches a batch_norm, directly
  or through layers that carry a change of the bias as one shift in every row (`SHIFT_CARRIERS`: linear layers,
  pools, flatten, dropout, and relu where its units are active), and the pair's final values of that bias differ
  beyond the tolerance: batch_norm cancels the shift, so the bias's gradient is (nearly always) rounding noise,
  which Adam divides by its own √v̂ into lr-sized steps (docs/design.md, "A bias before a batch_norm");
- the split-step causes (common.split_causes): `mean-of-means`, `average-loss-global-batch`, `sampler-padding`,
  `sampler-same-order`, `batch-norm-statistics`;
- the idioms (common.idioms) an exact-regime run turned on: each deterministic idiom that changes a or b for this
  spec, named by its trap, with the step the pair first parts and the idiom's fix;
- `rounding-growth` (exact mode, no idiom on): the per-step losses agree to ROUNDING_START ulps at step 1, and the
  difference then grows steadily (no step-to-step jump of the envelope beyond MAX_JUMP) until it crosses the
  tolerance, at step MIN_STEPS or later: training dynamics amplifying rounding, where a semantic difference jumps by
  orders of magnitude at its first step. The entry gives the growth rate (a log-linear fit of the envelope).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from common.idioms import IDIOMS, record_comparison
from common.padding import length_cap
from common.spec import typed
from common.split_causes import first_apart, split_causes
from common.tolerance import Tolerance, tolerance_for

ROUNDING_START = 64  # ulps: how far apart step 1 may be and still count as "agree to rounding"
MAX_JUMP = 1e4  # the largest step-to-step growth of the difference envelope that still counts as steady
MIN_STEPS = 10  # a divergence must come at least this late to be called growth


def _sides(rec: dict) -> dict | None:
    return rec.get("padding")


def _truncates(rec: dict, npz: dict) -> bool:
    seq = rec["spec"]["sequence"]
    cap = length_cap(seq["max_len"], seq["buckets"])
    lengths = npz.get("train_lengths")
    return bool(cap and lengths is not None and np.max(lengths) > cap)


def rounding_growth(losses_a: np.ndarray, losses_b: np.ndarray, dtype: str, tol: Tolerance) -> dict | None:
    """{first_step, start, per_decade_steps} when two loss series part by steady growth from rounding, else None.
    "Part" is common.tolerance's rule, |a − b| > atol + rtol·max(|a|, |b|)."""
    a, b = np.asarray(losses_a, np.float64), np.asarray(losses_b, np.float64)
    if a.shape != b.shape or a.size < MIN_STEPS or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return None
    eps = float(np.finfo(dtype).eps)
    scale = np.maximum(np.abs(a), np.abs(b))
    rel = np.abs(a - b) / np.maximum(scale, np.finfo(np.float64).tiny)
    beyond = np.flatnonzero(np.abs(a - b) > tol.atol + tol.rtol * scale)
    if beyond.size == 0 or beyond[0] + 1 < MIN_STEPS or rel[0] > ROUNDING_START * eps:
        return None
    first = int(beyond[0])
    envelope = np.maximum.accumulate(np.maximum(rel[: first + 1], eps))
    if np.max(envelope[1:] / envelope[:-1]) > MAX_JUMP:
        return None
    slope = np.polyfit(np.arange(first + 1), np.log10(envelope), 1)[0]
    return {
        "first_step": first + 1,
        "start": float(rel[0]),
        "per_decade_steps": float(1.0 / slope) if slope > 0 else None,
    }


def _growth_cause(a: str, b: str, rec: dict, npz_a: dict, npz_b: dict) -> dict | None:
    spec = rec["spec"]
    if record_comparison(rec) != "exact" or rec.get("idioms") or "losses" not in npz_a or "losses" not in npz_b:
        return None
    tol = tolerance_for(spec["dtype"], "exact")
    found = rounding_growth(npz_a["losses"], npz_b["losses"], spec["dtype"], tol)
    if found is None:
        return None
    rate = f", ×10 every {found['per_decade_steps']:.0f} steps" if found["per_decade_steps"] else ""
    return {
        "a": a,
        "b": b,
        "trap": "rounding-growth",
        "why": f"{a} and {b} differ by {found['start']:.1g} (relative) at step 1 and the difference grows "
        f"steadily{rate} "
        f"until it crosses rtol {tol.rtol:g} at step {found['first_step']}: the training dynamics amplify "
        f"rounding, no semantic difference shows; compare over fewer steps or a smaller lr",
    }


# layer setting → (trap id, why it matters, the fix); the texts take the two backends' values
LAYER_TRAPS = {
    "bn_momentum": (
        "bn-momentum-convention",
        "the running statistics keep {va:g} ({a}) vs {vb:g} ({b}) of their value per step (decay convention; "
        "torch's momentum=0.1 weights the NEW batch, Keras/flax momentum=0.99 the OLD value), so evaluation "
        "normalises with different running statistics",
        "pass torch momentum = 1 − m, Keras/flax momentum = m for one decay m",
    ),
    "bn_eps": (
        "bn-eps-default",
        "BatchNorm's ε is {va:g} ({a}) vs {vb:g} ({b}) (torch 1e-5, Keras 1e-3, flax 1e-5 by default)",
        "pass epsilon explicitly",
    ),
    "running_var": (
        "bn-running-var",
        "the running variance uses the {va} estimator ({a}) vs {vb} ({b}): a factor n/(n − 1) per update "
        "(torch keeps the unbiased one, Keras and flax the biased one)",
        "set batch_norm.running_var and convert the update where the framework keeps the other one",
    ),
    "flatten": (
        "flatten-order",
        "flatten orders the features {va} ({a}) vs {vb} ({b}): the dense layer after it sees the same values "
        "permuted (torch's x.flatten(1) on NCHW), so shared or ported weights no longer line up",
        "permute to NHWC before flatten in torch (or permute the dense weight's rows)",
    ),
    "same_padding": (
        "same-padding-stride2",
        "'same' pads {va} ({a}) vs {vb} ({b}) at stride > 1: TF's rule puts the odd pixel at the bottom/right, "
        "torch's padding=k//2 pads both sides, so every window shifts by one pixel",
        "pad (top, bottom, left, right) = common.layers.image.same_pads explicitly (F.pad) before a padding=0 conv",
    ),
    "avg_pool_count": (
        "avg-pool-same-count",
        "average pooling with 'same' padding divides by the {va} count ({a}) vs the {vb} count ({b}): border "
        "outputs shrink by real/window where the pad counts (torch count_include_pad=True, flax's default)",
        "divide by the real pixels (torch count_include_pad=False, flax count_include_pad=False)",
    ),
}


def _layer_causes(a: str, b: str, rec_a: dict, rec_b: dict) -> list[dict]:
    row_a, row_b = rec_a.get("layers") or {}, rec_b.get("layers") or {}
    out = []
    for key, (trap, why, fix) in LAYER_TRAPS.items():
        if key in row_a and key in row_b and row_a[key] != row_b[key]:
            text = why.format(a=a, b=b, va=row_a[key], vb=row_b[key])
            out.append({"a": a, "b": b, "trap": trap, "why": f"{text}; fix: {fix}"})
    return out


# Kinds between a bias and a batch_norm that pass a change of the bias on as one shift in every row: linear maps and
# pools (a max_pool where the window's maximum is the unit shifted), dropout (b/keep on kept units), relu (where
# active). tanh, layer_norm and the rest end the path.
SHIFT_CARRIERS = frozenset({"dense", "conv2d", "relu", "dropout", "max_pool", "avg_pool", "global_avg_pool", "flatten"})


def biases_before_batch_norm(spec: dict) -> dict[str, list[str]]:
    """The biases that reach a batch_norm in a record's spec (JSON form): canonical name → the kinds in between
    (`SHIFT_CARRIERS`; [] for a direct feed); a tanh, as a layer or a layer's activation, ends the path."""
    from common.layers import tables
    from common.spec import typed

    rows, counts, out = tables(typed(spec)), {"dense": 0, "conv2d": 0}, {}
    for i, row in enumerate(rows):
        if row["kind"] not in counts:
            continue
        number = counts[row["kind"]]
        counts[row["kind"]] += 1
        if not row.get("bias", True) or row.get("activation") == "tanh":
            continue
        path = ["relu"] if row.get("activation") == "relu" else []
        for after in rows[i + 1 :]:
            if after["kind"] == "batch_norm":
                out[f"{'layer' if row['kind'] == 'dense' else 'conv'}{number}.bias"] = path
            if after["kind"] not in SHIFT_CARRIERS or after.get("activation") == "tanh":
                break
            path.append(after["kind"] if after.get("activation") != "relu" else f"{after['kind']} (relu)")
    return out


def _bias_cause(a: str, b: str, rec: dict, npz_a: dict, npz_b: dict) -> dict | None:
    spec = rec["spec"]
    if (
        record_comparison(rec) != "exact"
        or not spec.get("model", {}).get("layers")
        or spec["optimizer"]["name"] == "sgd"
    ):
        return None  # native runs differ everywhere; the shorthand has no batch_norm; SGD moves it by lr·noise only
    tol = tolerance_for(spec["dtype"], "exact")
    apart, paths = [], biases_before_batch_norm(spec)
    for name in paths:
        va, vb = npz_a.get(f"final/{name}"), npz_b.get(f"final/{name}")
        if va is None or vb is None:
            continue
        scale = max(float(np.max(np.abs(va))), float(np.max(np.abs(vb))))
        if float(np.max(np.abs(va - vb))) > tol.atol + tol.rtol * scale:
            apart.append(name)
    if not apart:
        return None
    return {
        "a": a,
        "b": b,
        "trap": "bias-before-batch-norm",
        "why": f"{'; '.join(_route(name, paths[name]) for name in apart)}: batch_norm cancels a shift that is the "
        f"same in every row, so the bias's gradient is rounding noise, which {spec['optimizer']['name']} divides by "
        f"its own √v̂ into lr-sized steps that differ per framework; set bias = false on that layer",
    }


def _route(name: str, path: list[str]) -> str:
    if not path:
        return f"{name} feeds a batch_norm"
    active = " (relu passes it where active)" if any("relu" in kind for kind in path) else ""
    return f"{name} reaches a batch_norm through {', '.join(path)}{active}"


def _idiom_causes(a: str, b: str, rec_a: dict, rec_b: dict) -> list[dict]:
    """The deterministic idioms on in an exact-regime run (common.idioms) that change a or b for this spec, each
    with the step where the pair first parts."""
    if record_comparison(rec_a) != "exact" or not rec_a.get("idioms"):
        return []
    spec = typed(rec_a["spec"])
    first = first_apart(rec_a, rec_b)
    out = []
    for idiom in (IDIOMS[i] for i in rec_a["idioms"] if i in IDIOMS):
        touched = [name for name in (a, b) if name in idiom.affects(spec)]
        if not touched:
            continue
        when = f"; the losses first part at step {first}" if first else "; the losses still agree"
        out.append(
            {
                "a": a,
                "b": b,
                "trap": idiom.trap,
                "why": f"idiom {idiom.id} is on and changes {' and '.join(touched)}{when}; fix: {idiom.fix}",
            }
        )
    return out


def explain(records: dict[str, tuple[dict, dict]]) -> list[dict]:
    """The known causes that separate each pair of records (module docstring)."""
    out = []
    for a, b in combinations(sorted(records), 2):
        (rec_a, npz_a), (rec_b, npz_b) = records[a], records[b]
        out += _idiom_causes(a, b, rec_a, rec_b)
        out += split_causes(a, b, rec_a, rec_b)
        growth = _growth_cause(a, b, rec_a, npz_a, npz_b)
        if growth:
            out.append(growth)
        out += _layer_causes(a, b, rec_a, rec_b)
        bias = _bias_cause(a, b, rec_a, npz_a, npz_b)
        if bias:
            out.append(bias)
        sides_a, sides_b = _sides(rec_a), _sides(rec_b)
        if sides_a is None or sides_b is None:
            continue
        mask = rec_a["spec"]["sequence"]["mask"]
        if sides_a["pad"] != sides_b["pad"] and not mask:
            out.append(
                {
                    "a": a,
                    "b": b,
                    "trap": "pad-side-unmasked",
                    "why": f"{a} pads {sides_a['pad']} and {b} pads {sides_b['pad']} with sequence.mask = false: "
                    f"the model reads the pad tokens, before the real tokens when pre-padded and after "
                    f"them when post-padded (Keras pad_sequences pads pre by default, torch pad_sequence "
                    f"and tf padded_batch post); turn the mask on or pad on one side",
                }
            )
        if sides_a["truncate"] != sides_b["truncate"] and _truncates(rec_a, npz_a):
            out.append(
                {
                    "a": a,
                    "b": b,
                    "trap": "truncate-side",
                    "why": f"{a} truncates {sides_a['truncate']} and {b} {sides_b['truncate']}: rows longer than "
                    f"the cap keep different tokens (Keras pad_sequences truncates pre by default)",
                }
            )
    return out
