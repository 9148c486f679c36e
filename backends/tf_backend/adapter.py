"""The TensorFlow / Keras 3 backend as a common.driver.Adapter (docs/design.md, "Architecture").

prepare: the tf.data pipeline of the data (backends.tf_backend.data), the Keras model of the layer stack
(backends.tf_backend.model), the Keras optimizer and regularizers (backends.tf_backend.optim), and the epoch
runner of `spec.execution` (backends.tf_backend.execution). The loss is

    ce = SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")(y, z, sample_weight=m)

= Σ m·ℓ / Σ m with `divide_no_nan`, the canonical Σ m·ℓ / max(Σ m, 1) since every m is 0 or ≥ 1 (Keras's default
reduction divides by the row count, wrong on a padded batch). Only ce is recorded; the Keras penalties in
`model.losses` are trained, not recorded. `parameters` and the canonical init both hold the batch_norm state
(`bn{i}.mean`, `bn{i}.var`, the Keras moving statistics), which the optimizer never sees
(backends.tf_backend.optim). A split step (common.distributed: replicas or accumulated micro-batches) builds the
model and optimizer under the step's tf.distribute strategy and runs on backends.tf_backend.distributed: each
part's loss Σ w·ℓ (Keras reduction "sum") scaled there, or with the idiom `split_step` a port's
`tf.nn.compute_average_loss` over tf.data's global batches (common.native.SPLIT_IDIOMS).
Idioms read here (common.idioms): `default_init` (params is None: Keras's seeded default init kept),
`sparse_embedding_adam` (the Embedding's IndexedSlices gradient kept), `split_step` (the runner), `order` and
`split_step` (fused needs neither); the others are read by the modules that build what they change.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from backends.tf_backend import data as pipelines
from backends.tf_backend import distributed, execution, optim
from backends.tf_backend import model as stack
from common.distributed import Layout
from common.driver import EpochRun
from common.idioms import on, plan_order
from common.spec import Spec, execution_of


class TFAdapter:
    name = "tf"

    def __init__(self, spec: Spec):
        self.execution = execution_of(spec, "tf")
        if self.execution == "fused" and not plan_order(spec):
            raise ValueError(
                "tf: execution = 'fused' needs mode = 'exact' without the idioms order and split_step (the fused "
                "epoch runs the shared BatchPlan on the device; native mode's order comes from tf.data.shuffle)"
            )

    def versions(self) -> dict[str, str]:
        return {"tensorflow": tf.__version__, "keras": keras.__version__}

    def device(self) -> str:
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return "cpu"
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU:0 ({details.get('device_name', 'unknown')})"

    def prepare(self, spec, data, plan, layers, params):
        keras.config.set_floatx(spec.dtype)  # before the optimizer: its lr variable takes floatx
        layout = Layout.from_spec(spec)
        strategy = distributed.strategy(layout.replicas)
        self.pipeline = pipelines.pipeline(spec, data, plan)
        with strategy.scope():  # split steps: the variables mirrored over the replicas (default strategy: as is)
            self.model = stack.build(layers, spec, optim.regularizers(spec, layers))
            variables = stack.variables(self.model)
            if params is not None:
                stack.load_canonical(self.model, params)
            self.optimizer = optim.KerasOptimizer(spec, variables)
        masks = execution.Masks(spec, layers, not on(spec, "dropout_rng"))
        if layout.is_split and not on(spec, "split_step"):
            if on(spec, "order"):
                raise ValueError(
                    "tf: the idiom order (tf.data's shuffle) under split steps needs split_step too (the exact "
                    "split engine feeds the plan's parts)"
                )
            loss_sum = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum", dtype=spec.dtype)
            self.runner = distributed.Split(
                strategy, layout, self.model, self.optimizer, self.pipeline, self.execution, loss_sum, masks
            )
        elif layout.is_split:
            self.runner = distributed.NativeSplit(
                strategy, layout, self.model, self.optimizer, self.pipeline, self.execution
            )
        else:
            loss_fn = keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, reduction="mean_with_sample_weight", dtype=spec.dtype
            )
            body = execution.step_body(
                self.model, self.optimizer.optimizer, loss_fn, dense_gradients=not on(spec, "sparse_embedding_adam")
            )
            self.runner = execution.runner(self.execution, body, self.pipeline, self.optimizer, masks, plan_order(spec))
        self._forward = tf.function(
            self._eval_forward,
            input_signature=[self.pipeline.x_spec, tf.TensorSpec((None,), tf.int64)],
            autograph=False,  # straight-line code (execution.py's module docstring, AUTOGRAPH)
        )

    def _eval_forward(self, x, y):
        logits = self.model(x, training=False)
        losses = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        return losses, tf.equal(tf.argmax(logits, 1), y)

    def epoch_inputs(self, epoch: int, first_step: int):
        """What `run_epoch` steps over, from the pipeline (execution.py's runners: the tf.data iterator, or the
        compiled / fused program's plan inputs); `list()` of it holds them on the device (the bench's loop without
        its loader)."""
        return self.runner.inputs(epoch, first_step)

    def run_epoch(self, epoch: int, first_step: int, inputs=None) -> EpochRun:
        """One training epoch over `inputs` (`epoch_inputs`; by default the pipeline's, made as the loop goes)."""
        self.optimizer.check_next_step(first_step)
        return self.runner.run(epoch, first_step, inputs)

    def evaluate(self, split, batches):
        out = []
        for batch in batches:
            rows = self.pipeline.eval_rows(split, batch)
            losses, correct = self._forward(rows.x, rows.y)
            real = batch.weights > 0
            out.append((float(losses.numpy()[real].sum()), float(correct.numpy()[real].sum()), int(real.sum())))
        return out

    def parameters(self):
        return stack.to_canonical(self.model)


def make_adapter(spec: Spec) -> TFAdapter:
    return TFAdapter(spec)
