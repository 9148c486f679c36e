"""The TensorFlow / Keras 3 backend as a common.driver.Adapter.

The train step is one `tf.function` (graph mode) with an `input_signature` whose batch dimension is None, so the
ragged last batch under "keep" reuses the same graph instead of retracing. Inside it, `tf.GradientTape` records

    ce    = SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")(y, z, sample_weight=w)
    total = ce + Σ model.losses          (the Keras regularizer penalties, see optim.py)

and `optimizer.apply_gradients` applies ∇total. The reduction must be "mean_with_sample_weight" = Σw·ℓ/Σw: Keras's
default ("sum_over_batch_size") divides Σw·ℓ by the row count, which is wrong on a padded batch (DESIGN §5).
Only `ce` is returned: the recorded loss excludes penalties (Keras's `fit` would include them).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from backends.tf_backend import data as pipeline
from backends.tf_backend.model import build_mlp, canonical_params, dense_variables, load_params
from backends.tf_backend.optim import KerasOptimizer, layer_regularizer, native_regularizer
from common.initializers import layer_sizes
from common.regularization import Regularization


class TFAdapter:
    name = "tf"

    def __init__(self, spec: dict):
        self.spec = spec
        self.dtype = spec["dtype"]

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
        mask_widths = spec["model"]["hidden"] if (rate > 0 and not native) else []
        self._step = self._make_step(data.n_features, mask_widths)
        self._forward = self._make_eval(data.n_features)

    def _make_step(self, n_features: int, mask_widths: list[int]):
        model, optimizer, loss_fn = self.model, self.optimizer.optimizer, self.loss_fn
        signature = [tf.TensorSpec((None, n_features), self.dtype), tf.TensorSpec((None,), tf.int64),
                     tf.TensorSpec((None,), self.dtype)] + [tf.TensorSpec((None, w), self.dtype) for w in mask_widths]

        @tf.function(input_signature=signature)
        def step(x, y, w, *masks):
            with tf.GradientTape() as tape:
                logits = model(x, masks=list(masks) if masks else None, training=True)
                ce = loss_fn(y, logits, sample_weight=w)
                total = ce + sum(model.losses)
            variables = model.trainable_variables
            optimizer.apply_gradients(zip(tape.gradient(total, variables), variables))
            return ce

        return step

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
        return pipeline.epoch_dataset(self.x["train"], self.y["train"], self.plan, epoch)

    def batch_ids(self, batch):
        return batch[3].numpy()  # every row fed; in native mode they are all real (weight 1)

    def train_step(self, batch, step, masks):
        x, y, w, _ = batch
        self.optimizer.before_step(step)
        extra = [tf.convert_to_tensor(m, dtype=self.dtype) for m in masks] if masks is not None else []
        return float(self._step(x, y, w, *extra))

    def evaluate(self, split, batches):
        x, y = self.x[split], self.y[split]
        out = []
        for batch in batches:
            losses, predicted = self._forward(x[batch.ids], y[batch.ids])
            real = batch.weights > 0
            correct = predicted.numpy() == y[batch.ids]
            out.append((float(losses.numpy()[real].sum()), float(correct[real].sum()), int(real.sum())))
        return out

    def parameters(self):
        return canonical_params(self.model)


def make_adapter(spec: dict) -> TFAdapter:
    return TFAdapter(spec)
