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
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from common.tolerance import Tolerance

EPOCH_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


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
    diff = np.abs(a - b)
    scale = np.maximum(np.abs(a), np.abs(b))
    if tensor:
        scale = np.full_like(scale, scale.max())
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(scale > 0, diff / scale, 0.0)
    allowed = tol.atol + tol.rtol * scale
    bad = ~(diff <= allowed)  # NaN counts as divergent
    first = None
    if bad.any():
        pos = int(np.argmax(bad))
        first = index[pos] if index else pos
    return {
        "max_abs_diff": float(np.nanmax(diff)) if not np.isnan(diff).all() else float("nan"),
        "max_rel_diff": float(np.nanmax(rel)) if not np.isnan(rel).all() else float("nan"),
        "tolerance_used": float(np.nanmax(diff / allowed)) if allowed.min() > 0 else None,
        "first_divergent_step": first,
        "divergent": bool(bad.any()),
    }


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
    }


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
