"""The PyTorch references (common.benchtarget: REFERENCES, make_reference → an EpochRunner): the loop idiomatic torch
code writes at its fastest for a feature or image stack, the yardstick of the bench's modes (docs/design.md,
"Performance methodology"). It trains as the eager mode's exact mode does, so its per-step losses are checked
against those, on the code path that is timed:

- Model: the adapter's own stack with the canonical init loaded, in training mode; a dropout layer is nn.Dropout
  drawing its own masks (idiom `dropout_rng`: a spec with dropout cannot be checked, the bench notes it).
- Data: the training split on the device once. Epoch e (e = the epochs this runner ran, from 0) walks
  `BatchPlan.slots(e)` drawn on the host, a short last batch ("keep") padded with weight-0 rows as under "pad"
  (one static shape); the slots go to the device as one ids tensor, one gather of x and of y per epoch, step k the
  rows [kB, (k + 1)B). No DataLoader.
- Loss: the plain mean `F.cross_entropy(logits, y)` on a batch of real rows; on the one step with filler rows the
  mean over its `real` leading rows, `F.cross_entropy(logits[:real], y[:real])` (= Σ w·ℓ / Σ w; BatchNorm takes
  the real rows' statistics, core.Flow.real); the optimizer's penalty terms only when it has some
  (TorchOptimizer.with_penalty).
- Optimizer: optim.TorchOptimizer with the spec's optimizer and regularization (one parameter group where the spec
  allows it; SGD fused where the device has it); its scheduler events around every step and epoch.
- Variants (REFERENCES): "eager", op by op; "compiled", `torch.compile(dynamic=False)` of the forward + loss
  (AOTAutograd compiles its backward), the optimizer step left to the fused kernel, which torch.compile would not trace
  (without one, the multi-tensor step compiled too), as the compiled mode does (execution.CompiledStep); "graph", CUDA
  only: CUDA graphs of CHUNK consecutive steps (one step under a schedule, whose LRScheduler steps in Python between
  steps), captured after a warm-up whose effects are undone (execution.capture); per chunk one device copy of its x and
  y and one replay.
- `epoch()` returns the epoch's per-step losses stacked on the device; `equivalence_losses(epochs)` runs a fresh
  runner of the same variant.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from backends.torch_backend.adapter import resolve_device
from backends.torch_backend.bench import sync_device
from backends.torch_backend.data import step_reals
from backends.torch_backend.execution import capture
from backends.torch_backend.model import DTYPES, build, load_canonical
from backends.torch_backend.optim import TorchOptimizer, fused_supported
from common.batching import BatchPlan
from common.datasets import Dataset
from common.driver import canonical_init, model_layers
from common.spec import Spec

REFERENCES = ("eager", "compiled", "graph")
CHUNK = 64
WARMUP = 3


def reference_spec(spec: Spec) -> Spec:
    """The spec the reference model is built from: the spec with idiom `dropout_rng` on (nn.Dropout's own masks)."""
    idioms = spec.native.idioms
    return spec if idioms == "all" else replace(spec, native=replace(spec.native, idioms=[*idioms, "dropout_rng"]))


class ReferenceLoop:
    def __init__(self, spec: Spec, data: Dataset, device: str, variant: str = "eager"):
        if variant not in REFERENCES:
            raise ValueError(f"torch has no reference '{variant}' (references: {', '.join(REFERENCES)})")
        if data.is_sequence:
            raise ValueError("torch reference loop: feature data only (sequence models are not benchmarked)")
        self.spec, self.data, self.device, self.variant = spec, data, device, variant
        self.dev = resolve_device(device)
        if variant == "graph" and self.dev.type != "cuda":
            raise RuntimeError(f"torch reference 'graph' (CUDA graphs) needs a CUDA device; this run is on {self.dev}")
        if self.dev.type == "cuda":  # the adapter's precision, so the comparison is like for like
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.x = torch.as_tensor(data.train_x, dtype=DTYPES[spec.dtype], device=self.dev)
        self.y = torch.as_tensor(data.train_y, dtype=torch.long, device=self.dev)
        plan = BatchPlan.from_spec(spec, self.x.shape[0])
        self.plan = replace(plan, last_batch="pad") if plan.last_batch == "keep" else plan
        self.steps, self.epochs = self.plan.steps_per_epoch, 0
        self.model = build(model_layers(spec, data), reference_spec(spec)).to(self.dev)
        load_canonical(self.model, canonical_init(spec, data))
        self.model.train()
        fused = fused_supported(self.dev)
        self.opt = TorchOptimizer(
            spec, self.model, capturable=variant == "graph", fused=fused, graph=variant == "graph"
        )
        compiled = variant == "compiled"
        self.loss = torch.compile(self._loss, dynamic=False) if compiled else self._loss
        self.opt_step = (
            torch.compile(self.opt.step, dynamic=False) if compiled and not self.opt.fused else self.opt.step
        )
        self.state = [p for p in self.model.parameters()] + list(self.model.buffers())
        self.chunk = 1 if self.opt.scheduled else CHUNK
        self.graphs: dict[tuple, tuple] = {}  # (steps, real) → (graph, static x, static y, static losses)

    def _loss(self, x: torch.Tensor, y: torch.Tensor, real: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(the recorded cross-entropy, it plus the penalty terms): the plain mean over the batch's real rows."""
        logits = self.model(x, real=real)
        loss = F.cross_entropy(logits, y) if real is None else F.cross_entropy(logits[:real], y[:real])
        return loss, self.opt.with_penalty(loss)

    def _train(self, x: torch.Tensor, y: torch.Tensor, real: int | None) -> torch.Tensor:
        """One update, without the scheduler's events; its loss."""
        self.opt.zero_grad()
        loss, objective = self.loss(x, y, real)
        objective.backward()
        self.opt_step()
        return loss.detach()

    def _steps(self, xs: torch.Tensor, ys: torch.Tensor, real: int | None) -> torch.Tensor:
        """Consecutive steps over batches xs[k], ys[k] (`real`: the real rows of each); their losses, stacked."""
        losses = []
        for x, y in zip(xs, ys, strict=True):
            self.opt.event("before_step")
            losses.append(self._train(x, y, real))
            self.opt.event("after_step")
        return torch.stack(losses)

    def _graph_steps(self, xs: torch.Tensor, ys: torch.Tensor, real: int | None) -> torch.Tensor:
        """`_steps` as replays of CUDA graphs of up to `chunk` steps, one per (steps, real), captured on first use."""
        out = []
        for start in range(0, xs.shape[0], self.chunk):
            x, y = xs[start : start + self.chunk], ys[start : start + self.chunk]
            key = (x.shape[0], real)
            if key not in self.graphs:
                self.graphs[key] = self._capture(x.clone(), y.clone(), real)
            graph, losses, sx, sy = self.graphs[key]
            sx.copy_(x)
            sy.copy_(y)
            self.opt.event("before_step")  # a scheduled lr (one step per graph) is filled in between replays
            graph.replay()
            self.opt.event("after_step")
            out.append(losses.clone())
        return torch.cat(out)

    def _capture(self, sx: torch.Tensor, sy: torch.Tensor, real: int | None) -> tuple:
        """(graph, its static losses, static x, static y) of the steps over sx, sy."""

        def run() -> torch.Tensor:
            return torch.stack([self._train(x, y, real) for x, y in zip(sx, sy, strict=True)])

        return (*capture(run, self.state, self.opt, WARMUP), sx, sy)

    def _placed(self) -> tuple[torch.Tensor, torch.Tensor, int | None]:
        """This runner's next epoch on the device as (steps, B, ...) x and (steps, B) y, and the real rows of its
        last step (None: all real)."""
        ids, weights = self.plan.slots(self.epochs)
        index = torch.as_tensor(ids, dtype=torch.long, device=self.dev)
        last = step_reals(weights, np.arange(0, ids.shape[0], self.plan.batch_size))[-1]
        shape = (self.steps, self.plan.batch_size)
        x, y = self.x.index_select(0, index), self.y.index_select(0, index)
        return x.reshape(*shape, *self.x.shape[1:]), y.reshape(shape), last

    def epoch(self) -> Any:
        xs, ys, last = self._placed()
        run = self._graph_steps if self.variant == "graph" else self._steps
        full = self.steps - (last is not None)  # the steps of real rows only, then the one with filler rows
        self.opt.event("before_epoch")
        losses = [run(xs[a:b], ys[a:b], real) for a, b, real in ((0, full, None), (full, self.steps, last)) if b > a]
        self.opt.event("after_epoch")
        self.epochs += 1
        return torch.cat(losses)

    def sync(self, result: Any) -> None:
        sync_device(self.dev, result)

    def equivalence_losses(self, epochs: int) -> list[float]:
        fresh = ReferenceLoop(self.spec, self.data, self.device, self.variant)
        return torch.cat([fresh.epoch() for _ in range(epochs)]).cpu().tolist()


def make_reference(spec: Spec, data: Dataset, device: str, variant: str = "eager") -> ReferenceLoop:
    return ReferenceLoop(spec, data, device, variant)
