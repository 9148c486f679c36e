"""Cross-entropy and metric aggregation (docs/design.md, "Losses and metrics").

Per-row loss ℓ = logsumexp(z) − z_y on logits z. A batch's loss is the weighted mean Σ w·ℓ / Σ w over its rows
(w = 0 for `pad` filler rows), which equals the plain mean of a ragged batch.

Epoch metrics are evaluated after each epoch, in eval mode (no dropout), over the evaluation batches. Each backend
reports per batch (Σ ℓ, number correct, n); they are aggregated here:
- weighted (per sample, correct):   Σ_b S_b / Σ_b n_b — independent of the evaluation batch size.
- per_batch_mean (the seeds' pitfall): (1/B) Σ_b S_b/n_b — a last batch of 2 can only score 0, ½ or 1, which
  "bands" the accuracy curve whenever batches are unequal.
"""

from __future__ import annotations

import numpy as np


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row ℓ = logsumexp(z) − z_y, computed stably in the logits' dtype."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    return log_norm - shifted[np.arange(labels.shape[0]), labels]


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    """Σ w·v / Σ w."""
    return float(np.sum(values * weights) / np.sum(weights))


def aggregate(sums: list[float], counts: list[int], how: str) -> float:
    """Combine per-batch sums S_b over n_b rows into one epoch metric (see the module docstring)."""
    sums, counts = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    if how == "weighted":
        return float(sums.sum() / counts.sum())
    if how == "per_batch_mean":
        return float(np.mean(sums / counts))
    raise ValueError(f"unknown aggregation {how!r}")


def banding(batch_sizes: list[int], how: str) -> dict | None:
    """Detect the banding situation: per-batch-mean aggregation over unequal evaluation batches.

    A batch of k rows can only score accuracies j/k (j = 0..k); under the per-batch mean over B batches it moves the
    epoch accuracy in steps of 1/(k·B), so the smallest batch quantises the curve into visible bands. Returns
    None when the aggregation is weighted or the batches are equal.
    """
    if how != "per_batch_mean" or len(set(batch_sizes)) <= 1:
        return None
    k = min(batch_sizes)
    return {
        "batch_sizes": list(batch_sizes),
        "smallest": k,
        "levels": [j / k for j in range(k + 1)],
        "step": 1.0 / (k * len(batch_sizes)),
    }
