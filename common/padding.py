"""Variable-length sequences: padding, truncation, masks, lengths, buckets and the masked loss
(docs/design.md, "Padding and masks"). Token 0 is the pad (common.sequences refuses it as a real token).

- Padded length T (`padded_length`): `sequence.max_len` when > 0; in a bucketed plan the batch's bucket bound;
  otherwise the longest row fed (filler included), capped by the last bucket bound.
- `pad_batch`: truncation keeps the first T tokens ("post") or the last T ("pre"); padding puts the kept
  L_i = min(n_i, T) tokens at [0, L_i) ("post") or [T − L_i, T) ("pre"); the mask is 1 exactly on them, so with a
  mask the pad side does not change the result. "native" sides come from common.frameworks.
- Buckets (`bucket_of`): inclusive bounds b_1 < … < b_K; a row of raw length n falls in the first bucket with
  n ≤ b_k, the last also takes longer rows (truncated to b_K).
- Masked loss (`loss_weights`, `masked_mean`): Σ_i m_i·ℓ_i / max(Σ_i m_i, 1), m_i = w_i ("per_sequence") or
  w_i·L_i ("per_token"), w_i = 0 for filler rows. Every m_i is 0 or ≥ 1, so an all-padded batch gives 0, not NaN;
  the masked mean pool is the same formula over time steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from common.frameworks import REGISTRY

if TYPE_CHECKING:
    from common.spec import Spec

PAD = 0


def resolve_sides(spec: Spec, backend: str) -> tuple[str, str]:
    """The (pad, truncate) sides `backend` uses for a resolved spec."""
    framework = REGISTRY[backend]
    seq = spec.sequence
    return (
        framework.native_pad if seq.pad == "native" else seq.pad,
        framework.native_truncate if seq.truncate == "native" else seq.truncate,
    )


def length_cap(max_len: int, buckets: list[int] | tuple[int, ...]) -> int:
    """The longest padded length allowed: max_len, else the last bucket bound, else 0 (no cap)."""
    return max_len or (buckets[-1] if buckets else 0)


def padded_length(
    lengths: np.ndarray, max_len: int, buckets: list[int] | tuple[int, ...], bucketed: bool = False
) -> int:
    """T for a batch whose rows have raw lengths `lengths` (module docstring): max_len when set; for a training
    batch of a bucketed plan (`bucketed`) the bound of its bucket, i.e. of its longest row's bucket, since such a
    batch holds one bucket; otherwise its longest row, capped by the last bucket bound."""
    if max_len:
        return max_len
    longest = int(np.max(lengths))
    if buckets and bucketed:
        return int(buckets[int(bucket_of(np.array([longest]), buckets)[0])])
    return min(longest, buckets[-1]) if buckets else longest


def kept_lengths(lengths: np.ndarray, max_len: int, buckets: list[int] | tuple[int, ...]) -> np.ndarray:
    """L_i = min(n_i, cap) (n_i without a cap): the tokens of each row that survive truncation.

    This is a property of the row, not of its batch: a padded length is max_len, a bucket bound b_k ≥ n_i (only the
    last bucket truncates, to b_K = cap) or the longest row of the batch, so no batch cuts a row below the cap.
    """
    cap = length_cap(max_len, buckets)
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.minimum(lengths, cap) if cap else lengths


def pad_batch(
    sequences: list[np.ndarray],
    side: str = "post",
    truncate: str = "post",
    max_len: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens (B, T) int64, mask (B, T) bool, kept lengths (B,)) for a list of 1-D token arrays; T = max_len,
    or the longest sequence when max_len is 0."""
    if side not in ("post", "pre") or truncate not in ("post", "pre"):
        raise ValueError(f"side and truncate must be 'post' or 'pre', got {side!r}, {truncate!r}")
    target = max_len or max((len(s) for s in sequences), default=0)
    tokens = np.full((len(sequences), target), PAD, dtype=np.int64)
    mask = np.zeros((len(sequences), target), dtype=bool)
    lengths = np.zeros(len(sequences), dtype=np.int64)
    for i, seq in enumerate(sequences):
        seq = np.asarray(seq, dtype=np.int64)
        kept = seq[:target] if truncate == "post" else seq[max(len(seq) - target, 0) :]
        start = 0 if side == "post" else target - len(kept)
        tokens[i, start : start + len(kept)] = kept
        mask[i, start : start + len(kept)] = True
        lengths[i] = len(kept)
    return tokens, mask, lengths


def bucket_of(lengths: np.ndarray, boundaries: list[int] | tuple[int, ...]) -> np.ndarray:
    """Index of each raw length's bucket: the first bound ≥ n, the last bucket for anything longer."""
    return np.minimum(np.searchsorted(np.asarray(boundaries), np.asarray(lengths), side="left"), len(boundaries) - 1)


def loss_weights(weights: np.ndarray, kept: np.ndarray, loss_norm: str) -> np.ndarray:
    """m_i = w_i (per_sequence) or w_i·L_i (per_token): the per-row weights of the masked batch loss."""
    weights = np.asarray(weights, dtype=np.float64)
    if loss_norm == "per_sequence":
        return weights
    if loss_norm == "per_token":
        return weights * np.asarray(kept, dtype=np.float64)
    raise ValueError(f"unknown loss_norm {loss_norm!r}")


def masked_mean(values: np.ndarray, weights: np.ndarray) -> float:
    """Σ m·v / max(Σ m, 1): the NaN-free masked mean (module docstring)."""
    weights = np.asarray(weights, dtype=np.float64)
    return float(np.sum(np.asarray(values) * weights) / max(float(np.sum(weights)), 1.0))
