"""The native PyTorch input pipeline: a Dataset with a batched `__getitems__`, fed by a batch_sampler (DESIGN §5).

- `RowsDataset.__getitems__(batch)` receives a whole `common.batching.Batch` from the sampler and indexes the x / y
  tensors with its id array in one vectorised gather (no per-row `__getitem__` + collate).
- `PlanBatchSampler` yields the shared plan's batches for the current epoch (`set_epoch`), so the DataLoader walks
  exactly the rows, order and `pad` filler (weight 0) every other backend walks; torch's own `randperm` shuffle
  cannot be made equal to the others.
- The DataLoader draws a base seed from its `generator` at every `iter()`, even with no shuffling and no workers.
  Given the global generator it would shift every later native `nn.Dropout` mask, so it gets its own
  `torch.Generator` seeded from the spec seed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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

    def __getitems__(self, batch: Batch) -> TorchBatch:
        index = torch.as_tensor(batch.ids, dtype=torch.long, device=self.x.device)
        weights = torch.as_tensor(batch.weights, dtype=self.x.dtype, device=self.x.device)
        return TorchBatch(np.asarray(batch.ids), self.x[index], self.y[index], weights)


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
