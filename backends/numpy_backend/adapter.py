"""The oracle as a common.driver.Adapter: float64 throughout, whatever the spec's dtype or layer stack.

Exact mode: the plan's batches, the canonical init and, per global step, the shared dropout masks of
common.dropout (drawn in the spec's dtype, the values every backend multiplies by, then widened). Native mode:
numpy's idioms are the canonical ones (spec init, plan order, post/post padding), but the dropout layers draw their
masks from the oracle's own `default_rng(seed)` stream in call order, as a framework with its own RNG would
(docs/design.md, "Native mode"); native steps list the real rows only.
"""

from __future__ import annotations

import numpy as np

from backends.numpy_backend import data as pipeline
from backends.numpy_backend.model import build, load_canonical, to_canonical
from backends.numpy_backend.optim import CanonicalOptimizer
from common.distributed import Layout
from common.driver import EpochRun, canonical_init
from common.dropout import shared_masks
from common.idioms import on, plan_order
from common.metrics import cross_entropy
from common.regularization import Regularization
from common.spec import Spec


class NumpyOracle:
    name = "numpy"

    def __init__(self, spec: Spec):
        self.spec = spec

    def versions(self) -> dict[str, str]:
        return {}

    def device(self) -> str:
        return "cpu (numpy float64)"

    def prepare(self, spec, data, plan, layers, params):
        self.spec, self.data, self.plan, self.layers = spec, data, plan, layers
        self.exact = plan_order(spec)  # the driver checks the plan's ids, filler included
        self.model = build(layers, spec)
        self.params = load_canonical(canonical_init(spec, data) if params is None else params)
        self.native_rng = np.random.default_rng(spec.seed) if on(spec, "dropout_rng") else None
        self.optimizer = CanonicalOptimizer(spec, Regularization.from_spec(spec))
        self.layout = Layout.from_spec(spec)

    def _shared_masks(self, step: int, rows: int) -> list[np.ndarray] | None:
        if self.native_rng is not None:
            return None
        masks = shared_masks(self.spec.seed, step, self.layers, rows, np.dtype(self.spec.dtype))
        return None if masks is None else [m.astype(np.float64) for m in masks]

    def _split_step(self, step: int, batch) -> tuple[float, list[list[np.ndarray]]]:
        """One optimizer step over the parts of common.distributed.Layout.split, serially: per micro-batch one pass
        over its replicas' rows (each row's replica in `groups`: batch_norm's per-replica statistics), the gradient
        of Σ w·ℓ·s (Layout.part_scales, an engine that sums: A = 1, s the row's part's) added over the micro-batches,
        then one optimizer step. The penalty terms are the optimizer's (CanonicalOptimizer), once per step; native
        mode draws the dropout masks from the oracle's own stream. Returns the step's loss Σ w·ℓ / Σ w and the ids
        each part was fed (real rows only in native mode, as native steps list them)."""
        layout = self.layout
        parts = layout.split(batch)
        masks = self._shared_masks(step, layout.step_rows)
        scales = layout.part_scales([[p.weights.sum() for p in replica] for replica in parts], averaged=1)
        grads, loss_sum = {}, 0.0
        for k in range(layout.accumulate):
            rows = [pipeline.rows(self.spec, self.data, "train", replica[k]) for replica in parts]
            x, y, w = (np.concatenate([getattr(r, name) for r in rows]) for name in ("x", "y", "weights"))
            groups = np.repeat(np.arange(layout.replicas), layout.shard)
            micro = slice(k * layout.micro, (k + 1) * layout.micro)
            losses, micro_grads = self.model.weighted_grads(
                self.params,
                x,
                y,
                w * scales[groups, k],
                w > 0,
                None if masks is None else [m[micro] for m in masks],
                self.native_rng,
                groups,
            )
            loss_sum += float(np.sum(losses * w))
            for name, g in micro_grads.items():
                grads[name] = grads.get(name, 0.0) + g
        self.optimizer.step(self.params, grads)
        fed = [[p.ids if self.exact else p.real_ids for p in replica] for replica in parts]
        return loss_sum / max(float(batch.weights.sum()), 1.0), fed

    def run_epoch(self, epoch, first_step):
        if self.layout.is_split:
            steps = [self._split_step(step, b) for step, b in enumerate(self.plan.batches(epoch), first_step)]
            batches = self.plan.batches(epoch)
            return EpochRun(
                [b.ids if self.exact else b.real_ids for b in batches],
                [0] * len(batches),
                np.array([s[0] for s in steps]),
                [s[1] for s in steps],
            )
        ids, lengths, losses = [], [], []
        for step, batch in enumerate(pipeline.epoch_rows(self.spec, self.data, self.plan, epoch), first_step):
            loss, grads = self.model.loss_and_grads(
                self.params,
                batch.x,
                batch.y,
                batch.weights,
                self._shared_masks(step, batch.ids.shape[0]),
                self.native_rng,
            )
            self.optimizer.step(self.params, grads)
            ids.append(batch.ids if self.exact else batch.ids[batch.weights > 0])
            lengths.append(batch.length)
            losses.append(loss)
        return EpochRun(ids, lengths, np.array(losses))

    def evaluate(self, split, batches):
        out = []
        for batch in batches:
            b = pipeline.rows(self.spec, self.data, split, batch)
            logits, _ = self.model.forward(self.params, b.x)
            real = b.weights > 0
            correct = np.argmax(logits, axis=1) == b.y
            out.append((float(cross_entropy(logits, b.y)[real].sum()), float(correct[real].sum()), int(real.sum())))
        return out

    def parameters(self):
        return to_canonical(self.params)


def make_adapter(spec: Spec) -> NumpyOracle:
    return NumpyOracle(spec)
