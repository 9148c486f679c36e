"""The BatchPlan: which training rows form each step's batch, identical for every backend
(docs/design.md, "Batching and order").

Order: epoch e (0-based) walks `default_rng([seed, rng.ORDER, e]).permutation(N)` when shuffling, else 0..N-1,
fed to each native pipeline (DataLoader batch_sampler, tf.data slices + `.batch()`, JAX indexing).
Last batch, for N rows, batch size B, r = N mod B: keep (r rows, ragged), drop (the last r rows unused) or pad
(completed to B rows with the first B − r ids of the epoch order, weight 0: static shape B, and the loss
Σ w·ℓ / Σ w equals the ragged batch's mean).
Evaluation: unshuffled consecutive slices of `eval_batch_size` rows (0 = the whole split), the last kept ragged.
Sequence data: each batch carries its padded length T (common.padding.padded_length). With `sequence.buckets`
the plan is a streaming bucketer (tf.data's `bucket_by_sequence_length`): a row joins its bucket's open batch, a
batch is emitted at B rows, and the open batches are flushed in ascending bucket order at the end of the epoch
(pad: completed with that bucket's rows in epoch order, cycled, weight 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from common import rng
from common.distributed import Layout
from common.errors import InputError
from common.padding import bucket_of, padded_length

if TYPE_CHECKING:
    from common.spec import Spec


@dataclass(frozen=True)
class Batch:
    """One batch as fed to a model: `ids` (row ids, filler rows included), `weights` (1 real, 0 filler) and, for
    sequence data, the padded length `length` (0 for feature data)."""

    ids: np.ndarray
    weights: np.ndarray
    length: int = 0

    @property
    def real_ids(self) -> np.ndarray:
        """The ids of the real rows, in order (what records list as `batch_ids`)."""
        return self.ids[self.weights > 0]

    @property
    def n_real(self) -> int:
        return int(np.count_nonzero(self.weights))

    @property
    def rows(self) -> int:
        """Rows fed to the model, filler included (the static shape under `pad`)."""
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class Rows:
    """One batch as a backend's pipeline delivers it, in that framework's arrays; the one batch type every backend
    consumes. `ids`: the row ids fed (filler included; numpy); `x`: features (B, F) or tokens (B, T); `y`: labels;
    `weights`: the row weights of the loss Σ w·ℓ / max(Σ w, 1) (plan weights, or common.padding.loss_weights for
    sequences); `lengths`: the kept token counts (sequences; None for features)."""

    ids: np.ndarray
    x: Any
    y: Any
    weights: Any
    lengths: Any = None

    @property
    def length(self) -> int:
        """The padded length T of a token batch; 0 for features."""
        return 0 if self.lengths is None else int(self.x.shape[1])


@dataclass(frozen=True)
class BatchPlan:
    """Per-epoch training batches for `n_rows` rows; see the module docstring for the rules."""

    n_rows: int
    batch_size: int
    shuffle: bool
    last_batch: str
    seed: int
    lengths: np.ndarray | None = None  # sequence data: raw token count of each training row
    max_len: int = 0
    buckets: tuple[int, ...] = ()

    def __post_init__(self):
        if self.last_batch == "drop" and self.steps_per_epoch == 0:
            raise InputError(
                f"spec key 'batching.batch_size': {self.batch_size} exceeds the rows of every "
                f"{'bucket' if self.buckets else 'epoch'} ({self.n_rows} training rows), so "
                'last_batch = "drop" leaves no batch'
            )

    @classmethod
    def from_spec(cls, spec: Spec, n_rows: int, lengths: np.ndarray | None = None) -> BatchPlan:
        """The training plan of a spec's `batching` (and, for sequence data, `sequence`) tables. Its batch is one
        optimizer step's rows: batch_size, times the replicas and micro-batches a step is split into
        (common.distributed.Layout.step_rows)."""
        b = spec.batching
        if lengths is None:
            return cls(n_rows, Layout.from_spec(spec).step_rows, b.shuffle, b.last_batch, spec.seed)
        seq = spec.sequence
        return cls(
            n_rows,
            b.batch_size,
            b.shuffle,
            b.last_batch,
            spec.seed,
            np.asarray(lengths),
            seq.max_len,
            tuple(seq.buckets),
        )

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's row order: a numpy permutation keyed by (seed, epoch), or 0..N-1 without shuffle."""
        if not self.shuffle:
            return np.arange(self.n_rows)
        return np.random.default_rng([self.seed, rng.ORDER, epoch]).permutation(self.n_rows)

    def slots(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Flat (ids, weights) that a native batcher turns into the epoch's batches.

        Unbucketed: consecutive chunks of batch_size are the batches. Under `keep` the final chunk is short; under
        `drop` it is cut off; under `pad` filler rows of weight 0 complete it. `tf.data ... .batch(B)` (or
        `.padded_batch(B)`) over these slots reproduces the plan.
        Bucketed: the epoch order, then each open bucket's filler rows in ascending bucket order (pad only); a
        streaming bucketer (`bucket_by_sequence_length`, batch B, `drop_remainder` under drop) over them
        reproduces the plan.
        """
        if self.buckets:
            return self._bucket_stream(epoch)
        ids = self.order(epoch)
        weights = np.ones(self.n_rows)
        remainder = self.n_rows % self.batch_size
        if remainder and self.last_batch == "drop":
            ids, weights = ids[: self.n_rows - remainder], weights[: self.n_rows - remainder]
        elif remainder and self.last_batch == "pad":
            filler = np.resize(ids, self.batch_size - remainder)
            ids = np.concatenate([ids, filler])
            weights = np.concatenate([weights, np.zeros(filler.shape[0])])
        return ids, weights

    def batches(self, epoch: int) -> list[Batch]:
        if self.buckets:
            return self._bucketed_batches(epoch)
        ids, weights = self.slots(epoch)
        return [
            self._batch(ids[i : i + self.batch_size], weights[i : i + self.batch_size])
            for i in range(0, ids.shape[0], self.batch_size)
        ]

    def _batch(self, ids: np.ndarray, weights: np.ndarray) -> Batch:
        if self.lengths is None:
            return Batch(ids, weights)
        return Batch(ids, weights, padded_length(self.lengths[ids], self.max_len, self.buckets))

    def _bucket_members(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch order and the bucket of each row in it."""
        order = self.order(epoch)
        return order, bucket_of(self.lengths[order], self.buckets)

    def _bucketed_batches(self, epoch: int) -> list[Batch]:
        """The streaming bucketer of the module docstring."""
        order, bucket = self._bucket_members(epoch)
        open_rows: dict[int, list[int]] = {k: [] for k in range(len(self.buckets))}
        out = []
        for row, k in zip(order.tolist(), bucket.tolist(), strict=True):
            open_rows[k].append(row)
            if len(open_rows[k]) == self.batch_size:
                out.append(Batch(np.array(open_rows[k]), np.ones(self.batch_size), self.buckets[k]))
                open_rows[k] = []
        for k, rest in open_rows.items():
            if not rest or self.last_batch == "drop":
                continue
            filler = self._filler(order[bucket == k], len(rest))
            out.append(
                Batch(
                    np.concatenate([np.array(rest), filler]).astype(np.int64),
                    np.concatenate([np.ones(len(rest)), np.zeros(filler.shape[0])]),
                    self.buckets[k],
                )
            )
        return out

    def _filler(self, members: np.ndarray, open_rows: int) -> np.ndarray:
        """Filler ids completing a bucket's open batch under pad (empty otherwise)."""
        if self.last_batch != "pad":
            return np.zeros(0, dtype=np.int64)
        return np.resize(members, self.batch_size - open_rows)

    def _bucket_stream(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        order, bucket = self._bucket_members(epoch)
        ids, weights = [order], [np.ones(self.n_rows)]
        for k in range(len(self.buckets)):
            members = order[bucket == k]
            remainder = members.shape[0] % self.batch_size
            if remainder:
                filler = self._filler(members, remainder)
                ids.append(filler)
                weights.append(np.zeros(filler.shape[0]))
        return np.concatenate(ids).astype(np.int64), np.concatenate(weights)

    @property
    def steps_per_epoch(self) -> int:
        counts = (
            np.bincount(bucket_of(self.lengths, self.buckets), minlength=len(self.buckets))
            if self.buckets
            else [self.n_rows]
        )
        return int(
            sum(n // self.batch_size + (1 if n % self.batch_size and self.last_batch != "drop" else 0) for n in counts)
        )


def eval_batches(
    n_rows: int,
    eval_batch_size: int,
    lengths: np.ndarray | None = None,
    max_len: int = 0,
    buckets: tuple[int, ...] | list[int] = (),
) -> list[Batch]:
    """Consecutive, unshuffled evaluation batches; 0 means the whole split as one batch. For sequence data
    (`lengths` given) each is padded to common.padding.padded_length (no bucketing: batches mix lengths)."""
    size = eval_batch_size or n_rows
    out = []
    for i in range(0, n_rows, size):
        ids = np.arange(i, min(i + size, n_rows))
        length = 0 if lengths is None else padded_length(np.asarray(lengths)[ids], max_len, buckets)
        out.append(Batch(ids, np.ones(ids.shape[0]), length))
    return out
