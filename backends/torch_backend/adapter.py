"""The PyTorch adapter for common.driver: DataLoader → the layer stack's nn.Module → torch.optim (docs/design.md,
"Architecture", "Native mode").

Native behaviours are switches of common.idioms (`on(spec, id)`), read where they act: `default_init` (the driver
passes params=None: torch's default inits), `order` / `split_step` (data.py's loaders; `split_step` also the
native split loop below), `dropout_rng` (nn.Dropout, no shared masks: core.py), the optimizer's idioms
(l2_as_written, bias_decay, clip_epsilon, clip_before_decay, torch_cosine_annealing, scheduler_step_first,
per_epoch_schedule: optim.py), the layers' (norm.py, image.py, sequence.py). "Exact mode" below: those off;
"native mode": on. Clipping and the LRScheduler live in optim.TorchOptimizer; its scheduler events are called
around every optimizer step by the execution mode (execution.py) and around every epoch here (`run_epoch`).

Device: "auto" = CUDA when available, else CPU; bench.py may ask for "cpu" or "gpu" ("gpu" without CUDA raises).
On CUDA TF32 is off for matmul and cuDNN, so float32 stays IEEE single (docs/design.md, "Precision").
Exact mode: the plan's batches, canonical parameters loaded, the shared dropout masks of each global step, torch.optim
with converted settings (SGD fused where the device has it, optim.py); under `last_batch = "pad"` BatchNorm's batch
statistics are those of the real rows (TorchRows.real, norm.py). The canonical state (BatchNorm's running statistics) is
loaded and returned by `parameters()` with the parameters, and never given to the optimizer; the loss gets the
optimizer's penalty terms only when it has some (TorchOptimizer.with_penalty). Native mode (common.native, torch
column): `torch.manual_seed(seed)`, then the model is built (the default inits, then nn.Dropout, draw from the global
RNG), torch's own DataLoader shuffle, the mean `F.cross_entropy(logits, y)` (per_token sequences: weighted by the kept
lengths), the spec's optimizer numbers as written, torch's own layer defaults (common.native.LAYER_DEFAULTS). A step's
loss stays on the device; an epoch's losses are fetched once, at its end.
Split steps (common.distributed; docs/design.md, "Data parallelism and accumulation"): R > 1 replicas are R
processes of a gloo group (distributed.py; ranks > 0 run `run_replica`, or, launched by torchrun through
backends.host, every rank runs the driver as rank `dist.get_rank()` of torchrun's group), the model under DDP;
each rank's DataLoader yields its parts. Per optimizer step a rank runs its K parts' backward passes, the first
K − 1 under `no_sync()` (gradients accumulate locally), the K-th synchronised: DDP averages over R and the K passes
sum, so A = R in `Layout.part_scales` and `penalty_scale`; then one `optimizer.step()` (decay inside torch.optim,
once). R = 1, K > 1: the same loop without DDP (autograd sums the K passes, A = 1). Evaluation and `parameters()`
use the module itself (no collective), on rank 0 only, while the helpers go on to the next epoch's first
collective (under torchrun on every rank, alike); after the last epoch they exit.
Native split steps (common.native.SPLIT_IDIOMS, torch row: distributed_sampler, part_mean, loss_over_k): the same
group and DDP; every rank `torch.manual_seed(seed)` (DDP broadcasts rank 0's parameters anyway), its
DistributedSampler's DataLoader (data.py), and the loop a port writes (`_native_split_epoch`): each micro-batch's
`(F.cross_entropy(logits, y) + penalty) / K` backward, under `no_sync()` unless the optimizer steps after it, every
K micro-batches and after the epoch's last. A step's gradient is (1/K)(1/R) Σ_k Σ_r ∇(mean of part (r, k)): the
mean of the part means, over however many micro-batches the step took.
"""

from __future__ import annotations

from contextlib import nullcontext
from itertools import islice

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from backends.torch_backend import distributed
from backends.torch_backend.data import Pipeline, TorchRows, pipeline
from backends.torch_backend.execution import check_execution, make_step
from backends.torch_backend.model import DTYPES, build, load_canonical, to_canonical, trainable
from backends.torch_backend.optim import TorchOptimizer, fused_supported
from common.batching import Batch, BatchPlan
from common.datasets import Dataset, load_dataset
from common.distributed import Layout
from common.driver import EpochRun, canonical_init, check_plan
from common.dropout import shared_masks
from common.idioms import on
from common.layers import Layer
from common.spec import Spec, execution_of, typed, validate


class TorchAdapter:
    name = "torch"

    def __init__(self, spec: Spec, device: str = "auto", replica: int = 0):
        self.dev, self.replica = resolve_device(device), replica
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
        self.spec, self.layers = spec, layers
        self.native_split = on(spec, "split_step")  # the loop a port writes (_native_split_epoch)
        self.shared_masks = not on(spec, "dropout_rng")
        self.plan, self.layout = plan, Layout.from_spec(spec)
        hosted = distributed.hosted()  # torchrun's rank (backends.host): group joined, every rank runs the driver
        if hosted:
            self.replica = torch.distributed.get_rank()
        leads = self.layout.replicas > 1 and self.replica == 0 and not hosted  # rank 0 starts the others (run_replica)
        self.group = (
            distributed.Replicas.start(self.layout.replicas, run_replica, (spec.to_dict(), self.dev.type))
            if leads
            else None
        )
        self.pipeline: Pipeline = pipeline(spec, data, plan, DTYPES[spec.dtype], self.dev, self.replica)
        torch.manual_seed(spec.seed)  # native mode: the default inits, then nn.Dropout, draw from it
        self.model = build(layers, spec).to(self.dev)
        if params is not None:
            load_canonical(self.model, params)
        self.net = self.model  # what a split step's forward pass runs: under R > 1 replicas, DDP's wrapper of it
        if self.layout.replicas > 1:
            with self._guard():
                self.net = DistributedDataParallel(self.model)
        # Adam's step count on the device for CUDA graphs, and for torch.compile on CUDA (which would set it only
        # for the state it creates; TorchOptimizer creates it up front)
        capturable = self.execution == "fused" or (self.execution == "compiled" and self.dev.type == "cuda")
        # fused SGD where the device has it, in every mode: compiled mode runs the fused kernel as is (torch.compile
        # does not trace into it) and compiles the multi-tensor step of the others (execution.CompiledStep)
        fused = fused_supported(self.dev)
        self.optimizer = TorchOptimizer(spec, self.model, capturable, fused, graph=self.execution == "fused")
        self.run_step = make_step(
            self.execution,
            self._part_loss if self.layout.is_split and not self.native_split else self._loss,
            self.optimizer,
            [p for _, p in trainable(self.model)] + list(self.model.buffers()),
            self.pipeline.static_shapes,
        )

    def _loss(self, x, y, w, lengths, masks, real) -> tuple[torch.Tensor, torch.Tensor]:
        """(the recorded cross-entropy, it plus the optimizer's penalty terms): what backward() differentiates (a
        native split step divides it by K). The forward pass runs DDP's wrapper under R > 1 replicas. Weighted,
        Σ w·ℓ / max(Σ w, 1); a feature or image batch without filler rows (`real` None) has every plan weight 1,
        where that is the plain mean, written as such."""
        logits = self.net(x, lengths, masks, real)
        if self.pipeline.weighted and (real is not None or not self.pipeline.static_shapes):
            loss = (F.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum().clamp_min(1.0)
        else:
            loss = F.cross_entropy(logits, y)
        return loss, self.optimizer.with_penalty(loss)

    def _part_loss(self, x, y, w, lengths, masks, real, scale) -> tuple[torch.Tensor, torch.Tensor]:
        """A split step's part: (Σ w·ℓ, Σ w·ℓ · s + the optimizer's penalty terms · A/P), what backward()
        differentiates (common.distributed.Layout.part_scales and penalty_scale, A = R)."""
        logits = self.net(x, lengths, masks, real)
        total = (F.cross_entropy(logits, y, reduction="none") * w).sum()
        return total, self.optimizer.with_penalty(total * scale, self.layout.penalty_scale(self.layout.replicas))

    def _masks(self, step: int, rows: TorchRows) -> list[torch.Tensor] | None:
        """The shared masks of global step `step` on the device (None without dropout, or with `dropout_rng`:
        nn.Dropout draws its own)."""
        return self._step_masks(step, rows.ids.shape[0])

    def _step_masks(self, step: int, rows: int) -> list[torch.Tensor] | None:
        """`_masks` for a step of `rows` rows."""
        masks = (
            None if not self.shared_masks else shared_masks(self.spec.seed, step, self.layers, rows, self.spec.dtype)
        )
        return None if masks is None else [torch.as_tensor(m, device=self.dev) for m in masks]

    def _advance(self, rows: TorchRows, masks: list[torch.Tensor] | None) -> torch.Tensor:
        """One update in this execution mode (the model in training mode: `_epoch`, or as prepared); the loss
        tensor, not waited on."""
        return self.run_step(rows.x, rows.y, rows.weights, rows.lengths, masks, rows.real)

    def _guard(self):
        """Rank 0 of several replicas: a failing or silent helper rank becomes a RuntimeError naming it."""
        return self.group.guard() if self.group is not None else nullcontext()

    def _sync(self, last: bool):
        """DDP's `no_sync()` for the micro-batches before a step's `last` (local accumulation), synchronised on it."""
        return self.net.no_sync() if isinstance(self.net, DistributedDataParallel) and not last else nullcontext()

    def _split_step(self, step: int, batch: Batch, parts: list[TorchRows]) -> torch.Tensor:
        """One optimizer step from this replica's K parts (module docstring), through the execution mode's loss
        function and optimizer step (execution.make_step: eager, or torch.compile-d); the shared masks are drawn
        for the step's S rows and cut with `Layout.rows`. Returns Σ w·ℓ over this replica's parts, on the device."""
        layout, r = self.layout, self.replica
        weights = [[part.weights.sum() for part in replica] for replica in layout.split(batch)]
        scales = torch.as_tensor(
            layout.part_scales(weights, averaged=layout.replicas)[r], dtype=DTYPES[self.spec.dtype], device=self.dev
        )
        masks = self._step_masks(step, layout.step_rows)
        self.model.train()
        self.optimizer.zero_grad()
        total = torch.zeros((), dtype=scales.dtype, device=self.dev)
        for k, rows in enumerate(parts):
            cut = None if masks is None else [m[layout.rows(r, k)] for m in masks]
            with self._sync(k == layout.accumulate - 1):
                loss, objective = self.run_step.loss_fn(
                    rows.x, rows.y, rows.weights, rows.lengths, cut, rows.real, scales[k]
                )
                objective.backward()
            total = total + loss.detach()
        self.run_step.opt_step()
        return total

    def _split_epoch(self, epoch: int, first_step: int) -> EpochRun:
        """Every step of this replica's parts; then every replica's Σ w·ℓ per step and the ids its DataLoader fed,
        gathered: the step loss Σ_step w·ℓ / Σ_step w, the shards, the step's ids put back in row order."""
        layout, batches, parts = self.layout, self.plan.batches(epoch), self.pipeline.epoch(epoch)
        sums, fed = [], []
        for step, batch in enumerate(batches, first_step):
            rows = list(islice(parts, layout.accumulate))
            sums.append(self._split_step(step, batch, rows))
            fed.append([part.ids for part in rows])
        mine = (torch.stack(sums).cpu().numpy(), fed)
        every = distributed.gather(mine) if layout.replicas > 1 else [mine]
        shards = [[replica[1][t] for replica in every] for t in range(len(batches))]
        ids = []
        for step_shards, batch in zip(shards, batches, strict=True):
            step_ids = np.empty(layout.step_rows, dtype=np.int64)
            for r, replica in enumerate(step_shards):
                for k, part in enumerate(replica):
                    step_ids[layout.rows(r, k)] = part
            ids.append(step_ids[: batch.rows])
        losses = sum(replica[0] for replica in every) / np.array([max(b.weights.sum(), 1.0) for b in batches])
        return EpochRun(ids, [0] * len(batches), losses, shards)  # feature or image data: no padded length

    def _native_split_epoch(self, epoch: int, first_step: int) -> EpochRun:
        """Native split steps (module docstring): this rank's DataLoader walked as a port writes it,

            loss = (F.cross_entropy(net(x), y) + penalty) / K;  loss.backward()  (under no_sync() unless stepping)
            if (i + 1) % K == 0 or i + 1 == len(loader): optimizer.step(); optimizer.zero_grad()

        (every rank has as many micro-batches: the sampler pads). Then every rank's Σℓ and ids per micro-batch,
        gathered: per step the ids fed over its micro-batches and replicas (micro-batch by micro-batch, replicas in
        order; sampler repeats included), its loss Σℓ / n and its shards. Shared dropout masks (`dropout_rng`
        off) are keyed by the micro-batch's running number from `first_step` on (this loop has no plan steps)."""
        k = self.layout.accumulate
        count = len(self.pipeline.loader)
        self.model.train()
        sums, fed = [], []
        for i, rows in enumerate(self.pipeline.epoch(epoch)):
            stepping = (i + 1) % k == 0 or i + 1 == count
            masks = self._masks(first_step + i, rows)
            with self._sync(stepping):
                loss, objective = self.run_step.loss_fn(rows.x, rows.y, rows.weights, rows.lengths, masks, rows.real)
                (objective / k).backward()
            sums.append(loss.detach() * rows.ids.shape[0])
            fed.append(rows.ids)
            if stepping:
                self.run_step.opt_step()
                self.optimizer.zero_grad()
        mine = (torch.stack(sums).cpu().numpy(), fed)
        every = distributed.gather(mine) if self.layout.replicas > 1 else [mine]
        groups = [range(start, min(start + k, count)) for start in range(0, count, k)]
        ids, losses = [], []
        for group in groups:
            parts = [(replica[0][i], replica[1][i]) for i in group for replica in every]
            ids.append(np.concatenate([part_ids for _, part_ids in parts]))
            losses.append(sum(total for total, _ in parts) / ids[-1].shape[0])
        shards = [[[replica[1][i] for i in group] for replica in every] for group in groups]
        return EpochRun(ids, [0] * len(groups), np.array(losses), shards)

    def epoch_inputs(self, epoch: int, first_step: int):
        """The epoch's training batches from the pipeline (lazily: the DataLoader's iterator), what `run_epoch`
        steps over; `list()` of it holds them on the device (the bench's loop without its loader)."""
        return self.pipeline.epoch(epoch)

    def run_epoch(self, epoch: int, first_step: int, inputs=None) -> EpochRun:
        """One training epoch over `inputs` (`epoch_inputs`; by default the pipeline's, made as the loop goes)."""
        self.optimizer.event("before_epoch")
        run = self._epoch(epoch, first_step, inputs)
        self.optimizer.event("after_epoch")
        return run

    def _epoch(self, epoch: int, first_step: int, inputs) -> EpochRun:
        if self.layout.is_split:
            if inputs is not None:
                raise ValueError("torch: split steps read each replica's own loader, not inputs made beforehand")
            with self._guard():
                split = self._native_split_epoch if self.native_split else self._split_epoch
                run = split(epoch, first_step)
            if self.group is not None and epoch == self.spec.train.epochs - 1:
                self.group.finish()  # the helpers have run their last epoch
            return run
        ids, lengths, losses = [], [], []
        self.model.train()
        for step, rows in enumerate(self.epoch_inputs(epoch, first_step) if inputs is None else inputs, first_step):
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


def run_replica(replica: int, spec_json: dict, device: str) -> None:
    """Helper rank `replica` (distributed.Replicas): the adapter rebuilt from the spec's JSON form as the driver
    builds it (validated, the dataset, the plan, the canonical init or native mode's seeded one: every rank starts
    identical), then every epoch in lockstep with rank 0, which alone evaluates and records."""
    spec = typed(validate(spec_json))
    data = load_dataset(spec)
    plan, layers = check_plan(spec, data)
    adapter = TorchAdapter(spec, device, replica)
    adapter.prepare(spec, data, plan, layers, None if on(spec, "default_init") else canonical_init(spec, data))
    for epoch in range(spec.train.epochs):
        adapter.run_epoch(epoch, epoch * plan.steps_per_epoch + 1)
