"""The native PyTorch pipeline for token sequences: a map-style Dataset of raw token rows and a `collate_fn` that
pads them with `torch.nn.utils.rnn.pad_sequence` (DESIGN §5, "Padding and masks"; common.padding is the semantics).

- `TokenRowsDataset.__getitems__(batch)` receives a whole batch from the sampler, a plan `common.batching.Batch`
  (exact mode, via data.PlanBatchSampler) or a plain list of row indices (DataLoader's own BatchSampler), and
  returns one `TokenRow` per row: its id, its RAW 1-D token tensor (n_i tokens, unpadded, untruncated), its label
  and its plan weight. Nothing is padded here.
- `PadCollate` (the DataLoader's `collate_fn`) turns those rows into a `SequenceBatch`, natively:
  1. truncation by slicing each row to the cap (`max_len`, else the last bucket bound): `seq[:cap]` (truncate
     "post", keep the first tokens) or `seq[-cap:]` ("pre", keep the last);
  2. `pad_sequence(rows, batch_first=True, padding_value=0, padding_side="right" | "left")` (post | pre) to the
     longest kept row;
  3. out to the batch's padded length T where T exceeds that longest row: `F.pad` on the pad side with 0. T is
     `max_len` when set; for bucketed training batches the bound of the bucket the batch's rows fall in (every row
     of a bucketed plan batch is in one bucket, so the bucket of the longest row); otherwise the longest kept row
     (common.padding.padded_length). The driver checks T (`batch_length`) against the plan in exact mode.
  The kept lengths L_i are the truncated rows' lengths; the loss weights are common.padding.loss_weights(w, L,
  loss_norm), i.e. w_i or w_i·L_i.
- `make_sequence_loader`: DataLoader(batch_sampler=PlanBatchSampler(plan), collate_fn=PadCollate(...)) with its own
  Generator (the global torch RNG stays untouched), as data.make_loader does for feature rows.

Token rows live on the host (the padding is host work, as in a user's collate_fn); the padded batch is moved to the
adapter's device once. `lengths` stay on the host as well: `pack_padded_sequence` wants CPU lengths.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from common.batching import Batch, BatchPlan
from common.padding import PAD, length_cap, loss_weights, padded_length

from backends.torch_backend.data import PlanBatchSampler

TORCH_SIDE = {"post": "right", "pre": "left"}


class TokenRow(NamedTuple):
    """One dataset element: a raw sequence as stored (no padding, no truncation)."""

    id: int
    tokens: torch.Tensor  # (n_i,) int64
    label: int
    weight: float


class SequenceBatch(NamedTuple):
    """One padded batch as the pipeline delivers it."""

    ids: np.ndarray            # row ids, filler included
    tokens: torch.Tensor       # (B, T) int64, padded with 0 on the pad side
    lengths: torch.Tensor      # (B,) int64 kept lengths L_i, on the host (pack_padded_sequence wants CPU lengths)
    y: torch.Tensor            # (B,) int64 labels
    weights: torch.Tensor      # (B,) plan weights w_i (1 real, 0 filler)
    loss_weights: torch.Tensor  # (B,) m_i = w_i or w_i·L_i (common.padding.loss_weights)


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
        """A plan `Batch` (ids and weights as planned) or a list of row indices (all real, weight 1)."""
        if isinstance(batch, Batch):
            ids, weights = np.asarray(batch.ids), np.asarray(batch.weights, dtype=np.float64)
        else:
            ids = np.asarray(batch, dtype=np.int64)
            weights = np.ones(ids.shape[0])
        return [TokenRow(int(i), self.rows[i], int(self.y[i]), float(w)) for i, w in zip(ids, weights)]


class PadCollate:
    """The collate_fn: truncate by slicing, `pad_sequence`, pad out to the batch's T (module docstring).

    `bucketed`: pad to the bound of the batch's bucket (training batches of a bucketed plan); evaluation batches
    mix buckets and are padded to their longest kept row.
    """

    def __init__(self, pad: str, truncate: str, max_len: int, buckets, loss_norm: str, dtype, device,
                 bucketed: bool):
        if pad not in TORCH_SIDE or truncate not in ("post", "pre"):
            raise ValueError(f"torch sequences: pad and truncate must be post or pre, got {pad!r}, {truncate!r}")
        self.pad, self.truncate, self.max_len = pad, truncate, max_len
        self.buckets = tuple(buckets)
        self.cap = length_cap(max_len, self.buckets)
        self.loss_norm, self.dtype, self.device = loss_norm, dtype, device
        self.bucketed = bucketed and bool(self.buckets)

    def _truncated(self, seq: torch.Tensor) -> torch.Tensor:
        if not self.cap or seq.shape[0] <= self.cap:
            return seq
        return seq[: self.cap] if self.truncate == "post" else seq[seq.shape[0] - self.cap:]

    def __call__(self, rows: list[TokenRow]) -> SequenceBatch:
        kept = [self._truncated(r.tokens) for r in rows]
        padded = pad_sequence(kept, batch_first=True, padding_value=PAD, padding_side=TORCH_SIDE[self.pad])
        target = padded_length(np.array([r.tokens.shape[0] for r in rows]), self.max_len, self.buckets,
                               self.bucketed)
        if target > padded.shape[1]:
            extra = target - padded.shape[1]
            padded = F.pad(padded, (0, extra) if self.pad == "post" else (extra, 0), value=PAD)
        lengths = torch.tensor([k.shape[0] for k in kept], dtype=torch.long)
        w = np.array([r.weight for r in rows], dtype=np.float64)
        m = loss_weights(w, lengths.numpy(), self.loss_norm)
        return SequenceBatch(
            ids=np.array([r.id for r in rows], dtype=np.int64),
            tokens=padded.to(self.device),
            lengths=lengths,
            y=torch.tensor([r.label for r in rows], dtype=torch.long, device=self.device),
            weights=torch.as_tensor(w, dtype=self.dtype, device=self.device),
            loss_weights=torch.as_tensor(m, dtype=self.dtype, device=self.device))


def make_sequence_loader(dataset: TokenRowsDataset, plan: BatchPlan, seed: int, collate: PadCollate) -> DataLoader:
    """Exact mode: DataLoader walking `plan` with the padding collate_fn and its own Generator."""
    return DataLoader(dataset, batch_sampler=PlanBatchSampler(plan), collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed))


def make_native_sequence_loader(dataset: TokenRowsDataset, spec: dict, collate: PadCollate) -> DataLoader:
    """Native mode: torch's own sampler and batching (shuffled by a Generator seeded from the spec seed)."""
    b = spec["batching"]
    return DataLoader(dataset, batch_size=b["batch_size"], shuffle=b["shuffle"], drop_last=b["last_batch"] == "drop",
                      collate_fn=collate, generator=torch.Generator().manual_seed(spec["seed"]))
