"""The hand-fused PyTorch reference (common.benchtarget.EpochRunner): the fastest minimal loop torch allows for a
feature or image stack, the baseline the bench's modes are compared with (docs/design.md, "Performance
methodology"). Not held to equivalence, but the same model: the stack built as a hand port builds it (nn.Dropout,
torch's defaults: image layers and BatchNorm as native mode builds them, BatchNorm over every row of a padded
batch) with the canonical init loaded, optim.TorchOptimizer with the spec's optimizer and regularization.

- Data: the training split on the device once; per epoch one permutation on the device (`torch.randperm`, a device
  Generator; `arange` without shuffle) cut into (steps, B) ids, a short last batch padded to B with weight-0 rows
  (one static shape, the same mean loss as "keep"; skipped under "drop"); loss Σw·ℓ/Σw. No DataLoader.
- Optimizer: torch.optim's single-kernel implementation (`fused=True`) where the device has one.
- CUDA: the epoch runs as CUDA graphs of CHUNK consecutive steps (the on-device gather included), captured after a
  warm-up on a side stream; per chunk two small device copies (ids, weights) and one replay.
- CPU: the same steps eagerly, or with `compile=True` the forward + loss through `torch.compile` (eager is the
  default: for models this small the compiled graph's per-call overhead outweighs what Inductor saves).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from backends.torch_backend.adapter import resolve_device
from backends.torch_backend.bench import sync_device
from backends.torch_backend.model import DTYPES, build, load_canonical
from backends.torch_backend.optim import TorchOptimizer
from common.datasets import Dataset
from common.driver import canonical_init, model_layers
from common.spec import Spec

CHUNK = 64


class ReferenceLoop:
    def __init__(self, spec: Spec, data: Dataset, device: str, compile: bool = False):
        if data.is_sequence:
            raise ValueError("torch reference loop: feature data only (sequence models are not benchmarked)")
        self.dev = resolve_device(device)
        if self.dev.type == "cuda":  # the adapter's precision, so the comparison is like for like
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        dtype = DTYPES[spec.dtype]
        self.x = torch.as_tensor(data.train_x, dtype=dtype, device=self.dev)
        self.y = torch.as_tensor(data.train_y, dtype=torch.long, device=self.dev)
        b = spec.batching
        self.n, self.batch, self.shuffle = self.x.shape[0], b.batch_size, b.shuffle
        self.steps = self.n // self.batch if b.last_batch == "drop" else -(-self.n // self.batch)
        slots = torch.arange(self.steps * self.batch, device=self.dev)
        self.slots = slots % self.n
        self.w = (slots < self.n).to(dtype).reshape(self.steps, self.batch)
        self.generator = torch.Generator(device=self.dev).manual_seed(spec.seed)
        self.model = build(model_layers(spec, data), replace(spec, mode="native")).to(self.dev)
        load_canonical(self.model, canonical_init(spec, data))
        self.model.train()
        fused = self.dev.type in _get_fused_kernels_supported_devices() or None
        self.opt = TorchOptimizer(spec, self.model, capturable=self.dev.type == "cuda", fused=fused)
        self.loss = torch.compile(self._loss, dynamic=False) if compile else self._loss
        self.graphs: dict[int, tuple] = {}  # steps in the chunk → (graph, (static ids, static w), its last loss)

    def _loss(self, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        rows = F.cross_entropy(self.model(self.x[ids]), self.y[ids], reduction="none")
        loss = (rows * w).sum() / w.sum()
        return loss + self.opt.penalty()

    def _steps(self, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Consecutive steps over ids / w of shape (k, B); the last loss."""
        for i in range(ids.shape[0]):
            self.opt.zero_grad()
            loss = self.loss(ids[i], w[i])
            loss.backward()
            self.opt.step()
        return loss.detach()

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n, device=self.dev)[self.slots].reshape(self.steps, self.batch)
        perm = torch.randperm(self.n, device=self.dev, generator=self.generator)
        return perm[self.slots].reshape(self.steps, self.batch)

    def _graph(self, ids: torch.Tensor, w: torch.Tensor):
        """A CUDA graph of k steps reading static (k, B) ids and weights (warm-up steps first, on a side stream)."""
        static_ids, static_w = ids.clone(), w.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._steps(static_ids[:3], static_w[:3])
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = self._steps(static_ids, static_w)
        return graph, (static_ids, static_w), loss

    def epoch(self) -> Any:
        ids = self._order()
        if self.dev.type != "cuda":
            return self._steps(ids, self.w)
        loss = None
        for start in range(0, self.steps, CHUNK):
            chunk_ids, chunk_w = ids[start : start + CHUNK], self.w[start : start + CHUNK]
            k = chunk_ids.shape[0]
            if k not in self.graphs:
                self.graphs[k] = self._graph(chunk_ids, chunk_w)
            graph, (static_ids, static_w), loss = self.graphs[k]
            static_ids.copy_(chunk_ids)
            static_w.copy_(chunk_w)
            graph.replay()
        return loss

    def sync(self, result: Any) -> None:
        sync_device(self.dev, result)


def make_reference(spec: Spec, data: Dataset, device: str, compile: bool = False) -> ReferenceLoop:
    return ReferenceLoop(spec, data, device, compile)
