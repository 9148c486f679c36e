"""What a backend offers the throughput benchmark (docs/design.md, "Performance methodology"), framework-free.

Each framework's `backends/<fw>_backend/bench.py` exposes

    MODES: tuple[str, ...]                     the execution modes it has ("eager", "compiled", "fused")
    LOADERS: tuple[str, ...]                   its native input pipelines (e.g. "naive", "fast")
    def make_target(spec, data, mode, device) -> BenchTarget

and `reference_loop.py` its references, loops written as idiomatic code in that framework writes them at its
fastest, the yardstick of its modes:

    REFERENCES: tuple[str, ...]               the reference variants (e.g. "eager", "compiled", "graph")
    def make_reference(spec, data, device, variant) -> EpochRunner   (raises for a variant the device lacks)

A reference trains on the plan's rows: epoch e's order is `BatchPlan.slots(e)` (drawn on the host, e counting the
runner's epochs from 0), a short last batch padded with weight-0 rows to one static shape (the same mean loss as
"keep"), the canonical init, the spec's optimizer. So its per-step losses are checked against the eager mode's
exact-mode losses like a mode's, on exactly the code path that is timed: `epoch()` returns the epoch's per-step
losses on the device, and `equivalence_losses(epochs)` is a fresh runner's `epoch()` called `epochs` times, fetched.
A spec whose layers draw their own randomness (dropout) cannot be checked this way; the bench notes it.
Items per call, for batch size B and N training rows: loader alone N (the pipeline's epoch, batches on the
device, no model), step alone B (one step on a batch already on the device), end to end N (one epoch), placed N
(one epoch over inputs already on the device). Every mode
first reproduces the eager adapter's exact-mode losses (`equivalence_losses`) before it is timed.
"""

from __future__ import annotations

from typing import Any, Protocol

# the layer kinds (common.layers) the hand-fused jax and tf references write out by hand; the torch reference
# builds the adapter's own modules and runs any feature or image stack
HAND_FUSED_KINDS = (
    "dense",
    "dropout",
    "relu",
    "tanh",
    "conv2d",
    "max_pool",
    "avg_pool",
    "global_avg_pool",
    "flatten",
    "batch_norm",
)


class BenchTarget(Protocol):
    mode: str

    def settings(self) -> dict[str, Any]:
        """Versions, device name, thread counts and precision (TF32) settings, for the record."""

    def loader_epoch(self, loader: str) -> Any:
        """Iterate one epoch of the named native pipeline, each batch placed on the device; return a syncable."""

    def step(self) -> Any:
        """One training step on a fixed batch already on the device; return something `sync` can wait on."""

    def epoch(self) -> Any:
        """One end-to-end training epoch (fast loader + steps); return a syncable."""

    def placed_epoch(self) -> Any:
        """The same training loop as `epoch` (the adapter's run_epoch) over inputs already on the device: the
        adapter's `epoch_inputs` of epoch 0, made once and held; return a syncable. epoch − placed_epoch is the
        loader's share of the epoch."""

    def sync(self, result: Any) -> None:
        """Block until the device has finished `result` (torch.cuda.synchronize, block_until_ready, .numpy())."""

    def equivalence_losses(self, epochs: int) -> list[float]:
        """The per-step losses of this mode trained in exact mode for `epochs` epochs from the canonical init."""


class EpochRunner(Protocol):
    def epoch(self) -> Any:
        """One training epoch in the plan's order; return its per-step losses on the device (a syncable)."""

    def sync(self, result: Any) -> None:
        """As BenchTarget.sync."""

    def equivalence_losses(self, epochs: int) -> list[float]:
        """A fresh runner of this variant: the per-step losses of `epoch()` called `epochs` times, fetched."""
