"""The native input pipelines: tf.data over the shared BatchPlan (exact) or tf.data's own shuffle (native), one
per kind of data, both yielding common.batching.Rows (docs/design.md, "Batching and order", "Padding and masks").

Exact mode slices the rows in the plan's slot order (`BatchPlan.slots`: the remainder already cut under "drop",
weight-0 filler appended under "pad") with `from_tensor_slices` and lets tf.data cut the batches; `shuffle` cannot
reproduce the numpy order; the compiled mode reads the same batches from a pipeline built once over variables that
hold the current epoch's slots (`Features.batches`: each batch sliced whole and its rows gathered on the device,
made only when asked for, so it sees the slots its epoch assigned). Split steps
(common.distributed; features and images) slice their parts' rows the same way and `.batch(c).batch(K)` them, one
element per step and replica (`Features.parts`). The idioms `order` and `split_step` (common.idioms) take tf.data's
own dataset instead: all training rows, weights 1, "pad" kept ragged, `shuffle(N, seed,
reshuffle_each_iteration=True)` with `order` (and batching.shuffle), batched by the global micro-batch G with
`split_step` (R·b: common.distributed; a split run hands these global batches to `tf.distribute`,
backends.tf_backend.distributed), by b otherwise. Features (B, F) and images
(B, H, W, C), canonical NHWC as Keras runs them: `.batch(B)`. Tokens
(resolved sides of common.padding):
- max_len > 0: `keras.utils.pad_sequences(maxlen, padding, truncating)` once per split, then `.batch(B)`;
- otherwise `.padded_batch(B)` (T = the batch's longest row), or with buckets b_1 < … < b_K each row cut to b_K
  then `bucket_by_sequence_length(bucket_boundaries=[b_k + 1], pad_to_bucket_boundary=True)`, whose streaming
  order and end-of-epoch flush BatchPlan reproduces. Both pad at the end: pre-padding reverses each row before
  and the time axis after. Row weights m = w (per_sequence) or w·L (per_token), L the kept length
  (common.padding.loss_weights), formed in the pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

from common.batching import Batch, BatchPlan, Rows
from common.datasets import Dataset
from common.distributed import Layout
from common.idioms import on, plan_order
from common.padding import kept_lengths, length_cap, resolve_sides
from common.spec import Spec


class Pipeline:
    """What both kinds share: the exact epoch over the plan's slots, the native dataset, the naive loader. A kind
    gives `x_spec`, `_rows(ids, weights)` (one dict per slot: x, y, weights, ids, and lengths for tokens), the same
    row from Python (`_row`, `_row_signature`), `_batched(rows)` and `eval_rows(split, batch)`."""

    def __init__(self, spec: Spec, plan: BatchPlan, n_train: int):
        b = spec.batching
        self.plan, self.dtype = plan, spec.dtype
        self.batch_size = Layout.from_spec(spec).micro if on(spec, "split_step") else b.batch_size  # native: G
        self.drop = b.last_batch == "drop"
        self._native = None
        if not plan_order(spec):  # iterated once per epoch; each iteration reshuffles
            ds = self._rows(np.arange(n_train), np.ones(n_train))
            if b.shuffle and on(spec, "order"):
                ds = ds.shuffle(n_train, seed=spec.seed, reshuffle_each_iteration=True)
            self._native = self._batched(ds).prefetch(tf.data.AUTOTUNE)

    def dataset(self, epoch: int) -> tf.data.Dataset:
        """The epoch's batches as a tf.data.Dataset of dicts with the fields of Rows."""
        if self._native is not None:
            return self._native
        ids, weights = self.plan.slots(epoch)
        return self._batched(self._rows(ids, weights)).prefetch(tf.data.AUTOTUNE)

    def epoch(self, epoch: int) -> Iterator[Rows]:
        for batch in self.dataset(epoch):
            yield Rows(batch.pop("ids").numpy(), **batch)

    def naive(self, epoch: int) -> tf.data.Dataset:
        """The same exact epoch the way a naive port writes it (benchmarks only): `Dataset.from_generator` over a
        Python generator yielding one row at a time, then the same batching, no prefetch."""
        ids, weights = self.plan.slots(epoch)
        weights = weights.astype(self.dtype)
        rows = tf.data.Dataset.from_generator(
            lambda: (self._row(i, w) for i, w in zip(ids, weights, strict=True)), output_signature=self._row_signature()
        )
        return self._batched(rows)


class Features(Pipeline):
    """Rows of one fixed shape in the spec dtype: features (B, F) or images (B, H, W, C)."""

    def __init__(self, spec: Spec, data: Dataset, plan: BatchPlan):
        dtype = spec.dtype
        self.x = {s: getattr(data, f"{s}_x").astype(dtype) for s in ("train", "test")}
        self.y = {s: getattr(data, f"{s}_y").astype(np.int64) for s in ("train", "test")}
        self.x_spec = tf.TensorSpec((None, *data.train_x.shape[1:]), dtype)
        self.train = {k: tf.constant(v["train"]) for k, v in (("x", self.x), ("y", self.y))}  # on the device once
        super().__init__(spec, plan, data.train_x.shape[0])

    def _rows(self, ids, weights):
        return tf.data.Dataset.from_tensor_slices(
            {"x": self.x["train"][ids], "y": self.y["train"][ids], "weights": weights.astype(self.dtype), "ids": ids}
        )

    def batches(self, slots: dict, steps: int) -> tf.data.Dataset:
        """The exact epoch's batches from a dataset made ONCE (backends.tf_backend.execution, `Looped`): `slots`
        holds tf.Variables with the current epoch's flat plan (ids, weights and any field riding along row by
        row), which each epoch assigns before its steps. `range(steps).repeat()` yields k = 0..S-1 per epoch, and
        batch k is slots [kB, (k+1)B) read from the variables when it is made, its x and y gathered on the device
        (`tf.gather`): the batches that `dataset`'s `.batch(B)` cuts. LAZY: without autotuning and tf.data's
        default static optimizations (`inject_prefetch`, `map_parallelization`: both on by default, both would
        make elements ahead of `get_next()` from the slots as they were then), a batch is made in order when it is
        asked for, so it reads the slots of the epoch that asks."""
        b = self.batch_size

        def batch(k):
            rows = tf.nest.map_structure(lambda column: column[k * b : (k + 1) * b], slots)
            return {"x": tf.gather(self.train["x"], rows["ids"]), "y": tf.gather(self.train["y"], rows["ids"]), **rows}

        options = tf.data.Options()
        options.autotune.enabled = False
        options.experimental_optimization.apply_default_optimizations = False
        options.deterministic = True
        return tf.data.Dataset.range(steps).repeat().map(batch).with_options(options)

    def _row(self, i, w):
        return {"x": self.x["train"][i], "y": self.y["train"][i], "weights": w, "ids": i}

    def _row_signature(self):
        return {
            "x": tf.TensorSpec(self.x_spec.shape[1:], self.dtype),
            "y": tf.TensorSpec((), tf.int64),
            "weights": tf.TensorSpec((), self.dtype),
            "ids": tf.TensorSpec((), tf.int64),
        }

    def _batched(self, rows):
        return rows.batch(self.batch_size, drop_remainder=self.drop)

    def parts(self, ids: np.ndarray, weights: np.ndarray, **fields) -> tf.data.Dataset:
        """Split steps (common.distributed): one element per `ids`, `weights` row (E, K, c), i.e. per step and
        replica, its rows sliced like the exact epoch's and cut by tf.data into K micro-batches of c rows, so each
        field is (K, c, ...); `fields` (E, K, ...) ride along (the part scales, the dropout-mask slices)."""
        _, micro, shard = ids.shape
        rows = self._rows(ids.reshape(-1), weights.reshape(-1))
        rows = rows.batch(shard, drop_remainder=True).batch(micro, drop_remainder=True)
        extra = tf.data.Dataset.from_tensor_slices(fields)
        return tf.data.Dataset.zip(rows, extra).map(lambda row, more: {**row, **more}).prefetch(tf.data.AUTOTUNE)

    def eval_rows(self, split: str, batch: Batch) -> Rows:
        return Rows(
            batch.ids, tf.constant(self.x[split][batch.ids]), tf.constant(self.y[split][batch.ids]), batch.weights
        )


class Tokens(Pipeline):
    """Token rows (B, T) int64, 0 = pad, with the kept lengths L as `lengths` (module docstring)."""

    x_spec = tf.TensorSpec((None, None), tf.int64)

    def __init__(self, spec: Spec, data: Dataset, plan: BatchPlan):
        seq = spec.sequence
        self.pad, self.truncate = resolve_sides(spec, "tf")
        self.max_len, self.buckets, self.loss_norm = seq.max_len, list(seq.buckets), seq.loss_norm
        self.cap = length_cap(self.max_len, self.buckets)
        self.sequences = {s: data.sequences(s, np.arange(data.lengths(s).shape[0])) for s in ("train", "test")}
        self.lengths = {s: np.asarray(data.lengths(s), np.int64) for s in ("train", "test")}
        self.y = {s: getattr(data, f"{s}_y").astype(np.int64) for s in ("train", "test")}
        self.kept = kept_lengths(self.lengths["train"], self.max_len, self.buckets)
        if self.max_len:  # the Keras idiom: pad and truncate the whole split once
            self.padded = self._pad(self.sequences["train"], self.max_len)
        else:
            self.ragged = tf.RaggedTensor.from_row_lengths(
                np.concatenate(self.sequences["train"]).astype(np.int64), self.lengths["train"]
            )
        super().__init__(spec, plan, len(self.sequences["train"]))

    def _pad(self, sequences: list, length: int) -> np.ndarray:
        return keras.utils.pad_sequences(
            sequences, maxlen=length, padding=self.pad, truncating=self.truncate, value=0, dtype="int64"
        )

    def _rows(self, ids, weights):
        tokens = self.padded[ids] if self.max_len else tf.gather(self.ragged, ids)
        ds = tf.data.Dataset.from_tensor_slices(
            {
                "x": tokens,
                "y": self.y["train"][ids],
                "weights": np.asarray(weights, self.dtype),
                "lengths": self.kept[ids],
                "ids": np.asarray(ids, np.int64),
            }
        )
        # a slice of a ragged matrix is a rank-1 RaggedTensorSpec; inside `map` it is the plain 1-D tensor that
        # padded_batch / bucket_by_sequence_length accept
        return ds if self.max_len else ds.map(lambda row: {**row, "x": tf.identity(row["x"])})

    def _row(self, i, w):
        return {
            "x": self.padded[i] if self.max_len else self.sequences["train"][i],
            "y": self.y["train"][i],
            "weights": w,
            "lengths": self.kept[i],
            "ids": i,
        }

    def _row_signature(self):
        return {
            "x": tf.TensorSpec((self.max_len or None,), tf.int64),
            "y": tf.TensorSpec((), tf.int64),
            "weights": tf.TensorSpec((), self.dtype),
            "lengths": tf.TensorSpec((), tf.int64),
            "ids": tf.TensorSpec((), tf.int64),
        }

    def _cut(self, row):
        """Native truncation of a raw row to the cap (buckets: the last bound), on the truncate side."""
        tokens = row["x"]
        n = tf.shape(tokens, out_type=tf.int64)[0]
        cut = tf.minimum(n, self.cap)
        return {**row, "x": tokens[:cut] if self.truncate == "post" else tokens[n - cut :]}

    def _finish(self, batch):
        """Batch-level: undo the row reversal (pre-padding after an end-padding batcher) and form m."""
        tokens, w = batch["x"], batch["weights"]
        if self.pad == "pre" and not self.max_len:
            tokens = tf.reverse(tokens, [1])
        m = w if self.loss_norm == "per_sequence" else w * tf.cast(batch["lengths"], w.dtype)
        return {**batch, "x": tokens, "weights": m}

    def _batched(self, rows):
        b = self.batch_size
        if self.max_len:
            return rows.batch(b, drop_remainder=self.drop).map(self._finish)
        if self.buckets:
            rows = rows.map(self._cut)
        if self.pad == "pre":
            rows = rows.map(lambda row: {**row, "x": tf.reverse(row["x"], [0])})
        if self.buckets:
            ds = rows.bucket_by_sequence_length(
                lambda row: tf.shape(row["x"])[0],
                bucket_boundaries=[bound + 1 for bound in self.buckets],
                bucket_batch_sizes=[b] * (len(self.buckets) + 1),
                pad_to_bucket_boundary=True,
                drop_remainder=self.drop,
            )
        else:
            ds = rows.padded_batch(b, drop_remainder=self.drop)
        return ds.map(self._finish)

    def eval_rows(self, split: str, batch: Batch) -> Rows:
        """An evaluation batch padded to the plan's `Batch.length` with `pad_sequences` (resolved sides)."""
        tokens = self._pad([self.sequences[split][i] for i in batch.ids], batch.length)
        return Rows(
            batch.ids,
            tf.constant(tokens),
            tf.constant(self.y[split][batch.ids]),
            batch.weights,
            np.minimum(self.lengths[split][batch.ids], batch.length),
        )


def pipeline(spec: Spec, data: Dataset, plan: BatchPlan) -> Features | Tokens:
    """The pipeline for `data`: tokens for sequence data, features (or images) otherwise."""
    return (Tokens if data.is_sequence else Features)(spec, data, plan)
