"""The native PyTorch input pipeline: a DataLoader yielding common.batching.Rows (docs/design.md, "Batching and
order", "Padding and masks").

- Datasets take whole batches in `__getitems__`, a plan `Batch` (split parts, evaluation), a `PlanStep` (exact-mode
  training on features and images) or the index list of torch's own BatchSampler (native mode, every row weight 1),
  and give `TorchRows`: a Rows plus `real`, the count of real rows heading a padded batch, read on the host from
  the plan's weights (core.Flow.real, for BatchNorm's batch statistics). Features and images (canonical NHWC
  (B, H, W, C); the model permutes them): `RowsDataset`, the split put on the device once, one gather per batch,
  already a Rows; in exact-mode training one gather per epoch instead (`EpochRows`: the epoch's slots
  `BatchPlan.slots(e)` as one ids tensor, x[ids], y[ids] and the weights on the device, the steps' `real` counted
  on the host, at the sampler's iter()), each step's batch rows [kB, kB + B) of it: views, no per-step gather or
  host-to-device copy. Tokens: `TokenRowsDataset` gives the raw
  rows and the `collate_fn` `PadCollate` truncates by slicing (`seq[:cap]` post, `seq[-cap:]` pre), pads with
  `pad_sequence(batch_first=True, padding_side=…)` and out to the plan's T with `F.pad`
  (common.padding.padded_length), loss weights common.padding.loss_weights(w, L, loss_norm); tokens and labels go
  to the device, lengths stay on the host (`pack_padded_sequence` wants them there).
- Idioms (common.idioms): `order` on: torch's own DataLoader order and batching (below, "native mode"); `split_step`
  on (split steps): the DistributedSampler loaders below, torch's own order included. `order` alone under split
  steps keeps the plan's parts (a torch port's order under DDP is its DistributedSampler, i.e. `split_step`). With
  both off ("exact mode") the loader walks the plan.
- Exact mode: `DataLoader(batch_sampler=PlanBatchSampler(plan))`, the shared plan's rows, order and filler (features
  and images: `PlanStepSampler`, yielding the `PlanStep`s of the epoch's `EpochRows`; tokens: the plan's Batches). Split
  steps (common.distributed): each replica's DataLoader walks `PartBatchSampler`, its parts
  `layout.split(batch)[replica][k]` of every step, micro-batch by micro-batch (c rows each, filler included).
  Native mode: `DataLoader(batch_size, shuffle, drop_last=last_batch == "drop")` ("pad" has no torch idiom: kept
  ragged); its RandomSampler reshuffles at every iter(). Native split steps (common.native.SPLIT_IDIOMS, torch
  row): each rank's `DataLoader(batch_size=c, sampler=DistributedSampler(num_replicas=R, rank=r, shuffle, seed,
  drop_last), drop_last)`, `set_epoch(e)` before every epoch (`Pipeline.epoch`): the epoch's permutation of
  `seed + e` padded to ⌈N/R⌉·R rows by repeating its first rows (drop: cut to ⌊N/R⌋·R), rank r taking every R-th.
  Either way the DataLoader gets its own `torch.Generator`: it draws a base seed at every iter(), which on the
  global generator would shift every later nn.Dropout mask.
- The bench's "naive" loader (`make_per_row_loader`): TensorDataset + per-row fetch + default collate, walking the
  plan's flattened order (`PlanOrderSampler`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from common.batching import Batch, BatchPlan, Rows
from common.datasets import Dataset as Data
from common.distributed import Layout
from common.idioms import on
from common.padding import PAD, length_cap, loss_weights, padded_length, resolve_sides
from common.spec import Spec

TORCH_SIDE = {"post": "right", "pre": "left"}


@dataclass(frozen=True)
class TorchRows(Rows):
    """A Rows plus `real`: how many real rows head the batch before its filler rows (`last_batch = "pad"`, weight
    0, at the end), None when every row is real (core.Flow.real)."""

    real: int | None = None


def _ids_and_weights(batch: Batch | list[int]) -> tuple[np.ndarray, np.ndarray]:
    """A plan `Batch` (ids and weights as planned) or a list of row indices (all real, weight 1)."""
    if isinstance(batch, Batch):
        return np.asarray(batch.ids), np.asarray(batch.weights, dtype=np.float64)
    ids = np.asarray(batch, dtype=np.int64)
    return ids, np.ones(ids.shape[0])


def real_rows(weights: np.ndarray) -> int | None:
    """`TorchRows.real` of a batch with plan weights `weights` (1 real, 0 filler; common.batching puts the filler
    rows after the real ones)."""
    real = int(np.count_nonzero(weights))
    if not weights[:real].all():
        raise RuntimeError(f"torch: a batch's filler rows (weight 0) must follow its real rows, got {weights}")
    return None if real == weights.shape[0] else real


def step_reals(weights: np.ndarray, starts: np.ndarray) -> list[int | None]:
    """`real_rows` of each step of an epoch's flat slot weights, step k being slots [starts[k], starts[k + 1]) (the
    last to the end): the real rows counted per step at once, the order of the filler checked where there is some."""
    counts = np.add.reduceat((weights != 0).astype(np.int64), starts)
    stops = np.append(starts[1:], weights.shape[0])
    return [
        None if n == stop - start else real_rows(weights[start:stop])
        for n, start, stop in zip(counts.tolist(), starts.tolist(), stops.tolist(), strict=True)
    ]


@dataclass(frozen=True)
class EpochRows:
    """Exact-mode training rows of one epoch on the device (module docstring): the plan's flat slots (host `ids`),
    x[ids], y[ids] and their weights, gathered once; step k is slots [start, stop) = bounds[k] with `reals[k]`."""

    ids: np.ndarray
    x: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor
    bounds: list[tuple[int, int]]
    reals: list[int | None]

    def step(self, k: int) -> TorchRows:
        """Step k's batch: views of the epoch's tensors."""
        start, stop = self.bounds[k]
        return TorchRows(
            self.ids[start:stop], self.x[start:stop], self.y[start:stop], self.weights[start:stop], real=self.reals[k]
        )


class PlanStep(NamedTuple):
    """What `PlanStepSampler` yields for one step: the epoch's placed rows and the step's number in it."""

    rows: EpochRows
    step: int


class RowsDataset(Dataset):
    """Map-style dataset over (x, y) feature or image tensors; batches are fetched whole by `__getitems__`."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int):
        return self.x[index], self.y[index]

    def epoch_rows(self, plan: BatchPlan, epoch: int) -> EpochRows:
        """Epoch `epoch` of `plan` placed: its slots as one ids tensor on the device, one gather of x and of y
        (`index_select` along the rows), the weights copied once, every step's `real` counted on the host."""
        ids, weights = plan.slots(epoch)
        index = torch.as_tensor(ids, dtype=torch.long, device=self.x.device)
        starts = np.arange(0, ids.shape[0], plan.batch_size)
        w = torch.as_tensor(weights, dtype=self.x.dtype, device=self.x.device)
        bounds = list(zip(starts.tolist(), [*starts[1:].tolist(), ids.shape[0]], strict=True))
        x, y = self.x.index_select(0, index), self.y.index_select(0, index)  # faster than x[index] on rows
        return EpochRows(ids, x, y, w, bounds, step_reals(weights, starts))

    def __getitems__(self, batch: PlanStep | Batch | list[int]) -> TorchRows:
        if isinstance(batch, PlanStep):
            return batch.rows.step(batch.step)
        ids, weights = _ids_and_weights(batch)
        index = torch.as_tensor(ids, dtype=torch.long, device=self.x.device)
        w = torch.as_tensor(weights, dtype=self.x.dtype, device=self.x.device)
        return TorchRows(ids, self.x[index], self.y[index], w, real=real_rows(weights))


class TokenRow(NamedTuple):
    """One token dataset element: a raw sequence as stored (no padding, no truncation)."""

    id: int
    tokens: torch.Tensor  # (n_i,) int64
    label: int
    weight: float


class TokenRowsDataset(Dataset):
    """Map-style dataset over raw token rows (storage x (N, Lmax) post-padded with 0, raw lengths n_i)."""

    def __init__(self, x: np.ndarray, lengths: np.ndarray, y: np.ndarray):
        storage = torch.as_tensor(np.asarray(x, dtype=np.int64))
        self.rows = [storage[i, : int(n)] for i, n in enumerate(np.asarray(lengths))]  # views, no copies
        self.y = np.asarray(y, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> TokenRow:
        return TokenRow(int(index), self.rows[index], int(self.y[index]), 1.0)

    def __getitems__(self, batch: Batch | list[int]) -> list[TokenRow]:
        ids, weights = _ids_and_weights(batch)
        return [TokenRow(int(i), self.rows[i], int(self.y[i]), float(w)) for i, w in zip(ids, weights, strict=True)]


class PadCollate:
    """The collate_fn of token rows (module docstring). `bucketed`: pad to the bound of the batch's bucket
    (training batches of a bucketed plan); evaluation batches mix buckets and are padded to their longest kept row."""

    def __init__(self, pad: str, truncate: str, max_len: int, buckets, loss_norm: str, dtype, device, bucketed: bool):
        if pad not in TORCH_SIDE or truncate not in ("post", "pre"):
            raise ValueError(f"torch sequences: pad and truncate must be post or pre, got {pad!r}, {truncate!r}")
        self.pad, self.truncate, self.max_len = pad, truncate, max_len
        self.buckets = tuple(buckets)
        self.cap = length_cap(max_len, self.buckets)
        self.loss_norm, self.dtype, self.device = loss_norm, dtype, device
        self.bucketed = bucketed and bool(self.buckets)

    @classmethod
    def from_spec(cls, spec: Spec, dtype, device, train: bool) -> PadCollate:
        """The collate of a spec's `sequence` table on torch's resolved sides: `train` for training batches (the
        spec's loss_norm, padded to the bucket bound), else evaluation batches (per-row weights, no bucketing)."""
        seq = spec.sequence
        pad, truncate = resolve_sides(spec, "torch")
        return cls(
            pad,
            truncate,
            seq.max_len,
            seq.buckets,
            seq.loss_norm if train else "per_sequence",
            dtype,
            device,
            bucketed=train,
        )

    def _truncated(self, seq: torch.Tensor) -> torch.Tensor:
        if not self.cap or seq.shape[0] <= self.cap:
            return seq
        return seq[: self.cap] if self.truncate == "post" else seq[seq.shape[0] - self.cap :]

    def __call__(self, rows: list[TokenRow]) -> TorchRows:
        kept = [self._truncated(r.tokens) for r in rows]
        padded = pad_sequence(kept, batch_first=True, padding_value=PAD, padding_side=TORCH_SIDE[self.pad])
        target = padded_length(np.array([r.tokens.shape[0] for r in rows]), self.max_len, self.buckets, self.bucketed)
        if target > padded.shape[1]:
            extra = target - padded.shape[1]
            padded = F.pad(padded, (0, extra) if self.pad == "post" else (extra, 0), value=PAD)
        lengths = torch.tensor([k.shape[0] for k in kept], dtype=torch.long)
        planned = np.array([r.weight for r in rows], dtype=np.float64)
        m = loss_weights(planned, lengths.numpy(), self.loss_norm)
        return TorchRows(
            ids=np.array([r.id for r in rows], dtype=np.int64),
            x=padded.to(self.device),
            y=torch.tensor([r.label for r in rows], dtype=torch.long, device=self.device),
            weights=torch.as_tensor(m, dtype=self.dtype, device=self.device),
            lengths=lengths,
            real=real_rows(planned),
        )


class PlanBatchSampler(Sampler):
    """Yields `plan.batches(epoch)`; call `set_epoch` before iterating (as with DistributedSampler)."""

    def __init__(self, plan: BatchPlan):
        self.plan, self.epoch = plan, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(self.plan.batches(self.epoch))

    def __len__(self) -> int:
        return self.plan.steps_per_epoch


class PlanStepSampler(PlanBatchSampler):
    """Exact mode on features and images: at iter() the epoch's `EpochRows` (one gather), then a `PlanStep` per plan
    batch, in the plan's order (`plan.batches(epoch)`'s rows and weights)."""

    def __init__(self, plan: BatchPlan, dataset: RowsDataset):
        super().__init__(plan)
        self.dataset = dataset

    def __iter__(self):
        rows = self.dataset.epoch_rows(self.plan, self.epoch)
        return (PlanStep(rows, k) for k in range(len(rows.bounds)))


class PartBatchSampler(PlanBatchSampler):
    """Split steps: one replica's parts of every plan batch, `layout.split(batch)[replica][k]` for k = 0..K−1."""

    def __init__(self, plan: BatchPlan, layout: Layout, replica: int):
        super().__init__(plan)
        self.layout, self.replica = layout, replica

    def __iter__(self):
        for batch in self.plan.batches(self.epoch):
            yield from self.layout.split(batch)[self.replica]

    def __len__(self) -> int:
        return self.plan.steps_per_epoch * self.layout.accumulate


def already_collated(batch: TorchRows) -> TorchRows:
    """Feature datasets' `__getitems__` returns the finished batch, so collation is the identity."""
    return batch


def make_loader(
    dataset: Dataset,
    plan: BatchPlan,
    seed: int,
    collate: Callable = already_collated,
    layout: Layout | None = None,
    replica: int = 0,
) -> DataLoader:
    """Exact mode: DataLoader walking `plan` (a split `layout`: the parts of `replica`; feature and image rows: the
    placed epoch's steps), with its own Generator (the global torch RNG stays untouched)."""
    if layout is not None and layout.is_split:
        sampler = PartBatchSampler(plan, layout, replica)
    elif isinstance(dataset, RowsDataset):
        sampler = PlanStepSampler(plan, dataset)
    else:
        sampler = PlanBatchSampler(plan)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, generator=torch.Generator().manual_seed(seed))


def make_native_loader(dataset: Dataset, spec: Spec, collate: Callable = already_collated) -> DataLoader:
    """Native mode: torch's own sampler and batching, shuffled by a Generator seeded from the spec seed."""
    b = spec.batching
    return DataLoader(
        dataset,
        batch_size=b.batch_size,
        shuffle=b.shuffle,
        drop_last=b.last_batch == "drop",
        collate_fn=collate,
        generator=torch.Generator().manual_seed(spec.seed),
    )


def make_sharded_loader(
    dataset: Dataset, spec: Spec, layout: Layout, replica: int, collate: Callable = already_collated
) -> DataLoader:
    """Native split steps: rank `replica`'s DistributedSampler and its DataLoader of c rows (module docstring)."""
    b = spec.batching
    drop = b.last_batch == "drop"
    sampler = DistributedSampler(
        dataset, num_replicas=layout.replicas, rank=replica, shuffle=b.shuffle, seed=spec.seed, drop_last=drop
    )
    return DataLoader(
        dataset,
        batch_size=layout.shard,
        sampler=sampler,
        drop_last=drop,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(spec.seed),
    )


@dataclass
class Pipeline:
    """An adapter's pipeline: the training loader, the datasets of both splits and their evaluation collate.

    `weighted`: the loss weighs rows, Σ w·ℓ / max(Σ w, 1); False in native mode where every row weighs 1 (the
    plain mean `F.cross_entropy(logits, y)` a user writes). `static_shapes`: every batch has the plan's shape
    (features); token batches vary in T.
    """

    loader: DataLoader
    datasets: dict[str, Dataset]
    eval_collate: Callable
    weighted: bool
    static_shapes: bool

    def epoch(self, epoch: int):
        """The epoch's batches as TorchRows (the plan's, or native mode's reshuffle: `set_epoch` on a
        DistributedSampler, whose order is otherwise the same every epoch)."""
        if isinstance(self.loader.batch_sampler, PlanBatchSampler):
            self.loader.batch_sampler.set_epoch(epoch)
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(epoch)
        return iter(self.loader)

    def eval_rows(self, split: str, batch: Batch) -> TorchRows:
        """An evaluation batch of `split` (weighted per row by the plan's weights, for the metrics' sums)."""
        return self.eval_collate(self.datasets[split].__getitems__(batch))


def pipeline(
    spec: Spec, data: Data, plan: BatchPlan, dtype: torch.dtype, device: torch.device, replica: int = 0
) -> Pipeline:
    """The pipeline of `data`: token rows with the padding collate_fn, or feature / image rows on the device; under
    split steps the training loader yields the parts of `replica` (native mode: its DistributedSampler's)."""
    layout = Layout.from_spec(spec)
    sharded = layout.is_split and on(spec, "split_step")
    native = sharded or (on(spec, "order") and not layout.is_split)  # torch's own order and batches (docstring)
    if data.is_sequence:
        datasets = {
            split: TokenRowsDataset(getattr(data, f"{split}_x"), data.lengths(split), getattr(data, f"{split}_y"))
            for split in ("train", "test")
        }
        collate = PadCollate.from_spec(spec, dtype, device, train=True)
        eval_collate = PadCollate.from_spec(spec, dtype, device, train=False)
        weighted = not native or spec.sequence.loss_norm == "per_token"
    else:
        datasets = {
            split: RowsDataset(
                torch.as_tensor(getattr(data, f"{split}_x"), dtype=dtype, device=device),
                torch.as_tensor(getattr(data, f"{split}_y"), dtype=torch.long, device=device),
            )
            for split in ("train", "test")
        }
        collate = eval_collate = already_collated
        weighted = not native
    if not native:
        loader = make_loader(datasets["train"], plan, spec.seed, collate, layout, replica)
    elif sharded:
        loader = make_sharded_loader(datasets["train"], spec, layout, replica, collate)
    else:
        loader = make_native_loader(datasets["train"], spec, collate)
    return Pipeline(loader, datasets, eval_collate, weighted, static_shapes=not data.is_sequence)


class PlanOrderSampler(Sampler):
    """Single row indices in the plan's order for the current epoch (`set_epoch`), filler included: cut into
    chunks of the plan's batch size they are the plan's batches."""

    def __init__(self, plan: BatchPlan):
        self.plan, self.epoch = plan, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(self.plan.slots(self.epoch)[0].tolist())

    def __len__(self) -> int:
        return self.plan.slots(self.epoch)[0].shape[0]


def make_per_row_loader(x: torch.Tensor, y: torch.Tensor, plan: BatchPlan) -> DataLoader:
    """Loader "naive": TensorDataset + DataLoader(batch_size, sampler) with per-row fetches and default collate."""
    return DataLoader(
        TensorDataset(x, y),
        batch_size=plan.batch_size,
        sampler=PlanOrderSampler(plan),
        generator=torch.Generator().manual_seed(plan.seed),
    )
