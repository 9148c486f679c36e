"""The framework-free training loop every backend runs through (DESIGN §3).

A backend supplies an :class:`Adapter` that translates; the driver decides. Per epoch e (0-based) it walks the
adapter's *native* pipeline and the BatchPlan side by side, checks that the pipeline delivered exactly the plan's
rows, hands the step its shared dropout masks (exact mode) and records, per step t (global, 1-based), the loss of
that step's forward pass in training mode before the update. After each epoch it evaluates both splits in eval
mode and aggregates the per-batch sums with `common.metrics.aggregate`.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Protocol

import numpy as np

from common.batching import Batch, BatchPlan, eval_batches
from common.datasets import Dataset
from common.dropout import shared_masks
from common.initializers import initial_params, layer_sizes, sequence_params
from common.metrics import aggregate
from common.native import running_epoch_loss
from common.padding import resolve_sides
from common.spec import is_sequence


class Adapter(Protocol):
    """What a backend implements. Arrays crossing this boundary are numpy, in the canonical layout."""

    name: str

    def versions(self) -> dict[str, str]:
        """Framework name → version (python and numpy are added by the driver)."""

    def device(self) -> str:
        """Where the computation runs, e.g. 'cpu' or 'cuda:0 (NVIDIA H100)'."""

    def prepare(self, spec: dict, data: Dataset, plan: BatchPlan, params: dict[str, np.ndarray] | None) -> None:
        """Build the native pipeline, model and optimizer for a resolved spec.

        Exact mode: load `params` and follow `plan`. Native mode (`params` is None): the framework's own default
        init, shuffle and the idioms of common.native.
        """

    def epoch_batches(self, epoch: int) -> Iterable[Any]:
        """The epoch's batches through the framework's native pipeline, in plan order."""

    def batch_ids(self, batch: Any) -> np.ndarray:
        """Row ids of a native batch as the pipeline delivered them: every row fed (filler included) in exact
        mode, where the driver checks them against the plan; the real rows only in native mode."""

    def batch_length(self, batch: Any) -> int:
        """The padded length T of a native sequence batch as the pipeline delivered it (the token tensor's time
        dimension); 0 for feature data. Exact mode checks it against the plan's `Batch.length`."""

    def train_step(self, batch: Any, step: int, masks: list[np.ndarray] | None) -> float:
        """One update; returns the batch's cross-entropy Σw·ℓ/Σw from the pre-update training forward pass.

        `masks` are the pre-scaled shared dropout masks (exact mode) or None (no dropout, or native dropout).
        """

    def evaluate(self, split: str, batches: list[Batch]) -> list[tuple[float, float, int]]:
        """Eval mode (no dropout) over `split` ('train' or 'test'): per batch (Σ ℓ, number correct, n)."""

    def parameters(self) -> dict[str, np.ndarray]:
        """Current parameters in the canonical layout (`layer{i}.weight` (in, out), `layer{i}.bias`)."""


def canonical_init(spec: dict, data: Dataset) -> dict[str, np.ndarray]:
    """The shared initial parameters for a spec and dataset."""
    if is_sequence(spec):
        return sequence_params(spec, data.vocab, data.n_classes)
    sizes = layer_sizes(data.n_features, spec["model"]["hidden"], data.n_classes)
    return initial_params(spec["model"]["init"], sizes, spec["seed"], np.dtype(spec["dtype"]))


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


def _exact_ids(adapter: Adapter, native_batch, planned: Batch, epoch: int) -> Batch:
    got = np.asarray(adapter.batch_ids(native_batch))
    if not np.array_equal(got, planned.ids):
        raise RuntimeError(f"{adapter.name} pipeline delivered rows {got.tolist()} at epoch {epoch + 1}, "
                           f"the plan says {planned.ids.tolist()}")
    length = int(adapter.batch_length(native_batch))
    if length != planned.length:
        raise RuntimeError(f"{adapter.name} pipeline padded rows {got.tolist()} at epoch {epoch + 1} to length "
                           f"{length}, the plan says {planned.length}")
    return planned


def _plans(spec: dict, data: Dataset) -> tuple[BatchPlan, dict[str, list[Batch]]]:
    """The training plan and the evaluation batches of both splits."""
    seq = spec["sequence"]
    size = spec["batching"]["eval_batch_size"]
    if not data.is_sequence:
        return (BatchPlan.from_spec(spec, data.train_x.shape[0]),
                {split: eval_batches(getattr(data, f"{split}_x").shape[0], size) for split in ("train", "test")})
    return (BatchPlan.from_spec(spec, data.train_x.shape[0], data.train_lengths),
            {split: eval_batches(data.lengths(split).shape[0], size, data.lengths(split), seq["max_len"],
                                 seq["buckets"]) for split in ("train", "test")})


def train(adapter: Adapter, spec: dict, data: Dataset, progress: bool = False) -> dict:
    """Run the spec's training through `adapter`; return the record body (steps, epochs, params, timing).

    Exact mode: the plan's batches (checked), the canonical init and shared masks; the epoch's train_loss is
    evaluated after the epoch like every other metric. Native mode: the adapter's own order, init and dropout; the
    epoch's train_loss is the `fit`-style running mean of its step losses (common.native.running_epoch_loss).
    """
    exact = spec["mode"] == "exact"
    plan, eval_plan = _plans(spec, data)
    init = canonical_init(spec, data) if exact else None
    widths = spec["model"]["hidden"]
    rate = spec["regularization"]["dropout"] if exact else 0.0
    dtype = np.dtype(spec["dtype"])
    how = spec["metrics"]["aggregation"]

    started = time.perf_counter()
    adapter.prepare(spec, data, plan, init)
    prepare_s = time.perf_counter() - started
    if init is None:
        init = {k: np.asarray(v) for k, v in adapter.parameters().items()}
    steps, epochs, epoch_seconds, first_step_s = [], [], [], None
    step = 0
    for epoch in range(spec["train"]["epochs"]):
        epoch_start = time.perf_counter()
        native_batches = adapter.epoch_batches(epoch)
        pairs = zip(plan.batches(epoch), native_batches, strict=True) if exact else ((None, b) for b in native_batches)
        epoch_losses, epoch_sizes = [], []
        for planned, native_batch in pairs:
            step += 1
            if exact:
                real_ids = _exact_ids(adapter, native_batch, planned, epoch).real_ids
                masks = shared_masks(spec["seed"], step, rate, planned.rows, widths, dtype)
            else:
                real_ids, masks = np.asarray(adapter.batch_ids(native_batch)), None
            t0 = time.perf_counter()
            loss = float(adapter.train_step(native_batch, step, masks))
            if first_step_s is None:
                first_step_s = time.perf_counter() - t0
            steps.append({"epoch": epoch + 1, "step": step, "batch_ids": real_ids.tolist(),
                          "batch_size": int(real_ids.shape[0]), "loss": loss})
            if data.is_sequence:
                steps[-1]["padded_length"] = int(adapter.batch_length(native_batch))
            epoch_losses.append(loss)
            epoch_sizes.append(int(real_ids.shape[0]))
        epoch_seconds.append(time.perf_counter() - epoch_start)
        metrics = {"epoch": epoch + 1, **_epoch_metrics(adapter, eval_plan, how)}
        if not exact:
            metrics["train_loss"] = running_epoch_loss(epoch_losses, epoch_sizes)
        epochs.append(metrics)
        if progress:
            _progress(adapter.name, epoch + 1, spec["train"]["epochs"], metrics["train_loss"])
    body = {
        "steps": steps,
        "epochs": epochs,
        "init": init,
        "final": {k: np.asarray(v) for k, v in adapter.parameters().items()},
        "timing": {"prepare_s": prepare_s, "first_step_s": first_step_s, "epoch_s": epoch_seconds,
                   "train_s": float(sum(epoch_seconds))},
    }
    if data.is_sequence:
        body["padding"] = dict(zip(("pad", "truncate"), resolve_sides(spec, adapter.name)))
    return body
