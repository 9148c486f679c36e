"""The PyTorch adapter for common.driver: DataLoader → nn.Module → torch.optim (see data, model, optim).

Device: "auto" (make_adapter) = CUDA when available, else CPU; bench.py may ask for "cpu" or "gpu" ("gpu" without
CUDA raises). On CUDA TF32 is switched off for matmul and cuDNN so float32 stays IEEE single.
Execution (spec["execution"]): the step runs eager, torch.compile-d or as a CUDA graph (execution.py); fused
raises on a device other than CUDA. Each reproduces the eager run in exact mode.
Exact mode: the plan's batches, canonical parameters loaded, shared masks, torch.optim with converted settings.
Native mode (common.native, torch column): what a user porting by hand writes. `torch.manual_seed(spec seed)` once,
then the model is built (nn.Linear's default init draws from the global RNG) and `nn.Dropout` keeps drawing from
the same global RNG; a `DataLoader(shuffle=…, drop_last=…)` with its own Generator, which does not disturb it; the
mean cross-entropy `F.cross_entropy(logits, y)`; torch.optim with the spec's numbers as written (optim.py).

Sequence specs (`common.spec.is_sequence`: model.kind seq_pool | rnn) run the same way with sequence_data's
DataLoader (raw token rows, padded by a `pad_sequence` collate_fn to the plan's length, sides from
common.padding.resolve_sides: "native" is post/post) and sequence_model's SeqPool / RNN. A batch's loss is
Σ m_i·ℓ_i / max(Σ m_i, 1) with m the collate's loss weights (common.padding.loss_weights). Execution modes: eager
and compiled; fused is refused by spec validation for sequences. compiled is torch.compile of the same step with
automatic dynamic shapes (`dynamic=None`: T varies from batch to batch, so after the first shape change Dynamo
recompiles once with symbolic sizes instead of once per (B, T), which would exhaust the recompile limit).
`pack_padded_sequence` is on Dynamo's skip list, so a masked rnn graph-breaks there: the packed nn.RNN call runs
eagerly between the compiled embedding and head graphs (same results, verified against the oracle).
Native mode: torch's own init (nn.Embedding N(0, 1), nn.RNN and nn.Linear U(±1/√fan_in), drawn after
`torch.manual_seed(seed)`), nn.RNN with BOTH biases trainable (the user's model: its effective bias b_ih + b_hh
moves with twice the gradient), nn.Dropout, the DataLoader's shuffle (no bucketing sampler: with buckets each batch
is padded to the bound of its longest row's bucket), and the mean cross-entropy (`per_token`: weighted by the kept
lengths).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from common.padding import resolve_sides
from common.spec import execution_of, is_sequence
from common.batching import Batch, BatchPlan
from common.datasets import Dataset
from common.dropout import shared_masks
from common.initializers import layer_sizes

from backends.torch_backend.data import RowsDataset, TorchBatch, make_loader, make_native_loader
from backends.torch_backend.execution import check_execution, make_step
from backends.torch_backend.model import MLP
from backends.torch_backend.optim import NativeTorchOptimizer, TorchOptimizer
from backends.torch_backend.sequence_data import (PadCollate, SequenceBatch, TokenRowsDataset,
                                                  make_native_sequence_loader, make_sequence_loader)
from backends.torch_backend.sequence_model import RNN, SeqPool

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TorchAdapter:
    name = "torch"

    def __init__(self, spec: dict, device: str = "auto"):
        self.spec = spec
        self.dev = resolve_device(device)
        self.execution = execution_of(spec, "torch")
        check_execution(self.execution, self.dev)
        if self.dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    def device(self) -> str:
        if self.dev.type == "cuda":
            return f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()}, tf32 off)"
        return "cpu"

    def prepare(self, spec: dict, data: Dataset, plan: BatchPlan, params: dict[str, np.ndarray] | None) -> None:
        dtype = DTYPES[spec["dtype"]]
        self.dtype = dtype
        self.native = spec["mode"] == "native"
        self.sequence = is_sequence(spec)
        if self.sequence:
            return self._prepare_sequences(spec, data, plan, params)
        tensors = {split: (torch.as_tensor(x, dtype=dtype, device=self.dev),
                           torch.as_tensor(y, dtype=torch.long, device=self.dev))
                   for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y))}
        self.datasets = {split: RowsDataset(*xy) for split, xy in tensors.items()}
        sizes = layer_sizes(data.n_features, spec["model"]["hidden"], data.n_classes)
        activation = spec["model"]["activation"]
        # CUDA graphs need Adam's step count on the device; torch.compile on CUDA would set that itself, but only
        # for state it creates, and TorchOptimizer creates it up front (its float64 step count)
        capturable = self.execution == "fused" or (self.execution == "compiled" and self.dev.type == "cuda")
        self.plan = plan
        if self.native:
            self.loader = make_native_loader(self.datasets["train"], spec)
            torch.manual_seed(spec["seed"])  # nn.Linear's default init, then nn.Dropout, draw from the global RNG
            self.model = MLP(sizes, activation, spec["regularization"]["dropout"], dtype, "cpu").to(self.dev)
            self.optimizer = NativeTorchOptimizer(spec, self.model, capturable=capturable)
        else:
            self.loader = make_loader(self.datasets["train"], plan, spec["seed"])
            self.model = MLP(sizes, activation, 0.0, dtype, self.dev)
            self.model.load_canonical(params)
            torch.manual_seed(spec["seed"])
            self.optimizer = TorchOptimizer(spec, self.model, capturable=capturable)
        self.run_step = make_step(self.execution, self._loss, self.optimizer, list(self.model.parameters()))

    def _prepare_sequences(self, spec: dict, data: Dataset, plan: BatchPlan, params) -> None:
        """The sequence pipeline and model (module docstring); `x` of a step is (tokens, lengths)."""
        seq, model = spec["sequence"], spec["model"]
        pad, truncate = resolve_sides(spec, self.name)
        self.datasets = {split: TokenRowsDataset(getattr(data, f"{split}_x"), data.lengths(split),
                                                 getattr(data, f"{split}_y")) for split in ("train", "test")}

        def collate(bucketed: bool) -> PadCollate:
            return PadCollate(pad, truncate, seq["max_len"], seq["buckets"], seq["loss_norm"], self.dtype, self.dev,
                              bucketed)

        self.eval_collate = collate(False)
        self.plan = plan
        capturable = self.execution == "compiled" and self.dev.type == "cuda"
        dropout = spec["regularization"]["dropout"] if self.native else 0.0
        build_on = "cpu" if self.native else self.dev
        if self.native:
            self.loader = make_native_sequence_loader(self.datasets["train"], spec, collate(True))
            torch.manual_seed(spec["seed"])  # the default inits, then nn.Dropout, draw from the global RNG
        else:
            self.loader = make_sequence_loader(self.datasets["train"], plan, spec["seed"], collate(True))
        if model["kind"] == "seq_pool":
            sizes = layer_sizes(model["embed_dim"], model["hidden"], data.n_classes)
            net = SeqPool(data.vocab, model["embed_dim"], sizes, model["activation"], dropout, seq["mask"], pad,
                          self.dtype, build_on)
        else:
            net = RNN(data.vocab, model["embed_dim"], model["hidden"][0], data.n_classes, dropout, seq["mask"], pad,
                      self.dtype, build_on, freeze_bias_hh=not self.native)
        self.model = net.to(self.dev)
        if self.native:
            self.optimizer = NativeTorchOptimizer(spec, self.model, capturable=capturable)
        else:
            self.model.load_canonical(params)
            torch.manual_seed(spec["seed"])
            self.optimizer = TorchOptimizer(spec, self.model, capturable=capturable)
        self.run_step = make_step(self.execution, self._loss, self.optimizer,
                                  [p for p in self.model.parameters() if p.requires_grad], dynamic=None)

    def _loss(self, x, y, w, masks) -> tuple[torch.Tensor, torch.Tensor]:
        """(the recorded cross-entropy, it plus the optimizer's penalty terms): what backward() differentiates.

        Sequences: `w` are the loss weights m, the loss Σ m·ℓ / max(Σ m, 1) (NaN-free for an all-padded batch)."""
        if self.sequence and not (self.native and self.spec["sequence"]["loss_norm"] == "per_sequence"):
            rows = F.cross_entropy(self.model(x, masks), y, reduction="none")
            loss = (rows * w).sum() / w.sum().clamp_min(1.0)
        elif self.native:
            loss = F.cross_entropy(self.model(x), y)
        else:
            rows = F.cross_entropy(self.model(x, masks), y, reduction="none")
            loss = (rows * w).sum() / w.sum()
        return loss, loss + self.optimizer.penalty()

    def epoch_batches(self, epoch: int):
        if self.native:
            return iter(self.loader)  # RandomSampler reshuffles at every iter()
        self.loader.batch_sampler.set_epoch(epoch)
        return iter(self.loader)

    def batch_ids(self, batch: TorchBatch | SequenceBatch) -> np.ndarray:
        return batch.ids  # native batches hold real rows only (no pad filler)

    def batch_length(self, batch: TorchBatch | SequenceBatch) -> int:
        """The time dimension of the delivered token tensor; 0 for feature batches."""
        return int(batch.tokens.shape[1]) if isinstance(batch, SequenceBatch) else 0

    @staticmethod
    def step_inputs(batch: TorchBatch | SequenceBatch) -> tuple:
        """(x, y, w) of a step: (tokens, lengths), labels and loss weights m for sequences."""
        if isinstance(batch, SequenceBatch):
            return (batch.tokens, batch.lengths), batch.y, batch.loss_weights
        return batch.x, batch.y, batch.weights

    def train_step(self, batch: TorchBatch | SequenceBatch, step: int, masks: list[np.ndarray] | None) -> float:
        shared = None if masks is None else [torch.as_tensor(m, device=self.dev) for m in masks]
        return self.advance(*self.step_inputs(batch), shared).item()

    # ---- the execution modes, also driven directly by bench.py ------------------------------------------------

    def advance(self, x, y, w, masks: list[torch.Tensor] | None) -> torch.Tensor:
        """One update on a device batch in this execution mode; the loss tensor, not waited on."""
        self.model.train()
        return self.run_step(x, y, w, masks)

    def step_masks(self, step: int, rows: int) -> list[torch.Tensor] | None:
        """Exact mode: the shared masks of global step `step` (common.dropout) on the device; None without dropout
        and in native mode (nn.Dropout)."""
        rate = 0.0 if self.native else self.spec["regularization"]["dropout"]
        masks = shared_masks(self.spec["seed"], step, rate, rows, self.spec["model"]["hidden"], self.spec["dtype"])
        return None if masks is None else [torch.as_tensor(m, device=self.dev) for m in masks]

    def run_epoch(self, epoch: int, first_step: int) -> torch.Tensor:
        """One training epoch through the DataLoader (global steps from `first_step`), no per-step host sync;
        returns the last step's loss."""
        loss = None
        for t, batch in enumerate(self.epoch_batches(epoch), start=first_step):
            x, y, w = self.step_inputs(batch)
            loss = self.advance(x, y, w, self.step_masks(t, y.shape[0]))
        return loss

    @torch.no_grad()
    def evaluate(self, split: str, batches: list[Batch]) -> list[tuple[float, float, int]]:
        self.model.eval()
        if self.sequence:
            return self._evaluate_sequences(split, batches)
        out = []
        for b in map(self.datasets[split].__getitems__, batches):
            logits = self.model(b.x)
            rows = F.cross_entropy(logits, b.y, reduction="none")
            correct = (logits.argmax(dim=1) == b.y).to(b.weights.dtype)
            out.append(((rows * b.weights).sum().item(), (correct * b.weights).sum().item(),
                        int(torch.count_nonzero(b.weights))))
        return out

    def _evaluate_sequences(self, split: str, batches: list[Batch]) -> list[tuple[float, float, int]]:
        out = []
        for planned in batches:
            b = self.eval_collate(self.datasets[split].__getitems__(planned))
            if b.tokens.shape[1] != planned.length:
                raise RuntimeError(f"torch: evaluation batch of {split} rows {planned.ids.tolist()} padded to "
                                   f"{b.tokens.shape[1]}, the plan says {planned.length}")
            logits = self.model((b.tokens, b.lengths))
            rows = F.cross_entropy(logits, b.y, reduction="none")
            correct = (logits.argmax(dim=1) == b.y).to(b.weights.dtype)
            out.append(((rows * b.weights).sum().item(), (correct * b.weights).sum().item(),
                        int(torch.count_nonzero(b.weights))))
        return out

    def parameters(self) -> dict[str, np.ndarray]:
        return self.model.canonical()


def resolve_device(device: str) -> torch.device:
    """"auto" → CUDA when available, else CPU; "cpu"; "gpu" (or "cuda") → CUDA, an error when torch has none."""
    if device not in ("auto", "cpu", "gpu", "cuda"):
        raise ValueError(f"torch: unknown device '{device}' (cpu, gpu or auto)")
    if device in ("gpu", "cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"torch: device '{device}' requested but torch.cuda.is_available() is False "
                           f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
    return torch.device("cpu" if device == "cpu" or not torch.cuda.is_available() else "cuda")


def make_adapter(spec: dict, device: str = "auto") -> TorchAdapter:
    return TorchAdapter(spec, device)
