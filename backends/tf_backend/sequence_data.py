"""The tf.data pipelines for token sequences (DESIGN §5, "Padding and masks"; semantics: common.padding).

Every batch is a dict of tensors, all made by tf.data from the plan's flat slot stream (`BatchPlan.slots`):

    tokens (B, T) int64   the padded token matrix, 0 = pad (Keras `Embedding(mask_zero=True)` masks exactly these)
    labels (B,)   int64
    weights (B,)  dtype   the row loss weights m_i = w_i (per_sequence) or w_i·L_i (per_token),
                          common.padding.loss_weights, computed inside the pipeline from the two per-row features
                          below (the plan weight w_i and the kept length L_i = common.padding.kept_lengths, a per-row
                          constant, so it rides along with the row)
    kept (B,)     int64   L_i
    ids (B,)      int64   the plan's row ids (filler included), checked by the driver

How T and the sides are produced, per case (pad / truncate sides from common.padding.resolve_sides(spec, "tf")):
- max_len > 0: the Keras idiom, `keras.utils.pad_sequences(seqs, maxlen=max_len, padding=side,
  truncating=trunc, value=0)` once per split, then the rows in slot order and `.batch(B)`, as the MLP pipeline.
- max_len = 0, no buckets: ragged elements in slot order and `.padded_batch(B)`; T = the longest row of the batch
  (filler rows included), nothing is truncated. `padded_batch` pads at the end; pre-padding reverses each row
  before and the time axis of the batch after (reverse ∘ post-pad ∘ reverse = pre-pad).
- buckets b_1 < … < b_K: each row is first truncated natively to the last bound b_K (on the truncate side), then
  `Dataset.bucket_by_sequence_length(len, bucket_boundaries=[b_k + 1], bucket_batch_sizes=[B]*(K+1),
  pad_to_bucket_boundary=True, drop_remainder=(last_batch == "drop"))` over the slot stream: bucket k's batches are
  padded to b_k, the (K+1)-th bucket stays empty. The streaming order and the end-of-epoch flush in ascending
  bucket order are what BatchPlan's bucketer reproduces; pre-padding uses the same reverse trick.

Native mode (common.native): the same three pipelines over all training rows, shuffled by
`shuffle(N, seed, reshuffle_each_iteration=True)` before padding; all weights 1 (no filler rows; "pad" keeps
the ragged batch as in the MLP native pipeline).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from common.batching import BatchPlan
from common.padding import kept_lengths, length_cap


class SequenceSplit:
    """One split's raw sequences as TF sees them: the ragged tokens, labels and kept lengths L_i."""

    def __init__(self, x: np.ndarray, lengths: np.ndarray, y: np.ndarray, seq: dict):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.sequences = [np.asarray(x[i, : self.lengths[i]], dtype=np.int64) for i in range(x.shape[0])]
        self.ragged = tf.RaggedTensor.from_row_lengths(
            np.concatenate(self.sequences) if self.sequences else np.zeros(0, np.int64), self.lengths)
        self.y = np.asarray(y, dtype=np.int64)
        self.kept = kept_lengths(self.lengths, seq["max_len"], seq["buckets"])


class SequencePipeline:
    """Builds the per-epoch tf.data datasets for one spec (module docstring)."""

    def __init__(self, train: SequenceSplit, spec: dict, sides: tuple[str, str], dtype: str):
        self.train, self.spec, self.dtype = train, spec, dtype
        self.pad, self.truncate = sides
        seq = spec["sequence"]
        self.max_len, self.buckets, self.loss_norm = seq["max_len"], list(seq["buckets"]), seq["loss_norm"]
        self.cap = length_cap(self.max_len, self.buckets)
        self.batch_size = spec["batching"]["batch_size"]
        self.drop = spec["batching"]["last_batch"] == "drop"
        if self.max_len:  # the Keras idiom: pad and truncate the whole split once
            self.padded = keras.utils.pad_sequences(train.sequences, maxlen=self.max_len, padding=self.pad,
                                                    truncating=self.truncate, value=0, dtype="int64")

    # -- elements ---------------------------------------------------------------------------------------------
    def _rows(self, ids: np.ndarray, weights: np.ndarray) -> tf.data.Dataset:
        """One element per slot: (tokens, label, w, L, id); tokens ragged (1-D, raw) unless max_len > 0."""
        t = self.train
        tokens = self.padded[ids] if self.max_len else tf.gather(t.ragged, ids)
        ds = tf.data.Dataset.from_tensor_slices(
            (tokens, t.y[ids], np.asarray(weights, dtype=self.dtype), t.kept[ids], np.asarray(ids, np.int64)))
        # a slice of a ragged matrix is a RaggedTensorSpec of rank 1; inside `map` it is a plain 1-D tensor, which
        # is what padded_batch / bucket_by_sequence_length accept
        return ds if self.max_len else ds.map(lambda tokens, *rest: (tf.identity(tokens), *rest))

    def _native_rows(self) -> tf.data.Dataset:
        """All training rows, weight 1, shuffled the tf.data way when the spec shuffles (native mode)."""
        n = len(self.train.sequences)
        ds = self._rows(np.arange(n), np.ones(n))
        if self.spec["batching"]["shuffle"]:
            ds = ds.shuffle(n, seed=self.spec["seed"], reshuffle_each_iteration=True)
        return ds

    def _truncate(self, tokens, y, w, kept, ids):
        """Native truncation of a raw row to the cap (buckets: the last bound), on the truncate side."""
        n = tf.shape(tokens, out_type=tf.int64)[0]
        cut = tf.minimum(n, self.cap)
        tokens = tokens[:cut] if self.truncate == "post" else tokens[n - cut:]
        return tokens, y, w, kept, ids

    @staticmethod
    def _reverse_row(tokens, *rest):
        return (tf.reverse(tokens, [0]), *rest)

    def _finish(self, tokens, y, w, kept, ids) -> dict:
        """Batch-level: undo the row reversal (pre-padding after an end-padding batcher) and form m."""
        if self.pad == "pre" and not self.max_len:
            tokens = tf.reverse(tokens, [1])
        m = w if self.loss_norm == "per_sequence" else w * tf.cast(kept, w.dtype)
        return {"tokens": tokens, "labels": y, "weights": m, "kept": kept, "ids": ids}

    # -- batching ---------------------------------------------------------------------------------------------
    def _batched(self, rows: tf.data.Dataset) -> tf.data.Dataset:
        b = self.batch_size
        if self.max_len:
            ds = rows.batch(b, drop_remainder=self.drop)
        else:
            if self.buckets:
                rows = rows.map(self._truncate)
            if self.pad == "pre":
                rows = rows.map(self._reverse_row)
            if self.buckets:
                ds = rows.bucket_by_sequence_length(
                    lambda tokens, *_: tf.shape(tokens)[0],
                    bucket_boundaries=[bound + 1 for bound in self.buckets],
                    bucket_batch_sizes=[b] * (len(self.buckets) + 1),
                    pad_to_bucket_boundary=True, drop_remainder=self.drop)
            else:
                ds = rows.padded_batch(b, drop_remainder=self.drop)
        return ds.map(self._finish).prefetch(tf.data.AUTOTUNE)

    def epoch(self, plan: BatchPlan, epoch: int) -> tf.data.Dataset:
        """Exact mode: the epoch's batches over the plan's slot stream (drop already applied by the slots for the
        unbucketed cases; the bucketer drops its own remainders)."""
        ids, weights = plan.slots(epoch)
        return self._batched(self._rows(ids, weights))

    def native(self) -> tf.data.Dataset:
        """Native mode: iterate once per epoch (each iteration reshuffles)."""
        return self._batched(self._native_rows())


def eval_tokens(split: SequenceSplit, ids: np.ndarray, length: int, sides: tuple[str, str]) -> np.ndarray:
    """An evaluation batch padded to the plan's `length` with the Keras idiom `pad_sequences` (resolved sides)."""
    pad, truncate = sides
    return keras.utils.pad_sequences([split.sequences[i] for i in ids], maxlen=length, padding=pad,
                                     truncating=truncate, value=0, dtype="int64")
