"""The PyTorch adapter for common.driver: DataLoader → nn.Module → torch.optim (see data, model, optim).

Device: CUDA when available (TF32 switched off for matmul and cuDNN so float32 stays IEEE single), else CPU.
Exact mode: the plan's batches, canonical parameters loaded, shared masks, torch.optim with converted settings.
Native mode (common.native, torch column): what a user porting by hand writes. `torch.manual_seed(spec seed)` once,
then the model is built (nn.Linear's default init draws from the global RNG) and `nn.Dropout` keeps drawing from
the same global RNG; a `DataLoader(shuffle=…, drop_last=…)` with its own Generator, which does not disturb it; the
mean cross-entropy `F.cross_entropy(logits, y)`; torch.optim with the spec's numbers as written (optim.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from common.batching import Batch, BatchPlan
from common.datasets import Dataset
from common.initializers import layer_sizes

from backends.torch_backend.data import RowsDataset, TorchBatch, make_loader, make_native_loader
from backends.torch_backend.model import MLP
from backends.torch_backend.optim import NativeTorchOptimizer, TorchOptimizer

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TorchAdapter:
    name = "torch"

    def __init__(self, spec: dict):
        self.spec = spec
        self.dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
        tensors = {split: (torch.as_tensor(x, dtype=dtype, device=self.dev),
                           torch.as_tensor(y, dtype=torch.long, device=self.dev))
                   for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y))}
        self.datasets = {split: RowsDataset(*xy) for split, xy in tensors.items()}
        sizes = layer_sizes(data.n_features, spec["model"]["hidden"], data.n_classes)
        activation = spec["model"]["activation"]
        if self.native:
            self.loader = make_native_loader(self.datasets["train"], spec)
            torch.manual_seed(spec["seed"])  # nn.Linear's default init, then nn.Dropout, draw from the global RNG
            self.model = MLP(sizes, activation, spec["regularization"]["dropout"], dtype, "cpu").to(self.dev)
            self.optimizer = NativeTorchOptimizer(spec, self.model)
        else:
            self.loader = make_loader(self.datasets["train"], plan, spec["seed"])
            self.model = MLP(sizes, activation, 0.0, dtype, self.dev)
            self.model.load_canonical(params)
            torch.manual_seed(spec["seed"])
            self.optimizer = TorchOptimizer(spec, self.model)

    def epoch_batches(self, epoch: int):
        if self.native:
            return iter(self.loader)  # RandomSampler reshuffles at every iter()
        self.loader.batch_sampler.set_epoch(epoch)
        return iter(self.loader)

    def batch_ids(self, batch: TorchBatch) -> np.ndarray:
        return batch.ids  # native batches hold real rows only (no pad filler)

    def train_step(self, batch: TorchBatch, step: int, masks: list[np.ndarray] | None) -> float:
        self.model.train()
        self.optimizer.zero_grad()
        if self.native:
            loss = F.cross_entropy(self.model(batch.x), batch.y)
        else:
            shared = None if masks is None else [torch.as_tensor(m, device=self.dev) for m in masks]
            rows = F.cross_entropy(self.model(batch.x, shared), batch.y, reduction="none")
            loss = (rows * batch.weights).sum() / batch.weights.sum()
        (loss + self.optimizer.penalty()).backward()
        self.optimizer.step()
        return loss.item()

    @torch.no_grad()
    def evaluate(self, split: str, batches: list[Batch]) -> list[tuple[float, float, int]]:
        self.model.eval()
        out = []
        for b in map(self.datasets[split].__getitems__, batches):
            logits = self.model(b.x)
            rows = F.cross_entropy(logits, b.y, reduction="none")
            correct = (logits.argmax(dim=1) == b.y).to(b.weights.dtype)
            out.append(((rows * b.weights).sum().item(), (correct * b.weights).sum().item(),
                        int(torch.count_nonzero(b.weights))))
        return out

    def parameters(self) -> dict[str, np.ndarray]:
        return self.model.canonical()


def make_adapter(spec: dict) -> TorchAdapter:
    return TorchAdapter(spec)
