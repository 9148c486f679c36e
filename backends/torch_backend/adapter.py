"""The PyTorch adapter for common.driver: DataLoader → the layer stack's nn.Module → torch.optim (docs/design.md,
"Architecture", "Native mode").

Device: "auto" = CUDA when available, else CPU; bench.py may ask for "cpu" or "gpu" ("gpu" without CUDA raises).
On CUDA TF32 is off for matmul and cuDNN, so float32 stays IEEE single (docs/design.md, "Precision").
Exact mode: the plan's batches, canonical parameters loaded, the shared dropout masks of each global step,
torch.optim with converted settings; under `last_batch = "pad"` BatchNorm's batch statistics are those of the real
rows (TorchRows.real, norm.py). The canonical state (BatchNorm's running statistics) is loaded and returned by
`parameters()` with the parameters, and never given to the optimizer. Native mode (common.native, torch column):
`torch.manual_seed(seed)`, then the model is built (the default inits, then nn.Dropout, draw from the global RNG),
torch's own DataLoader shuffle, the mean `F.cross_entropy(logits, y)` (per_token sequences: weighted by the kept
lengths), the spec's optimizer numbers as written, torch's own layer defaults (common.native.LAYER_DEFAULTS). A
step's loss stays on the device; an epoch's losses are fetched once, at its end.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from backends.torch_backend.data import Pipeline, TorchRows, pipeline
from backends.torch_backend.execution import check_execution, make_step
from backends.torch_backend.model import DTYPES, build, load_canonical, to_canonical, trainable
from backends.torch_backend.optim import NativeTorchOptimizer, TorchOptimizer
from common.batching import Batch, BatchPlan
from common.datasets import Dataset
from common.driver import EpochRun
from common.dropout import shared_masks
from common.layers import Layer
from common.spec import Spec, execution_of


class TorchAdapter:
    name = "torch"

    def __init__(self, spec: Spec, device: str = "auto"):
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

    def prepare(
        self,
        spec: Spec,
        data: Dataset,
        plan: BatchPlan,
        layers: tuple[Layer, ...],
        params: dict[str, np.ndarray] | None,
    ) -> None:
        self.spec, self.layers, self.native = spec, layers, params is None
        self.pipeline: Pipeline = pipeline(spec, data, plan, DTYPES[spec.dtype], self.dev)
        torch.manual_seed(spec.seed)  # native mode: the default inits, then nn.Dropout, draw from it
        self.model = build(layers, spec).to(self.dev)
        if params is not None:
            load_canonical(self.model, params)
        # Adam's step count on the device for CUDA graphs, and for torch.compile on CUDA (which would set it only
        # for the state it creates; TorchOptimizer creates it up front)
        capturable = self.execution == "fused" or (self.execution == "compiled" and self.dev.type == "cuda")
        self.optimizer = (NativeTorchOptimizer if self.native else TorchOptimizer)(spec, self.model, capturable)
        self.run_step = make_step(
            self.execution,
            self._loss,
            self.optimizer,
            [p for _, p in trainable(self.model)] + list(self.model.buffers()),
            self.pipeline.static_shapes,
        )

    def _loss(self, x, y, w, lengths, masks, real) -> tuple[torch.Tensor, torch.Tensor]:
        """(the recorded cross-entropy, it plus the optimizer's penalty terms): what backward() differentiates."""
        logits = self.model(x, lengths, masks, real)
        if self.pipeline.weighted:
            loss = (F.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum().clamp_min(1.0)
        else:
            loss = F.cross_entropy(logits, y)
        return loss, loss + self.optimizer.penalty()

    def _masks(self, step: int, rows: TorchRows) -> list[torch.Tensor] | None:
        """Exact mode: the shared masks of global step `step` on the device (None without dropout); native mode
        None (nn.Dropout draws its own)."""
        masks = (
            None if self.native else shared_masks(self.spec.seed, step, self.layers, rows.ids.shape[0], self.spec.dtype)
        )
        return None if masks is None else [torch.as_tensor(m, device=self.dev) for m in masks]

    def _advance(self, rows: TorchRows, masks: list[torch.Tensor] | None) -> torch.Tensor:
        """One update in this execution mode; the loss tensor, not waited on."""
        self.model.train()
        return self.run_step(rows.x, rows.y, rows.weights, rows.lengths, masks, rows.real)

    def run_epoch(self, epoch: int, first_step: int) -> EpochRun:
        ids, lengths, losses = [], [], []
        for step, rows in enumerate(self.pipeline.epoch(epoch), start=first_step):
            losses.append(self._advance(rows, self._masks(step, rows)))
            ids.append(rows.ids)  # native batches hold real rows only (no pad filler)
            lengths.append(rows.length)
        return EpochRun(ids, lengths, torch.stack(losses).cpu().numpy())

    @torch.no_grad()
    def evaluate(self, split: str, batches: list[Batch]) -> list[tuple[float, float, int]]:
        self.model.eval()
        out = []
        for planned in batches:
            rows = self.pipeline.eval_rows(split, planned)
            if rows.length != planned.length:
                raise RuntimeError(
                    f"torch: evaluation batch of {split} rows {planned.ids.tolist()} padded to "
                    f"{rows.length}, the plan says {planned.length}"
                )
            logits = self.model(rows.x, rows.lengths)
            losses = F.cross_entropy(logits, rows.y, reduction="none")
            correct = (logits.argmax(dim=1) == rows.y).to(rows.weights.dtype)
            out.append(
                (
                    (losses * rows.weights).sum().item(),
                    (correct * rows.weights).sum().item(),
                    int(torch.count_nonzero(rows.weights)),
                )
            )
        return out

    def parameters(self) -> dict[str, np.ndarray]:
        return to_canonical(self.model)


def resolve_device(device: str) -> torch.device:
    """ "auto" → CUDA when available, else CPU; "cpu"; "gpu" (or "cuda") → CUDA, an error when torch has none."""
    if device not in ("auto", "cpu", "gpu", "cuda"):
        raise ValueError(f"torch: unknown device '{device}' (cpu, gpu or auto)")
    if device in ("gpu", "cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"torch: device '{device}' requested but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda})"
        )
    return torch.device("cpu" if device == "cpu" or not torch.cuda.is_available() else "cuda")


def make_adapter(spec: Spec, device: str = "auto") -> TorchAdapter:
    return TorchAdapter(spec, device)
