"""The causes behind two records whose steps were split over replicas or micro-batches (common.distributed;
docs/design.md, "Data parallelism and accumulation"), read from what the records say they did (`split`, the
common.native.split_idiom row; `steps[].shards`; `steps[].batch_ids`), for common.explain:

- `mean-of-means`: one record's step gradient averages part means (DDP, pmean, loss/K accumulation, or
  `batching.reduction = "mean_of_means"`) where the other takes Σ w·∇ℓ / Σ w, and a step is ragged (its parts hold
  unequal rows, common.distributed.ragged_steps). Both exact: the losses must first differ right after the first
  ragged step (its update is what differs);
- `average-loss-global-batch`: one record divides every step by the constant S (tf.nn.compute_average_loss with
  global_batch_size), so a ragged step's gradient shrinks by its real rows / S;
- `sampler-padding`: one record's epochs feed more rows than the training split (torch DistributedSampler pads to
  ⌈N/R⌉·R by repeating rows), so the repeated rows weigh double in that epoch;
- `sampler-same-order`: one record trains two epochs in the same row order with shuffling on
  (DistributedSampler without `set_epoch`);
- `batch-norm-statistics`: a batch_norm layer normalises over different rows in the two records' specs
  (`statistics_rows`: a part's c rows per replica, a micro-batch's G when synchronised, the step's S on one device),
  so their forward passes differ from step 1 on (common.layers.norm, "under split steps").
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from common.distributed import ragged_steps
from common.idioms import record_comparison
from common.native import split_reduction
from common.tolerance import tolerance_for

REDUCTION_TRAPS = {
    "mean_of_means": (
        "mean-of-means",
        "averages the means of its parts (DDP's average, pmean, loss/K accumulation)",
        'batching.reduction = "global_mean" (common.distributed.part_scales)',
    ),
    "global_batch_divisor": (
        "average-loss-global-batch",
        "divides every step by the constant global batch (tf.nn.compute_average_loss(global_batch_size))",
        "divide by the step's real rows (common.distributed.part_scales)",
    ),
}


def reduction(rec: dict) -> str:
    """The gradient a record's steps computed: common.native.split_reduction of its `split` row; "global_mean" for
    a record whose steps are not split (one device)."""
    row = rec.get("split")
    return "global_mean" if row is None else split_reduction(row, rec["spec"]["batching"]["accumulate"])


def _ragged_list(steps: list[int]) -> str:
    return f"{', '.join(map(str, steps[:5]))}{' …' if len(steps) > 5 else ''}"


def _reduction_cause(a: str, b: str, rec_a: dict, rec_b: dict) -> list[dict]:
    """One cause per record whose step gradient is not the global mean and that has ragged steps, against the
    other record's gradient."""
    kinds = {a: reduction(rec_a), b: reduction(rec_b)}
    if kinds[a] == kinds[b]:
        return []
    out = []
    for name, rec, other in ((a, rec_a, b), (b, rec_b, a)):
        ragged = ragged_steps(rec["steps"]) if kinds[name] != "global_mean" else []
        if not ragged:
            continue
        trap, what, fix = REDUCTION_TRAPS[kinds[name]]
        theirs = REDUCTION_TRAPS[kinds[other]][1] if kinds[other] in REDUCTION_TRAPS else "takes Σ w·∇ℓ / Σ w"
        why = f"{name} {what} where {other} {theirs}: their updates differ at {name}'s ragged steps "
        why += f"{_ragged_list(ragged)} (parts of unequal rows)"
        if record_comparison(rec_a) == record_comparison(rec_b) == "exact":
            first = first_apart(rec_a, rec_b)
            if first != ragged[0] + 1:
                continue
            why += f", so the losses first differ at step {first}, right after ragged step {ragged[0]}"
        out.append({"a": a, "b": b, "trap": trap, "why": f"{why}; fix: {fix}"})
    return out


def first_apart(rec_a: dict, rec_b: dict) -> int | None:
    """The first step (1-based) whose losses differ beyond the exact-mode tolerance; None when none does or the
    records have different step counts."""
    la, lb = (np.array([s["loss"] for s in r["steps"]]) for r in (rec_a, rec_b))
    if la.shape != lb.shape:
        return None
    tol = tolerance_for(rec_a["spec"]["dtype"], "exact")
    apart = np.nonzero(np.abs(la - lb) > tol.atol + tol.rtol * np.maximum(np.abs(la), np.abs(lb)))[0]
    return int(apart[0]) + 1 if apart.size else None


def _epochs(rec: dict) -> dict[int, list[int]]:
    """Every epoch's row ids in the order they were fed."""
    out: dict[int, list[int]] = {}
    for step in rec["steps"]:
        out.setdefault(step["epoch"], []).extend(step["batch_ids"])
    return out


def repeated_rows(rec: dict) -> int:
    """The rows the record fed beyond once per epoch, over the run: Σ_row max(0, times fed − epochs), epochs the
    last one a step was recorded in. Counted over the run, not per epoch, so that a step spanning an epoch boundary
    (optax.MultiSteps carrying its partial accumulation into the next epoch's first update) does not count as a
    repeat."""
    epochs = max((step["epoch"] for step in rec["steps"]), default=0)
    fed = Counter(i for step in rec["steps"] for i in step["batch_ids"])
    return sum(max(0, n - epochs) for n in fed.values())


def same_order_epochs(rec: dict) -> tuple[int, int] | None:
    """Two consecutive epochs (e, e + 1) fed in the same row order with shuffling on; None otherwise."""
    if not rec["spec"]["batching"]["shuffle"]:
        return None
    epochs = _epochs(rec)
    for e in sorted(epochs)[:-1]:
        if e + 1 in epochs and len(epochs[e]) > 1 and epochs[e] == epochs[e + 1]:
            return e, e + 1
    return None


def _sampler_causes(a: str, b: str, rec_a: dict, rec_b: dict) -> list[dict]:
    out = []
    repeats = {a: repeated_rows(rec_a), b: repeated_rows(rec_b)}
    for name, other in ((a, b), (b, a)):
        if repeats[name] and not repeats[other]:
            out.append(
                {
                    "a": a,
                    "b": b,
                    "trap": "sampler-padding",
                    "why": f"{name} fed {repeats[name]} row(s) beyond once per epoch over the run (torch "
                    f"DistributedSampler pads the epoch to ⌈N/R⌉·R rows by repeating its first rows) where {other} "
                    "feeds each row once: those rows weigh double; fix: drop_last=True, or split the epoch without "
                    "repeats (Parity's plan)",
                }
            )
    same = {a: same_order_epochs(rec_a), b: same_order_epochs(rec_b)}
    for name, other in ((a, b), (b, a)):
        if same[name] and not same[other]:
            out.append(
                {
                    "a": a,
                    "b": b,
                    "trap": "sampler-same-order",
                    "why": f"{name} trained epochs {same[name][0]} and {same[name][1]} in the same row order with "
                    f"shuffling on (DistributedSampler without set_epoch) where {other} reshuffles; fix: call "
                    "sampler.set_epoch(epoch) before each epoch",
                }
            )
    return out


def statistics_rows(spec: dict) -> dict[str, int]:
    """Per batch_norm layer (`model.layers[i]`), the rows a training step normalises together under a record's
    spec (a spec dict): G/R per replica (sync = false), G (sync = true), G = batch_size or R·batch_size."""
    replicas, size = spec["distributed"]["replicas"], spec["batching"]["batch_size"]
    micro = size if spec["distributed"]["batch"] == "global" else replicas * size
    return {
        f"model.layers[{i}]": micro if table.get("sync", False) else micro // replicas
        for i, table in enumerate(spec["model"]["layers"])
        if table.get("kind") == "batch_norm"
    }


def _statistics_cause(a: str, b: str, rec_a: dict, rec_b: dict) -> list[dict]:
    rows_a, rows_b = statistics_rows(rec_a["spec"]), statistics_rows(rec_b["spec"])
    apart = [key for key in rows_a if key in rows_b and rows_a[key] != rows_b[key]]
    if not apart:
        return []
    key = apart[0]
    why = (
        f"batch_norm {key} normalises {a}'s training rows in groups of {rows_a[key]} and {b}'s in groups of "
        f"{rows_b[key]} (per replica and micro-batch, unless sync = true pools the replicas): their forward passes "
        "differ from step 1; fix: sync = true and accumulate = 1 give the single-device statistics"
    )
    return [{"a": a, "b": b, "trap": "batch-norm-statistics", "why": why}]


def split_causes(a: str, b: str, rec_a: dict, rec_b: dict) -> list[dict]:
    """The split-step causes (module docstring) that separate records `a` and `b`; none unless one of them split
    its steps (has a `split` row)."""
    if "split" not in rec_a and "split" not in rec_b:
        return []
    return (
        _reduction_cause(a, b, rec_a, rec_b)
        + _sampler_causes(a, b, rec_a, rec_b)
        + _statistics_cause(a, b, rec_a, rec_b)
    )
