"""The TensorFlow / Keras 3 backend as a common.driver.Adapter.

The train step is one `tf.function` (graph mode) with an `input_signature` whose batch dimension is None, so the
ragged last batch under "keep" reuses the same graph instead of retracing. Inside it, `tf.GradientTape` records

    ce    = SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")(y, z, sample_weight=w)
    total = ce + Σ model.losses          (the Keras regularizer penalties, see optim.py)

and `optimizer.apply_gradients` applies ∇total. The reduction must be "mean_with_sample_weight" = Σw·ℓ/Σw: Keras's
default ("sum_over_batch_size") divides Σw·ℓ by the row count, which is wrong on a padded batch (DESIGN §5).
Only `ce` is returned: the recorded loss excludes penalties (Keras's `fit` would include them).

Sequence specs (common.spec.is_sequence: model.kind seq_pool / rnn) take the same step with the (B, T) int64 token
matrix as x and the row loss weights m_i (common.padding.loss_weights, formed in the pipeline) as sample weights:
Keras's "mean_with_sample_weight" is Σm·ℓ / Σm with `divide_no_nan`, which equals the canonical Σm·ℓ / max(Σm, 1)
because every m_i is 0 or ≥ 1 (an all-padded batch gives 0, not NaN). The batches come from
backends.tf_backend.sequence_data (pad_sequences / padded_batch / bucket_by_sequence_length), the model from
backends.tf_backend.sequence_model (Embedding(mask_zero) → masked mean pool → MLP, or → SimpleRNN → Dense). The
step's input signature is (None, None) for the tokens, so one trace serves every batch size and padded length.
execution = "compiled" works for sequences too: the same trace under XLA, compiled once per distinct (B, T) shape
(at most one per bucket and batch size with buckets; up to one per distinct batch-longest length without).

`spec["execution"]` picks how that step runs (backends.tf_backend.execution): eager = the tf.function graph above,
compiled = the same under XLA (`jit_compile=True`), fused = one XLA program per epoch over the plan's batches on
the device; the driver still sees one `train_step` per batch (the fused epoch runs at the epoch's first step and
hands back its losses one by one; the driver's masks for those steps are the same common.dropout masks, keyed by
seed and step, that the program was given).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from backends.tf_backend import data as pipeline
from backends.tf_backend import sequence_data, sequence_model
from backends.tf_backend.execution import FusedEpoch, compile_step, step_body
from backends.tf_backend.model import build_mlp, canonical_params, dense_variables, load_params
from backends.tf_backend.optim import KerasOptimizer, layer_regularizer, native_regularizer
from common.padding import resolve_sides
from common.spec import execution_of, is_sequence
from common.batching import Batch
from common.dropout import shared_masks
from common.initializers import layer_sizes
from common.regularization import Regularization


class TFAdapter:
    name = "tf"

    def __init__(self, spec: dict):
        self.spec = spec
        self.dtype = spec["dtype"]
        self.execution = execution_of(spec, "tf")
        if self.execution == "fused" and spec["mode"] != "exact":
            raise ValueError("tf: execution = 'fused' needs mode = 'exact' (the fused epoch runs the shared "
                             "BatchPlan on the device; native mode's order comes from tf.data.shuffle)")

    def versions(self) -> dict[str, str]:
        return {"tensorflow": tf.__version__, "keras": keras.__version__}

    def device(self) -> str:
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return "cpu"
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU:0 ({details.get('device_name', 'unknown')})"

    def prepare(self, spec, data, plan, params):
        keras.config.set_floatx(self.dtype)  # before the optimizer: its lr variable takes floatx
        self.plan = plan
        self.sequence = is_sequence(spec)
        if self.sequence:
            return self._prepare_sequence(spec, data, plan, params)
        self.x = {s: getattr(data, f"{s}_x").astype(self.dtype) for s in ("train", "test")}
        self.y = {s: getattr(data, f"{s}_y").astype(np.int64) for s in ("train", "test")}
        reg = Regularization.from_spec(spec)
        sizes = layer_sizes(data.n_features, spec["model"]["hidden"], data.n_classes)
        size_of = {}  # canonical name → number of entries (the L1 mean form divides by it)
        for i, (fan_in, fan_out) in enumerate(sizes):
            size_of[f"layer{i}.weight"], size_of[f"layer{i}.bias"] = fan_in * fan_out, fan_out
        rate = spec["regularization"]["dropout"]
        native = spec["mode"] == "native"
        if native:  # the framework's own idioms (common.native): nothing converted, nothing loaded
            regularizers = {name: native_regularizer(spec, reg, name) for name in size_of}
        else:
            regularizers = {name: layer_regularizer(reg, name, size_of[name], self.dtype) for name in size_of}
        self.model = build_mlp(sizes, spec["model"]["activation"], self.dtype, regularizers,
                               rate if native else 0.0, spec["seed"], seeded_init=native)
        variables = dense_variables(self.model)
        if native:
            self.optimizer = KerasOptimizer.native(spec, variables)
            self.native_ds = pipeline.native_dataset(self.x["train"], self.y["train"], spec)
        else:
            load_params(self.model, params)
            self.optimizer = KerasOptimizer.exact(spec, reg, variables, self.dtype)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight", dtype=self.dtype)
        self.mask_widths = spec["model"]["hidden"] if (rate > 0 and not native) else []
        body = step_body(self.model, self.optimizer.optimizer, self.loss_fn)
        self._step = compile_step(body, self.execution, data.n_features, self.dtype, self.mask_widths)
        self._fused = FusedEpoch(body, self.x["train"], self.y["train"], plan, spec, self.mask_widths,
                                 self.optimizer) if self.execution == "fused" else None
        self._epoch, self._pending = 0, []  # fused: the running epoch's losses not yet handed to the driver
        self._forward = self._make_eval(data.n_features)

    def _prepare_sequence(self, spec, data, plan, params):
        """prepare() for seq_pool / rnn (module docstring)."""
        native = spec["mode"] == "native"
        reg = Regularization.from_spec(spec)
        self.sides = resolve_sides(spec, "tf")
        self.splits = {s: sequence_data.SequenceSplit(getattr(data, f"{s}_x"), data.lengths(s),
                                                      getattr(data, f"{s}_y"), spec["sequence"])
                       for s in ("train", "test")}
        self.seq_pipeline = sequence_data.SequencePipeline(self.splits["train"], spec, self.sides, self.dtype)
        size_of = sequence_model.parameter_sizes(spec, data.vocab, data.n_classes)
        if native:
            regularizers = {name: native_regularizer(spec, reg, name) for name in size_of}
        else:
            regularizers = {name: layer_regularizer(reg, name, size_of[name], self.dtype) for name in size_of}
        rate = spec["regularization"]["dropout"]
        self.model = sequence_model.build_sequence_model(spec, data.vocab, data.n_classes, regularizers,
                                                         rate if native else 0.0, native_init=native)
        variables = sequence_model.sequence_variables(self.model)
        if native:
            self.optimizer = KerasOptimizer.native(spec, variables)
            self.native_ds = self.seq_pipeline.native()
        else:
            sequence_model.load_sequence_params(self.model, params)
            self.optimizer = KerasOptimizer.exact(spec, reg, variables, self.dtype)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight", dtype=self.dtype)
        self.mask_widths = spec["model"]["hidden"] if (rate > 0 and not native) else []
        # exact mode: the embedding's IndexedSlices gradient is densified (execution.step_body: Keras Adam's v trap);
        # native mode keeps what a Keras user gets
        body = step_body(self.model, self.optimizer.optimizer, self.loss_fn, dense_gradients=not native)
        tokens = tf.TensorSpec((None, None), tf.int64)
        self._step = compile_step(body, self.execution, 0, self.dtype, self.mask_widths, x_spec=tokens)
        self._fused, self._epoch, self._pending = None, 0, []
        model = self.model

        @tf.function(input_signature=[tokens, tf.TensorSpec((None,), tf.int64)])
        def forward(x, y):
            logits = model(x, training=False)
            return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True), tf.argmax(logits, 1)

        self._forward = forward

    def _make_eval(self, n_features: int):
        model = self.model

        @tf.function(input_signature=[tf.TensorSpec((None, n_features), self.dtype), tf.TensorSpec((None,), tf.int64)])
        def forward(x, y):
            logits = model(x, training=False)
            return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True), tf.argmax(logits, 1)

        return forward

    def epoch_batches(self, epoch):
        if self.spec["mode"] == "native":
            return self.native_ds  # each iteration reshuffles
        if self.sequence:
            return self.seq_pipeline.epoch(self.plan, epoch)
        if self._fused is not None:  # the fused program gathers the plan's rows on the device itself
            self._epoch = epoch
            return self.plan.batches(epoch)
        return pipeline.epoch_dataset(self.x["train"], self.y["train"], self.plan, epoch)

    def batch_ids(self, batch):
        if isinstance(batch, Batch):
            return batch.ids
        if isinstance(batch, dict):  # a sequence batch (sequence_data)
            return batch["ids"].numpy()
        return batch[3].numpy()  # every row fed; in native mode they are all real (weight 1)

    def batch_length(self, batch) -> int:
        """The time dimension T of a sequence batch's token matrix as tf.data delivered it; 0 for feature data."""
        if isinstance(batch, dict):
            return int(batch["tokens"].shape[1])
        return 0

    def _device_step(self, batch, step: int, masks) -> tf.Tensor:
        """One step of the tf.function (graph or XLA) on a tf.data batch; the loss tensor, not synchronised."""
        if isinstance(batch, dict):
            x, y, w = batch["tokens"], batch["labels"], batch["weights"]
        else:
            x, y, w, _ = batch
        self.optimizer.before_step(step)
        extra = [tf.convert_to_tensor(m, dtype=self.dtype) for m in masks] if masks is not None else []
        return self._step(x, y, w, *extra)

    def train_step(self, batch, step, masks):
        if self._fused is None:
            return float(self._device_step(batch, step, masks))
        if not self._pending:  # the epoch's first step: run the whole epoch as one program
            self._pending = self._fused.run(self._epoch, step).numpy().tolist()
        return self._pending.pop(0)

    def run_epoch(self, epoch: int) -> tf.Tensor:
        """One exact-mode epoch without a host sync per step (for timing); returns the last loss tensor(s)."""
        first = int(self.optimizer.optimizer.iterations.numpy()) + 1
        if self._fused is not None:
            return self._fused.run(epoch, first)
        loss = None
        for k, batch in enumerate(self.epoch_batches(epoch)):
            rows = int((batch["tokens"] if isinstance(batch, dict) else batch[0]).shape[0])
            loss = self._device_step(batch, first + k, shared_masks(
                self.spec["seed"], first + k, self.spec["regularization"]["dropout"], rows, self.mask_widths,
                self.dtype) if self.mask_widths else None)
        return loss

    def evaluate(self, split, batches):
        if self.sequence:
            return self._evaluate_sequence(split, batches)
        x, y = self.x[split], self.y[split]
        out = []
        for batch in batches:
            losses, predicted = self._forward(x[batch.ids], y[batch.ids])
            real = batch.weights > 0
            correct = predicted.numpy() == y[batch.ids]
            out.append((float(losses.numpy()[real].sum()), float(correct[real].sum()), int(real.sum())))
        return out

    def _evaluate_sequence(self, split, batches):
        """Eval batches padded to the plan's `Batch.length` with the resolved sides (Keras pad_sequences)."""
        data = self.splits[split]
        out = []
        for batch in batches:
            tokens = sequence_data.eval_tokens(data, batch.ids, batch.length, self.sides)
            labels = data.y[batch.ids]
            losses, predicted = self._forward(tokens, labels)
            real = batch.weights > 0
            correct = predicted.numpy() == labels
            out.append((float(losses.numpy()[real].sum()), float(correct[real].sum()), int(real.sum())))
        return out

    def parameters(self):
        if self.sequence:
            return sequence_model.canonical_sequence_params(self.model)
        return canonical_params(self.model)


def make_adapter(spec: dict) -> TFAdapter:
    return TFAdapter(spec)
