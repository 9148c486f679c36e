"""Variable-length sequences: padding, truncation, masks, lengths and length bucketing (DESIGN §5, "Padding").

Groundwork for the sequences issue; not yet wired into the spec or the adapters.

Token 0 is reserved for padding. For a batch of sequences s_i with lengths n_i and a target length
T = max_len if max_len > 0 else max_i n_i:
- truncation keeps the first T tokens (`truncate = "post"`, cut at the end) or the last T (`"pre"`, Keras's default);
- padding puts the kept tokens at positions [0, L) (`side = "post"`: torch `pad_sequence`, tf `padded_batch`) or
  [T − L, T) (`"pre"`: Keras `pad_sequences`'s default), L = min(n_i, T);
- the mask m[i, t] = 1 exactly on the kept tokens, and the length is L. A masked model reads only masked-in tokens,
  so pre- and post-padding give the same result with a mask and (in general) different ones without.

Bucketing: with boundaries b_1 < … < b_K, a sequence of length n falls in the first bucket with n ≤ b_k (the last
bucket takes the rest, truncated to b_K); each batch is drawn from one bucket and padded to its boundary, so at most
K padded shapes exist and a jitted step compiles at most K times.
"""

from __future__ import annotations

import numpy as np

PAD = 0
BUCKET_STREAM = 5


def pad_batch(sequences: list[np.ndarray], side: str = "post", truncate: str = "post", max_len: int = 0,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens (B, T) int64, mask (B, T) bool, lengths (B,)) for a list of 1-D token arrays."""
    if side not in ("post", "pre") or truncate not in ("post", "pre"):
        raise ValueError(f"side and truncate must be 'post' or 'pre', got {side!r}, {truncate!r}")
    target = max_len or max((len(s) for s in sequences), default=0)
    tokens = np.full((len(sequences), target), PAD, dtype=np.int64)
    mask = np.zeros((len(sequences), target), dtype=bool)
    lengths = np.zeros(len(sequences), dtype=np.int64)
    for i, seq in enumerate(sequences):
        seq = np.asarray(seq, dtype=np.int64)
        kept = seq[:target] if truncate == "post" else seq[max(len(seq) - target, 0):]
        start = 0 if side == "post" else target - len(kept)
        tokens[i, start: start + len(kept)] = kept
        mask[i, start: start + len(kept)] = True
        lengths[i] = len(kept)
    return tokens, mask, lengths


def bucket_of(lengths: np.ndarray, boundaries: list[int]) -> np.ndarray:
    """Index of each length's bucket: the first boundary ≥ n, the last bucket for anything longer."""
    return np.minimum(np.searchsorted(np.asarray(boundaries), np.asarray(lengths), side="left"),
                      len(boundaries) - 1)


def bucketed_batches(lengths: np.ndarray, batch_size: int, boundaries: list[int], seed: int, epoch: int,
                     shuffle: bool = True) -> list[tuple[np.ndarray, int]]:
    """One epoch of (row ids, padded length) batches, each from a single bucket.

    Within each bucket rows are permuted by `default_rng([seed, 5, epoch])` (or kept in order without shuffle) and
    cut into batches of `batch_size` (the last one ragged); the batch order is then permuted with the same
    generator, so every row appears exactly once per epoch.
    """
    rng = np.random.default_rng([seed, BUCKET_STREAM, epoch])
    buckets = bucket_of(lengths, boundaries)
    batches = []
    for k, bound in enumerate(boundaries):
        ids = np.flatnonzero(buckets == k)
        if shuffle:
            ids = rng.permutation(ids)
        batches += [(ids[i: i + batch_size], int(bound)) for i in range(0, len(ids), batch_size)]
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
