"""The BatchPlan: which training rows form each step's batch, identical for every backend (DESIGN §3, §5).

Order: epoch e (0-based) uses `default_rng([seed, 2, e]).permutation(N)` when shuffling, else 0..N-1. Shuffle
orders of torch `randperm`, `tf.data.shuffle` and `jax.random` differ for the same seed, so this one numpy order
is fed to each native pipeline (DataLoader batch_sampler, tf.data slices + `.batch()`, JAX indexing).

Last-batch policy for N rows and batch size B, r = N mod B:
- keep: the last batch holds r rows (ragged).
- drop: the last r rows of the epoch order are not used.
- pad:  the last batch is filled up to B rows with the first B − r ids of the epoch order, each with weight 0,
        so every batch has the static shape B. The loss is Σ w·ℓ / Σ w, which equals the ragged batch's mean.

Evaluation plan: no shuffle, consecutive slices of `eval_batch_size` rows (0 = the whole split as one batch),
last batch kept ragged — which is what makes the per-batch-mean "banding" visible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import InputError

ORDER_STREAM = 2


@dataclass(frozen=True)
class Batch:
    """One batch as fed to a model: `ids` (row ids, filler rows included) and `weights` (1 real, 0 filler)."""

    ids: np.ndarray
    weights: np.ndarray

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
class BatchPlan:
    """Per-epoch training batches for `n_rows` rows; see the module docstring for the rules."""

    n_rows: int
    batch_size: int
    shuffle: bool
    last_batch: str
    seed: int

    def __post_init__(self):
        if self.last_batch == "drop" and self.n_rows < self.batch_size:
            raise InputError(f"spec key 'batching.batch_size': {self.batch_size} exceeds the {self.n_rows} "
                             "training rows, so last_batch = \"drop\" leaves no batch")

    @classmethod
    def from_spec(cls, spec: dict, n_rows: int) -> "BatchPlan":
        b = spec["batching"]
        return cls(n_rows, b["batch_size"], b["shuffle"], b["last_batch"], spec["seed"])

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's row order: a numpy permutation keyed by (seed, epoch), or 0..N-1 without shuffle."""
        if not self.shuffle:
            return np.arange(self.n_rows)
        return np.random.default_rng([self.seed, ORDER_STREAM, epoch]).permutation(self.n_rows)

    def slots(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Flat (ids, weights) whose consecutive chunks of batch_size are the epoch's batches.

        Under `keep` the final chunk is short; under `drop` it is cut off; under `pad` filler rows of weight 0
        complete it. A pipeline that batches these slots natively (`tf.data ... .batch(B)`) reproduces the plan.
        """
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
        ids, weights = self.slots(epoch)
        return [Batch(ids[i: i + self.batch_size], weights[i: i + self.batch_size])
                for i in range(0, ids.shape[0], self.batch_size)]

    @property
    def steps_per_epoch(self) -> int:
        full, remainder = divmod(self.n_rows, self.batch_size)
        return full + (1 if remainder and self.last_batch != "drop" else 0)


def eval_batches(n_rows: int, eval_batch_size: int) -> list[Batch]:
    """Consecutive, unshuffled evaluation batches; 0 means the whole split as one batch."""
    size = eval_batch_size or n_rows
    return [Batch(np.arange(i, min(i + size, n_rows)), np.ones(min(size, n_rows - i)))
            for i in range(0, n_rows, size)]
