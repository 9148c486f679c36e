"""Data parallelism and gradient accumulation: how one optimizer step's rows are split into replicas and
micro-batches, and what gradient each reduction means (docs/design.md, "Data parallelism and accumulation").

Layout. R = distributed.replicas, K = batching.accumulate, b = batching.batch_size.
  G, the global micro-batch: b under `distributed.batch = "global"` (split over the replicas), R·b under
  "per_replica"; the shard c = G / R rows per replica and micro-batch. One optimizer step takes S = K·G rows: the
  BatchPlan (order, last-batch rule) is built with batch size S, so the single-device twin (batch_size = S,
  R = K = 1, `single_device`) trains on the same rows at every step.
Split of one step's batch (its real rows first, then any filler): completed to S rows with weight-0 filler (the
batch's ids cycled, as `last_batch = "pad"` does), then cut into consecutive chunks: micro-batch k is rows
[kG, (k+1)G) and, in it, replica r rows [kG + rc, kG + (r+1)c). A ragged step fills micro-batches and replicas
in order, so the later parts hold fewer real rows or none (tf.distribute's own rebatching instead gives each
replica ⌈n/R⌉ of a partial batch's n rows, in order). Every part has c rows, a static shape; its weight-0 rows
are filler.

Reductions over the step's P = R·K parts (an empty part counts, with mean 0), w the row weights, ℓ the loss:
  global_mean:    g = Σ_parts Σ_rows w·∇ℓ / Σ_step w                      (the single-device gradient)
  mean_of_means:  g = (1/P) Σ_parts Σ_part w·∇ℓ / max(Σ_part w, 1)      (DDP's average, pmean, loss/K)
The two agree when every part holds the same weight, and differ exactly at ragged steps.
An engine combines the parts' gradients by summing, then dividing by A (`averaged`): DDP averages over its R
replicas and sums the K backward passes of `no_sync` accumulation (A = R); a tf.distribute replica sum (A = 1);
optax.MultiSteps and Keras `gradient_accumulation_steps` average K micro-steps (A = K); a jitted step over the
whole global batch sees one part (A = 1). `part_scales` gives the factor s by which a part's Σ w·ℓ is multiplied
so that the engine's combination is the reduction:
  global_mean: s = A / Σ_step w;   mean_of_means: s = A / (P · max(Σ_part w, 1)).
A penalty every part's loss adds (L1, Keras's L2 regularizers) is scaled by A / P so it counts once per step
(`penalty_scale`; tf.nn.scale_regularization_loss is the R-replica case).
The recorded step loss stays Σ_step w·ℓ / Σ_step w whatever the reduction, so a distributed record compares with
a single-device one; records add `shards`, per replica and micro-batch the real row ids (`shard_ids`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from common import layers
from common.errors import InputError
from common.layers import Layer

if TYPE_CHECKING:
    from common.batching import Batch
    from common.spec import Spec

REDUCTIONS = ("global_mean", "mean_of_means")
BATCH_MEANINGS = ("global", "per_replica")


@dataclass(frozen=True)
class Layout:
    """The replicas × micro-batches layout of one optimizer step (module docstring)."""

    replicas: int = 1
    accumulate: int = 1
    micro: int = 1  # G, the global micro-batch
    reduction: str = "global_mean"

    @classmethod
    def from_spec(cls, spec: Spec) -> Layout:
        r, b = spec.distributed.replicas, spec.batching.batch_size
        micro = b if spec.distributed.batch == "global" else r * b
        return cls(r, spec.batching.accumulate, micro, spec.batching.reduction)

    @property
    def shard(self) -> int:
        """c = G / R, the rows of one part."""
        return self.micro // self.replicas

    @property
    def step_rows(self) -> int:
        """S = K·G, the rows of one optimizer step (the BatchPlan's batch size)."""
        return self.accumulate * self.micro

    @property
    def parts(self) -> int:
        """P = R·K."""
        return self.replicas * self.accumulate

    @property
    def is_split(self) -> bool:
        """Whether a step is split at all (R > 1 or K > 1)."""
        return self.parts > 1

    def rows(self, replica: int, micro: int) -> slice:
        """The part's rows among the step's S rows: [kG + rc, kG + (r+1)c). Row-wise per-step data (the shared
        dropout masks of common.dropout, drawn for S rows) is cut the same way."""
        start = micro * self.micro + replica * self.shard
        return slice(start, start + self.shard)

    def split(self, batch: Batch) -> list[list[Batch]]:
        """The step's parts, [replica][micro-batch], each a Batch of c rows (module docstring)."""
        fill = self.step_rows - batch.rows
        if fill < 0:
            raise ValueError(f"a step of {batch.rows} rows exceeds the layout's {self.step_rows}")
        ids = np.concatenate([batch.ids, np.resize(batch.ids, fill)]).astype(np.int64)
        weights = np.concatenate([batch.weights, np.zeros(fill)])
        return [
            [replace(batch, ids=ids[self.rows(r, k)], weights=weights[self.rows(r, k)]) for k in range(self.accumulate)]
            for r in range(self.replicas)
        ]

    def penalty_scale(self, averaged: int) -> float:
        """The factor on a penalty term (L1, Keras L2) that every part's loss adds, so that the engine's combination
        counts it once per optimizer step: A / P. (Decay applied by the optimizer to the weights is not scaled.)"""
        return averaged / self.parts

    def part_scales(self, part_weights: np.ndarray, averaged: int) -> np.ndarray:
        """s per part, shaped like `part_weights` (Σ w of each part, [replica][micro-batch]), for an engine that
        divides the summed part gradients by `averaged` (module docstring)."""
        sums = np.asarray(part_weights, dtype=np.float64)
        if self.reduction == "global_mean":
            return np.full(sums.shape, averaged / max(float(sums.sum()), 1.0))
        return averaged / (self.parts * np.maximum(sums, 1.0))


def shard_ids(parts: list[list[Batch]]) -> list[list[list[int]]]:
    """What a record lists as a step's `shards`: per replica, per micro-batch, the real row ids."""
    return [[part.real_ids.tolist() for part in replica] for replica in parts]


def ragged_steps(steps: list[dict]) -> list[int]:
    """The recorded steps (their `step` numbers) whose parts hold unequal numbers of real rows (`shards`): where
    mean_of_means and global_mean give different gradients."""
    return [
        s["step"] for s in steps if "shards" in s and len({len(ids) for replica in s["shards"] for ids in replica}) > 1
    ]


def single_device(spec: Spec) -> Spec:
    """The single-device twin: the same rows per optimizer step (batch_size = S), R = K = 1, global batch."""
    layout = Layout.from_spec(spec)
    return replace(
        spec,
        name=f"{spec.name}-single",
        distributed=replace(spec.distributed, replicas=1, batch="global"),
        batching=replace(spec.batching, batch_size=layout.step_rows, accumulate=1),
    )


def check(spec: Spec) -> None:
    """The spec-time rules (InputError naming the key): a global batch splits evenly over the replicas; split steps
    (R > 1 or K > 1) need feature or image data and an execution mode other than fused."""
    d = spec.distributed
    if d.batch == "global" and spec.batching.batch_size % d.replicas:
        raise InputError(
            f"spec key 'batching.batch_size': a global batch of {spec.batching.batch_size} rows cannot be split "
            f'evenly over distributed.replicas = {d.replicas}; choose a multiple, or distributed.batch = "per_replica"'
        )
    if not Layout.from_spec(spec).is_split:
        return
    key = "distributed.replicas" if d.replicas > 1 else "batching.accumulate"
    if spec.execution == "fused":
        raise InputError(
            f"spec key '{key}': a split step runs on each framework's distributed engine step by step; fused "
            "execution (one program per epoch) is single-device; use default, eager or compiled"
        )
    if layers.reads_tokens(spec):
        raise InputError(f"spec key '{key}': split steps take feature or image data, not token sequences")


def check_rows(spec: Spec, n_rows: int) -> None:
    """Once the data is known: `per_replica` batches give every replica rows only if R ≤ the training rows."""
    r = spec.distributed.replicas
    if r > n_rows:
        raise InputError(
            f"spec key 'distributed.replicas': {r} replicas for {n_rows} training rows leave a replica without "
            "any row at every step"
        )


def check_batch_norm(spec: Spec, stack: tuple[Layer, ...], batches: list[Batch]) -> None:
    """Split steps with batch_norm layers (common.layers.norm, "under split steps"): every part of every step of
    an epoch (`batches`, the plan's) must be full, c real rows and no filler; InputError naming the key otherwise."""
    layout = Layout.from_spec(spec)
    norms = [layer for layer in stack if layer.kind == "batch_norm"]
    if not (layout.is_split and norms):
        return
    for step, batch in enumerate(batches, start=1):
        if batch.n_real < layout.step_rows:
            raise InputError(
                f"spec key 'batching.last_batch': step {step} of each epoch holds {batch.n_real} real rows, not "
                f"S = {layout.step_rows}: with batch_norm {norms[0].name} (model.layers[{norms[0].index}]) under "
                f"split steps every replica and micro-batch needs its full {layout.shard} rows (its statistics are "
                'per part); set batching.last_batch = "drop" or a batch size that divides the training rows'
            )
