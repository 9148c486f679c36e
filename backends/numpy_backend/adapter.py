"""The oracle as a common.driver.Adapter: float64 throughout, whatever the spec's dtype.

Native mode: numpy's idioms are the canonical ones (spec init, plan order), but dropout masks come from its own
`default_rng(seed)` stream in call order, not the shared per-step masks, as a framework with its own RNG would.
Sequence specs (seq_pool, rnn) run through backends.numpy_backend.sequence_model on batches padded by
backends.numpy_backend.data (numpy's "native" padding is post/post, the canonical form); native mode is the same
with the own dropout stream (one mask per hidden width: the MLP layers of seq_pool, the final state of rnn).
"""

from __future__ import annotations

import numpy as np

from backends.numpy_backend import data as pipeline
from backends.numpy_backend import sequence_model
from backends.numpy_backend.model import forward, loss_and_grads
from backends.numpy_backend.optim import CanonicalOptimizer
from common.driver import canonical_init
from common.dropout import keep_scale
from common.metrics import cross_entropy
from common.regularization import Regularization
from common.spec import is_sequence


class NumpyOracle:
    name = "numpy"

    def __init__(self, spec: dict):
        self.spec = spec
        self.activation = spec["model"]["activation"]
        self.native_rng = np.random.default_rng(spec["seed"])
        self.sequence = is_sequence(spec)
        self.kind = spec["model"]["kind"]
        self.use_mask = self.sequence and spec["sequence"]["mask"]

    def versions(self) -> dict[str, str]:
        return {}

    def device(self) -> str:
        return "cpu (numpy float64)"

    def prepare(self, spec, data, plan, params):
        self.data, self.plan = data, plan
        if params is None:
            params = canonical_init(spec, data)
        self.params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        self.optimizer = CanonicalOptimizer(spec, Regularization.from_spec(spec))

    def epoch_batches(self, epoch):
        if self.sequence:
            return pipeline.sequence_epoch_batches(self.spec, self.plan, epoch, self.data)
        return pipeline.epoch_batches(self.plan, epoch, self.data.train_x, self.data.train_y)

    def batch_length(self, batch) -> int:
        return batch.length if self.sequence else 0

    def batch_ids(self, batch):
        return batch.ids if self.spec["mode"] == "exact" else batch.ids[batch.weights > 0]

    def _native_masks(self, rows: int) -> list[np.ndarray] | None:
        rate = self.spec["regularization"]["dropout"]
        if self.spec["mode"] != "native" or rate == 0.0:
            return None
        return [(self.native_rng.random((rows, w)) >= rate) * keep_scale(rate) for w in self.spec["model"]["hidden"]]

    def train_step(self, batch, step, masks):
        if masks is not None:
            masks = [np.asarray(m, dtype=np.float64) for m in masks]
        else:
            masks = self._native_masks(batch.ids.shape[0])
        if self.sequence:
            loss, grads = sequence_model.loss_and_grads(
                self.params, batch.tokens, batch.mask if self.use_mask else None, batch.y, batch.row_weights,
                self.kind, self.activation, masks)
        else:
            loss, grads = loss_and_grads(self.params, batch.x, batch.y, batch.weights, self.activation, masks)
        self.optimizer.step(self.params, grads)
        return loss

    def evaluate(self, split, batches):
        x = getattr(self.data, f"{split}_x")
        y = getattr(self.data, f"{split}_y")
        out = []
        for batch in batches:
            if self.sequence:
                b = pipeline.sequence_batch(self.spec, self.data, split, batch)
                logits, _ = sequence_model.forward(self.params, b.tokens, b.mask if self.use_mask else None,
                                                   self.kind, self.activation, None)
            else:
                b = pipeline.split_arrays(x, y, batch)
                logits, _ = forward(self.params, b.x, self.activation, None)
            real = b.weights > 0
            losses = cross_entropy(logits, b.y)
            correct = np.argmax(logits, axis=1) == b.y
            out.append((float(losses[real].sum()), float(correct[real].sum()), int(real.sum())))
        return out

    def parameters(self):
        return dict(self.params)


def make_adapter(spec: dict) -> NumpyOracle:
    return NumpyOracle(spec)
