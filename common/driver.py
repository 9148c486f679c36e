"""The framework-free training loop every backend runs through (docs/design.md, "Architecture").

A backend supplies an :class:`Adapter` that translates; the driver decides. Per epoch e (0-based) the adapter runs
the whole epoch through its native pipeline (`run_epoch`, the same contract `parity bench` times) and returns the
rows it fed and the loss of every step (the pre-update training forward pass); the driver then checks in exact
mode that the pipeline delivered exactly the plan's rows and padded lengths, and records per step t (global,
1-based) its ids, size and loss. After each epoch it evaluates both splits in eval mode and aggregates the
per-batch sums with `common.metrics.aggregate`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from common import layers as layer_stack
from common.batching import Batch, BatchPlan, eval_batches
from common.datasets import Dataset
from common.distributed import Layout, check_batch_norm, check_rows, shard_ids
from common.idioms import IDIOMS, active, on, plan_order
from common.layers import Layer
from common.metrics import aggregate
from common.native import layer_settings, running_epoch_loss, split_idiom
from common.padding import resolve_sides

if TYPE_CHECKING:
    from common.spec import Spec


@dataclass(frozen=True)
class EpochRun:
    """What one training epoch fed and measured, per step: the row ids as the pipeline delivered them (every row
    fed, filler included, in exact mode; the real rows only in native mode), the padded length T (0 for
    features) and the step's loss Σ w·ℓ / max(Σ w, 1) over all its rows. A step split into replicas and
    micro-batches (common.distributed) also gives `shards`: per step, per replica, per micro-batch, the ids that
    part was fed (exact mode: filler included, checked against the plan's split; native mode: its real rows, as
    recorded)."""

    ids: list[np.ndarray]
    lengths: list[int]
    losses: np.ndarray
    shards: list[list[list[np.ndarray]]] | None = None


class Adapter(Protocol):
    """What a backend implements. Arrays crossing this boundary are numpy, in the canonical layout."""

    name: str

    def versions(self) -> dict[str, str]:
        """Framework name → version (python and numpy are added by the driver)."""

    def device(self) -> str:
        """Where the computation runs, e.g. 'cpu' or 'cuda:0 (NVIDIA H100)'."""

    def prepare(
        self,
        spec: Spec,
        data: Dataset,
        plan: BatchPlan,
        layers: tuple[Layer, ...],
        params: dict[str, np.ndarray] | None,
    ) -> None:
        """Build the native pipeline, the model of `layers`, and the optimizer for a resolved spec.

        Exact mode: load `params` and follow `plan`, with the shared dropout masks of common.dropout. `params` is
        None exactly when the idiom `default_init` is on (the framework's own init); every other native behaviour
        is the adapter's to read from common.idioms (`on(spec, id)`), never from `params` or `spec.mode`.
        """

    def run_epoch(self, epoch: int, first_step: int) -> EpochRun:
        """Train one epoch (0-based) whose first global step is `first_step` (1-based). A split step
        (common.distributed.Layout) trains its parts on the framework's own data-parallel engine and accumulation,
        each part's Σ w·ℓ scaled by `Layout.part_scales` for that engine, and reports `EpochRun.shards`."""

    def evaluate(self, split: str, batches: list[Batch]) -> list[tuple[float, float, int]]:
        """Eval mode (no dropout) over `split` ('train' or 'test'): per batch (Σ ℓ, number correct, n)."""

    def parameters(self) -> dict[str, np.ndarray]:
        """Current parameters by canonical name (common.layers), in the canonical layout."""


def model_layers(spec: Spec, data: Dataset) -> tuple[Layer, ...]:
    """The spec's layer stack resolved for `data` (a token model reads the vocabulary, others the features)."""
    return layer_stack.stack(spec, data.input_shape, data.n_classes)


def check_plan(spec: Spec, data: Dataset) -> tuple[BatchPlan, tuple[Layer, ...]]:
    """The training plan and the layer stack, after the checks that need both: every batch_norm layer gets at
    least 2 values per channel at every step (common.layers.check_batch_statistics); InputError otherwise, before
    any backend starts. Feature and image data only: every epoch has the same batch sizes."""
    plan = BatchPlan.from_spec(spec, data.train_x.shape[0], data.train_lengths)
    check_rows(spec, data.train_x.shape[0])
    layers = model_layers(spec, data)
    if not data.is_sequence:
        check_batch_norm(spec, layers, plan.batches(0))
        shard = Layout.from_spec(spec).shard
        layer_stack.check_batch_statistics(layers, [min(batch.n_real, shard) for batch in plan.batches(0)])
    return plan, layers


def canonical_init(spec: Spec, data: Dataset) -> dict[str, np.ndarray]:
    """The shared initial parameters for a spec and dataset."""
    return layer_stack.init_params(model_layers(spec, data), spec.model.init, spec.seed, np.dtype(spec.dtype))


def _progress(name: str, epoch: int, epochs: int, loss: float) -> None:
    print(f"[{name}] epoch {epoch}/{epochs} loss {loss:.6g}", file=sys.stderr, flush=True)


def _epoch_metrics(adapter: Adapter, eval_plan: dict, how: str) -> dict:
    metrics = {}
    for split, batches in eval_plan.items():
        sums = adapter.evaluate(split, batches)
        metrics[f"{split}_loss"] = aggregate([s[0] for s in sums], [s[2] for s in sums], how)
        metrics[f"{split}_acc"] = aggregate([s[1] for s in sums], [s[2] for s in sums], how)
    metrics["eval_batch_sizes"] = {split: [b.rows for b in batches] for split, batches in eval_plan.items()}
    return metrics


def _check_shards(adapter: Adapter, run: EpochRun, planned: list[Batch], layout: Layout, epoch: int) -> None:
    """Exact mode, split steps: each replica and micro-batch was fed the rows of the plan's split."""
    if run.shards is None or len(run.shards) != len(planned):
        raise RuntimeError(f"{adapter.name} reported no shards for every step of epoch {epoch + 1}")
    for step, (got, batch) in enumerate(zip(run.shards, planned, strict=True), 1):
        want = [[part.ids for part in replica] for replica in layout.split(batch)]
        if len(got) != len(want) or not all(
            len(g) == len(w) and all(np.array_equal(np.asarray(a), b) for a, b in zip(g, w, strict=True))
            for g, w in zip(got, want, strict=True)
        ):
            fed = [[np.asarray(a).tolist() for a in g] for g in got]
            raise RuntimeError(
                f"{adapter.name} fed step {step} of epoch {epoch + 1} the shards {fed}, "
                f"the plan says {[[a.tolist() for a in w] for w in want]}"
            )


def _check_exact(adapter: Adapter, run: EpochRun, planned: list[Batch], epoch: int) -> None:
    """Exact mode: the pipeline delivered the plan's rows and padded lengths, step by step."""
    if len(run.ids) != len(planned) or len(run.losses) != len(planned):
        raise RuntimeError(
            f"{adapter.name} ran {len(run.ids)} steps ({len(run.losses)} losses) at epoch "
            f"{epoch + 1}, the plan has {len(planned)}"
        )
    for got, length, batch in zip(run.ids, run.lengths, planned, strict=True):
        got = np.asarray(got)
        if not np.array_equal(got, batch.ids):
            raise RuntimeError(
                f"{adapter.name} pipeline delivered rows {got.tolist()} at epoch {epoch + 1}, "
                f"the plan says {batch.ids.tolist()}"
            )
        if int(length) != batch.length:
            raise RuntimeError(
                f"{adapter.name} pipeline padded rows {got.tolist()} at epoch {epoch + 1} to length "
                f"{length}, the plan says {batch.length}"
            )


def _plans(spec: Spec, data: Dataset) -> tuple[BatchPlan, dict[str, list[Batch]]]:
    """The training plan and the evaluation batches of both splits."""
    seq = spec.sequence
    size = spec.batching.eval_batch_size
    if not data.is_sequence:
        return (
            BatchPlan.from_spec(spec, data.train_x.shape[0]),
            {split: eval_batches(getattr(data, f"{split}_x").shape[0], size) for split in ("train", "test")},
        )
    return (
        BatchPlan.from_spec(spec, data.train_x.shape[0], data.train_lengths),
        {
            split: eval_batches(data.lengths(split).shape[0], size, data.lengths(split), seq.max_len, seq.buckets)
            for split in ("train", "test")
        },
    )


def train(adapter: Adapter, spec: Spec, data: Dataset, progress: bool = False) -> dict:
    """Run the spec's training through `adapter`; return the record body (steps, epochs, params, timing).

    Each idiom (common.idioms) off shares what it names: the plan's batches (checked, common.idioms.plan_order), the
    canonical init (`default_init`), and the epoch's train_loss evaluated after the epoch like every other metric;
    with `fit_epoch_loss` on it is, for the frameworks the idiom names (not the oracle), the `fit`-style running mean
    of the step losses (common.native.running_epoch_loss).
    Adapters read the other idioms themselves; the record lists the ones on (`idioms`).
    """
    exact = plan_order(spec)
    plan, eval_plan = _plans(spec, data)
    layers = check_plan(spec, data)[1]
    layout = Layout.from_spec(spec)
    init = None if on(spec, "default_init") else canonical_init(spec, data)
    running_loss = on(spec, "fit_epoch_loss") and adapter.name in IDIOMS["fit_epoch_loss"].frameworks
    how = spec.metrics.aggregation

    started = time.perf_counter()
    adapter.prepare(spec, data, plan, layers, init)
    prepare_s = time.perf_counter() - started
    if init is None:
        init = {k: np.asarray(v) for k, v in adapter.parameters().items()}
    steps, epochs, epoch_seconds = [], [], []
    for epoch in range(spec.train.epochs):
        epoch_start = time.perf_counter()
        run = adapter.run_epoch(epoch, len(steps) + 1)
        epoch_seconds.append(time.perf_counter() - epoch_start)
        if exact:
            planned = plan.batches(epoch)
            _check_exact(adapter, run, planned, epoch)
            if layout.is_split:
                _check_shards(adapter, run, planned, layout, epoch)
            real = [batch.real_ids for batch in planned]
        else:
            real = [np.asarray(ids) for ids in run.ids]
        for k, (ids, length, loss) in enumerate(
            zip(real, run.lengths, np.asarray(run.losses, dtype=np.float64), strict=True)
        ):
            steps.append(
                {
                    "epoch": epoch + 1,
                    "step": len(steps) + 1,
                    "batch_ids": ids.tolist(),
                    "batch_size": int(ids.shape[0]),
                    "loss": float(loss),
                }
            )
            if layout.is_split:  # exact: the plan's split (checked); native: the real rows each part was fed
                steps[-1]["shards"] = (
                    shard_ids(layout.split(planned[k]))
                    if exact
                    else [[np.asarray(ids).tolist() for ids in replica] for replica in run.shards[k]]
                )
            if data.is_sequence:
                steps[-1]["padded_length"] = int(length)
        metrics = {"epoch": epoch + 1, **_epoch_metrics(adapter, eval_plan, how)}
        if running_loss and real:  # an epoch without an update (native accumulation) keeps the evaluation
            metrics["train_loss"] = running_epoch_loss(
                [float(v) for v in run.losses], [int(ids.shape[0]) for ids in real]
            )
        epochs.append(metrics)
        if progress:
            _progress(adapter.name, epoch + 1, spec.train.epochs, metrics["train_loss"])
    body = {
        "steps": steps,
        "epochs": epochs,
        "init": init,
        "final": {k: np.asarray(v) for k, v in adapter.parameters().items()},
        "timing": {"prepare_s": prepare_s, "epoch_s": epoch_seconds, "train_s": float(sum(epoch_seconds))},
    }
    if data.is_sequence:
        body["padding"] = dict(zip(("pad", "truncate"), resolve_sides(spec, adapter.name), strict=True))
    settings = layer_settings(spec, adapter.name, layers)
    if settings:
        body["layers"] = settings
    split = split_idiom(spec, adapter.name)
    if split:
        body["split"] = split
    body["idioms"] = sorted(active(spec))
    return body
