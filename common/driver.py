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
from common.initializers import initial_params, layer_sizes
from common.metrics import aggregate


class Adapter(Protocol):
    """What a backend implements. Arrays crossing this boundary are numpy, in the canonical layout."""

    name: str

    def versions(self) -> dict[str, str]:
        """Framework name → version (python and numpy are added by the driver)."""

    def device(self) -> str:
        """Where the computation runs, e.g. 'cpu' or 'cuda:0 (NVIDIA H100)'."""

    def prepare(self, spec: dict, data: Dataset, plan: BatchPlan, params: dict[str, np.ndarray]) -> None:
        """Build the native pipeline, model (loaded with `params`) and optimizer for a resolved spec."""

    def epoch_batches(self, epoch: int) -> Iterable[Any]:
        """The epoch's batches through the framework's native pipeline, in plan order."""

    def batch_ids(self, batch: Any) -> np.ndarray:
        """All row ids of a native batch as the pipeline delivered them (filler rows included)."""

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
    sizes = layer_sizes(data.n_features, spec["model"]["hidden"], data.n_classes)
    return initial_params(spec["model"]["init"], sizes, spec["seed"], np.dtype(spec["dtype"]))


def _progress(name: str, epoch: int, epochs: int, loss: float) -> None:
    print(f"[{name}] epoch {epoch}/{epochs} loss {loss:.6g}", file=sys.stderr, flush=True)


def train(adapter: Adapter, spec: dict, data: Dataset, progress: bool = False) -> dict:
    """Run the spec's training through `adapter`; return the record body (steps, epochs, params, timing)."""
    plan = BatchPlan.from_spec(spec, data.train_x.shape[0])
    init = canonical_init(spec, data)
    widths = spec["model"]["hidden"]
    rate = spec["regularization"]["dropout"] if spec["mode"] == "exact" else 0.0
    dtype = np.dtype(spec["dtype"])
    how = spec["metrics"]["aggregation"]
    eval_plan = {split: eval_batches(n, spec["batching"]["eval_batch_size"])
                 for split, n in (("train", data.train_x.shape[0]), ("test", data.test_x.shape[0]))}

    started = time.perf_counter()
    adapter.prepare(spec, data, plan, init)
    prepare_s = time.perf_counter() - started
    steps, epochs, epoch_seconds, first_step_s = [], [], [], None
    step = 0
    for epoch in range(spec["train"]["epochs"]):
        epoch_start = time.perf_counter()
        planned = plan.batches(epoch)
        for planned_batch, native_batch in zip(planned, adapter.epoch_batches(epoch), strict=True):
            got = np.asarray(adapter.batch_ids(native_batch))
            if not np.array_equal(got, planned_batch.ids):
                raise RuntimeError(f"{adapter.name} pipeline delivered rows {got.tolist()} at epoch {epoch + 1}, "
                                   f"the plan says {planned_batch.ids.tolist()}")
            step += 1
            masks = shared_masks(spec["seed"], step, rate, planned_batch.rows, widths, dtype)
            t0 = time.perf_counter()
            loss = adapter.train_step(native_batch, step, masks)
            if first_step_s is None:
                first_step_s = time.perf_counter() - t0
            steps.append({"epoch": epoch + 1, "step": step, "batch_ids": planned_batch.real_ids.tolist(),
                          "batch_size": planned_batch.n_real, "loss": float(loss)})
        epoch_seconds.append(time.perf_counter() - epoch_start)
        metrics = {"epoch": epoch + 1}
        for split, batches in eval_plan.items():
            sums = adapter.evaluate(split, batches)
            metrics[f"{split}_loss"] = aggregate([s[0] for s in sums], [s[2] for s in sums], how)
            metrics[f"{split}_acc"] = aggregate([s[1] for s in sums], [s[2] for s in sums], how)
        metrics["eval_batch_sizes"] = {split: [b.rows for b in batches] for split, batches in eval_plan.items()}
        epochs.append(metrics)
        if progress:
            _progress(adapter.name, epoch + 1, spec["train"]["epochs"], metrics["train_loss"])
    return {
        "steps": steps,
        "epochs": epochs,
        "init": init,
        "final": {k: np.asarray(v) for k, v in adapter.parameters().items()},
        "timing": {"prepare_s": prepare_s, "first_step_s": first_step_s, "epoch_s": epoch_seconds,
                   "train_s": float(sum(epoch_seconds))},
    }
