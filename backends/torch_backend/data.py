"""The native PyTorch input pipeline: a Dataset with a batched `__getitems__`, fed by a batch_sampler (DESIGN §5).

- `RowsDataset.__getitems__(batch)` receives a whole batch from the sampler, either a `common.batching.Batch`
  (exact mode) or the plain list of row indices DataLoader's own BatchSampler yields (native mode), and indexes
  the x / y tensors with it in one vectorised gather (no per-row `__getitem__` + collate). The ids travel with the
  batch.
- Exact mode: `PlanBatchSampler` yields the shared plan's batches for the current epoch (`set_epoch`), so the
  DataLoader walks exactly the rows, order and `pad` filler (weight 0) every other backend walks; torch's own
  `randperm` shuffle cannot be made equal to the others.
- The DataLoader draws a base seed from its `generator` at every `iter()`, even with no shuffling and no workers.
  Given the global generator it would shift every later native `nn.Dropout` mask, so it gets its own
  `torch.Generator` seeded from the spec seed.
- Native mode (common.native, torch column): `make_native_loader` is what a user writes,
  `DataLoader(ds, batch_size=B, shuffle=…, drop_last=last_batch == "drop", generator=…)`. Its RandomSampler
  draws a fresh `randperm` from that generator at every `iter()`, so each epoch is reshuffled; "pad" has no torch
  idiom, so the ragged last batch is kept. Every row it delivers is real (weight 1).

Loaders timed alone by the throughput benchmark (bench.py), both walking the plan's rows:
- "fast":  the adapter's `make_loader` pipeline above; the split was put on the adapter's device once, so a batch is
           one on-device gather, only its ids and weights built on the host;
- "naive": `make_per_row_loader`, the textbook idiom: a `TensorDataset` over host tensors (per-row `__getitem__`),
           `DataLoader(batch_size=B, sampler=…)` with the default collate (`torch.stack` of B rows), each batch then
           moved with `.to(device)`. `PlanOrderSampler` yields the plan's flattened row order (filler included), so
           its batches hold the plan's rows.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from common.batching import Batch, BatchPlan


class TorchBatch(NamedTuple):
    """One batch as the pipeline delivers it: the row ids it holds (filler included) and its tensors."""

    ids: np.ndarray
    x: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor


class RowsDataset(Dataset):
    """Map-style dataset over (x, y) tensors; batches are fetched whole by `__getitems__`."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int):
        return self.x[index], self.y[index]

    def __getitems__(self, batch: Batch | list[int]) -> TorchBatch:
        """A plan `Batch` (ids and weights as planned) or a list of row indices (all real, weight 1)."""
        if isinstance(batch, Batch):
            ids, weights = np.asarray(batch.ids), batch.weights
        else:
            ids = np.asarray(batch, dtype=np.int64)
            weights = np.ones(ids.shape[0])
        index = torch.as_tensor(ids, dtype=torch.long, device=self.x.device)
        weights = torch.as_tensor(weights, dtype=self.x.dtype, device=self.x.device)
        return TorchBatch(ids, self.x[index], self.y[index], weights)


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


def _already_collated(batch: TorchBatch) -> TorchBatch:
    """`__getitems__` returns the finished batch, so collation is the identity."""
    return batch


def make_loader(dataset: RowsDataset, plan: BatchPlan, seed: int) -> DataLoader:
    """DataLoader over `dataset` walking `plan`, with its own Generator (the global torch RNG stays untouched)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_sampler=PlanBatchSampler(plan), collate_fn=_already_collated,
                      generator=generator)


def make_native_loader(dataset: RowsDataset, spec: dict) -> DataLoader:
    """Native mode: torch's own sampler and batching, shuffled by a Generator seeded from the spec seed."""
    b = spec["batching"]
    return DataLoader(dataset, batch_size=b["batch_size"], shuffle=b["shuffle"], drop_last=b["last_batch"] == "drop",
                      collate_fn=_already_collated, generator=torch.Generator().manual_seed(spec["seed"]))


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
    return DataLoader(TensorDataset(x, y), batch_size=plan.batch_size, sampler=PlanOrderSampler(plan),
                      generator=torch.Generator().manual_seed(plan.seed))
