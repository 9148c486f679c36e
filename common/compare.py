"""Compare backend records and give the verdict (docs/design.md, "Records" and "Tolerances").

Every framework is compared with the reference (the numpy oracle) and with every other framework, on:
- `batch_ids` (and `padded_length` for sequence data): exact equality, step by step;
- `loss`: every step's loss;
- each epoch metric (train_loss, train_acc, test_loss, test_acc);
- each final parameter tensor.
A pair agrees when |a − b| ≤ atol + rtol·s everywhere (common.tolerance), with s = max(|a|, |b|) per value for
losses and metrics, and s = max over the tensor of max(|a|, |b|) for a parameter tensor: a weight that passes
through zero has no relative precision of its own, its error is measured against the tensor's scale. A pair's
`first_divergent_step` is the first step (loss, batch_ids) or epoch (epoch metrics) where it does not, and
`tolerance_used` = max |a − b| / (atol + rtol·s) says how close to the limit it came (> 1 is divergent).
NaN and ±inf: two values agree only when both are the same non-finite value (NaN and NaN, +inf and +inf); a
non-finite value against anything else is divergent at its step (tolerance_used inf). max_abs_diff and
max_rel_diff propagate NaN (never a finite number that hides it); `first_nonfinite` [a, b] and
`nonfinite_agree` are added when a pair holds a non-finite value, and `nonfinite` per backend in the body.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from common.record import EPOCH_METRICS, nonfinite
from common.tolerance import Tolerance

__all__ = ["EPOCH_METRICS", "compare", "earliest", "first_divergence", "nonfinite_summary"]


def _series(rec: dict, npz: dict, metric: str) -> tuple[np.ndarray, list[int]]:
    """The values of `metric` and the step/epoch number of each (empty list for parameters)."""
    if metric == "loss":
        return np.array([s["loss"] for s in rec["steps"]], dtype=np.float64), [s["step"] for s in rec["steps"]]
    if metric in EPOCH_METRICS:
        return np.array([e[metric] for e in rec["epochs"]], dtype=np.float64), [e["epoch"] for e in rec["epochs"]]
    return np.asarray(npz[metric], dtype=np.float64).ravel(), []


def compare_values(a: np.ndarray, b: np.ndarray, index: list[int], tol: Tolerance, tensor: bool = False) -> dict:
    """max_abs_diff, max_rel_diff and the first index (step or epoch) outside tolerance, or None.

    `tensor`: scale every element by the whole tensor's magnitude (parameters), else element-wise.
    """
    if a.shape != b.shape:
        return {
            "max_abs_diff": None,
            "max_rel_diff": None,
            "first_divergent_step": index[min(len(a), len(b))]
            if index and min(len(a), len(b)) < len(index)
            else (index[0] if index else None),
            "shape_mismatch": [list(a.shape), list(b.shape)],
            "divergent": True,
        }
    if a.size == 0:
        return {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "first_divergent_step": None}
    fin_a, fin_b = np.isfinite(a), np.isfinite(b)
    both = fin_a & fin_b
    # the same non-finite value in both (NaN and NaN, +inf and +inf): agreement, said separately
    same_nonfinite = ~fin_a & ~fin_b & ((np.isnan(a) & np.isnan(b)) | (a == b))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - b)  # NaN wherever a NaN is involved or inf − inf; inf for inf vs finite or −inf
    scale = np.where(both, np.maximum(np.abs(a), np.abs(b)), 0.0)
    if tensor:
        scale = np.full_like(scale, scale.max())
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(both, np.where(scale > 0, diff / scale, 0.0), diff)
    allowed = tol.atol + tol.rtol * scale
    bad = ~same_nonfinite & ~(both & (diff <= allowed))
    first = None
    if bad.any():
        pos = int(np.argmax(bad))
        first = index[pos] if index else pos
    used = None
    if allowed.min() > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(both, diff / allowed, np.where(same_nonfinite, 0.0, np.inf))
        used = float(ratio.max())
    out = {
        # NaN-propagating maxima: a NaN anywhere is reported as nan, never hidden behind a finite maximum
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(rel.max()),
        "tolerance_used": used,
        "first_divergent_step": first,
        "divergent": bool(bad.any()),
    }
    if not both.all():
        out["first_nonfinite"] = [_first(~fin_a, index), _first(~fin_b, index)]
        out["max_abs_diff_finite"] = float(diff[both].max()) if both.any() else None
        out["nonfinite_agree"] = bool(np.array_equal(~fin_a, ~fin_b) and same_nonfinite[~fin_a].all())
    return out


def _first(mask: np.ndarray, index: list[int]) -> int | None:
    if not mask.any():
        return None
    pos = int(np.argmax(mask))
    return index[pos] if index else pos


def compare_batch_ids(rec_a: dict, rec_b: dict, key: str = "batch_ids") -> dict:
    """Exact equality of the recorded batch ids (or another per-step record `key`), step by step."""
    ids_a = [s.get(key) for s in rec_a["steps"]]
    ids_b = [s.get(key) for s in rec_b["steps"]]
    first = next(
        (rec_a["steps"][i]["step"] for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y), None
    )
    if first is None and len(ids_a) != len(ids_b):
        first = min(len(ids_a), len(ids_b)) + 1
    return {"max_abs_diff": None, "max_rel_diff": None, "first_divergent_step": first, "divergent": first is not None}


def compare_pair(name_a: str, a: tuple[dict, dict], name_b: str, b: tuple[dict, dict], tol: Tolerance) -> list[dict]:
    """All metric comparisons between two records."""
    (rec_a, npz_a), (rec_b, npz_b) = a, b
    pairs = [{"a": name_a, "b": name_b, "metric": "batch_ids", **compare_batch_ids(rec_a, rec_b)}]
    if any("padded_length" in s for s in rec_a["steps"] + rec_b["steps"]):
        pairs.append(
            {"a": name_a, "b": name_b, "metric": "padded_length", **compare_batch_ids(rec_a, rec_b, "padded_length")}
        )
    params = sorted(k for k in npz_a if k.startswith("final/"))
    for metric in ("loss", *EPOCH_METRICS, *params):
        if metric not in npz_b and metric.startswith("final/"):
            pairs.append(
                {
                    "a": name_a,
                    "b": name_b,
                    "metric": metric,
                    "max_abs_diff": None,
                    "max_rel_diff": None,
                    "first_divergent_step": None,
                    "divergent": True,
                    "missing": name_b,
                }
            )
            continue
        va, index = _series(rec_a, npz_a, metric)
        vb, _ = _series(rec_b, npz_b, metric)
        pairs.append(
            {
                "a": name_a,
                "b": name_b,
                "metric": metric,
                **compare_values(va, vb, index, tol, tensor=metric.startswith("final/")),
            }
        )
    return pairs


def compare(records: dict[str, tuple[dict, dict]], reference: str, tol: Tolerance) -> dict:
    """The comparison.json body for the records present; `reference` first in every pair it is part of."""
    names = [reference, *sorted(n for n in records if n != reference)] if reference in records else sorted(records)
    pairs = []
    for name_a, name_b in combinations(names, 2):
        pairs.extend(compare_pair(name_a, records[name_a], name_b, records[name_b], tol))
    claim = tol.rtol > 0
    equivalent = bool(claim and len(records) >= 2 and not any(p["divergent"] for p in pairs))
    return {
        "equivalent": equivalent,
        "claim": "per-step" if claim else "none (native mode)",
        "tolerance": tol.to_json(),
        "backends": names,
        "pairs": pairs,
        "nonfinite": nonfinite_summary(records),
    }


def nonfinite_summary(records: dict[str, tuple[dict, dict]]) -> dict[str, dict]:
    """Per backend whose training went non-finite: common.record.nonfinite (first step and value, first epoch,
    parameters). Empty when every value of every record is finite."""
    return {name: found for name, (rec, npz) in records.items() if (found := nonfinite(rec, npz))}


def first_divergence(comparison: dict) -> dict | None:
    """The divergent pair entry with the earliest step (per-step loss and batch ids first), or None."""
    return earliest(comparison["pairs"])


def earliest(pairs: list[dict]) -> dict | None:
    """Of these pair entries, the divergent one to report first: batch ids and padded lengths, then the per-step
    loss, then epoch metrics and parameters; the earliest step within each."""
    bad = [p for p in pairs if p["divergent"]]
    if not bad:
        return None
    order = {"batch_ids": 0, "padded_length": 0, "loss": 1}
    return min(
        bad,
        key=lambda p: (
            order.get(p["metric"], 2),
            p["first_divergent_step"] if p["first_divergent_step"] is not None else 1e18,
        ),
    )
