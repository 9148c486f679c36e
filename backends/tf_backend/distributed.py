"""Split steps on TensorFlow's own data-parallel engine: `tf.distribute.MirroredStrategy` over R logical CPU
devices, gradients accumulated over the K micro-batches inside each replica, one Keras `apply_gradients` per
optimizer step (docs/design.md, "Data parallelism and accumulation"; the contract is common.distributed).

Devices. `reserve_devices(R)` cuts the host CPU into R logical devices before the runtime starts (backends.worker
calls it first); `strategy(R)` mirrors the variables over the first R with `ReductionToOneDevice` as the
cross-device ops: the replicas' values added in replica order on one device and broadcast, a plain deterministic
sum (what TF itself picks for non-GPU devices; the CPU default, a RING collective, cuts each tensor into chunks
reduced in different orders). R = 1 (accumulation alone) runs the same step under TF's default strategy.

Input. Each step's batch is split (`Layout.split`) and each (step, replica) becomes one tf.data element of its K
parts, (K, c, ...) each: rows, weights, ids, the part scales s and the parts' slices (`Layout.rows`) of the step's
shared dropout masks drawn for S rows. `distribute_datasets_from_function` hands an input pipeline's elements to
its replicas in turn, so replica r is fed exactly `layout.split(batch)[r][k]`.

Step. Per replica (`strategy.run`), per micro-batch k, a GradientTape of

    Σ w·ℓ · s_k + (A / P) · Σ model.losses           (Layout.part_scales, Layout.penalty_scale; A = 1)

the K gradients summed in the replica, then `apply_gradients`, which all-reduces them with SUM (Keras's TF
optimizer) and updates once: the engine's combination is a plain sum, A = 1, and A / P = 1 / (R·K) generalises
`tf.nn.scale_regularization_loss` (1 / R). s replaces `tf.nn.compute_average_loss(global_batch_size=G)`, which
divides a ragged step by the constant G instead of its real rows (and casts to float32 under `sample_weight`).
Keras's own `gradient_accumulation_steps` (A = K; Adam's t counts optimizer steps there, `iterations` being
micro-steps // K) is not used: its update sits in an `ops.cond` whose all-reduce is a merge_call, which
MirroredStrategy refuses inside control flow under tf.function. The recorded loss is strategy.reduce(SUM) of
Σ w·ℓ over that of Σ w; `shards` are the ids each replica returns.

Execution. eager: the step under tf.function. compiled: each replica's K forward/backward passes under
`jit_compile=True`, the all-reduce and the update outside XLA, since MirroredStrategy keeps merge_call on CPU
devices and an XLA cluster cannot reach a mirrored variable's other devices (a whole-step XLA function fails with
"Trying to access resource ... located in device CPU:1 from device CPU:0").

Past one machine: set TF_CONFIG ({"cluster": {"worker": [hosts]}, "task": {"type": "worker", "index": i}}) on each
host and use `tf.distribute.MultiWorkerMirroredStrategy()` in place of `strategy(R)`; the dataset function already
keeps the replicas of its own input pipeline (`InputContext`), and apply_gradients all-reduces across hosts alike.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from common.distributed import Layout
from common.driver import EpochRun

AVERAGED = 1  # A: apply_gradients sums the replicas' gradients, each replica sums its K micro-batches


def reserve_devices(n: int) -> None:
    """Cut the host CPU into n logical devices (at least); RuntimeError once the runtime started with fewer."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or ()) >= n:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as exc:  # the runtime started: enough devices, or too late
        started = len(tf.config.list_logical_devices("CPU"))
        if started < n:
            raise RuntimeError(
                f"tf: {n} replicas need {n} logical CPU devices, but the TensorFlow runtime already started with "
                f"{started}; reserve them before any TensorFlow op runs (backends.worker does, one process per "
                "backend)"
            ) from exc


def strategy(replicas: int) -> tf.distribute.Strategy:
    """MirroredStrategy over the first `replicas` logical CPU devices (module docstring); the default strategy
    for one replica."""
    if replicas == 1:
        return tf.distribute.get_strategy()
    reserve_devices(replicas)
    devices = [device.name for device in tf.config.list_logical_devices("CPU")[:replicas]]
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


def by_part(layout: Layout, rows: np.ndarray) -> np.ndarray:
    """A step's row-wise array (S, ...) cut into its parts: (R, K, c, ...), part [r][k] = rows[layout.rows(r, k)]."""
    return np.stack(
        [np.stack([rows[layout.rows(r, k)] for k in range(layout.accumulate)]) for r in range(layout.replicas)]
    )


class Split:
    """The epoch runner of split steps (eager or compiled), `run(epoch, first_step) -> EpochRun` with shards.

    `loss_fn(y, logits, sample_weight=w)` is Σ w·ℓ (Keras reduction "sum"); `masks` the exact-mode shared masks
    (backends.tf_backend.execution.Masks); the model and optimizer were built under `strategy.scope()`."""

    def __init__(self, strategy, layout: Layout, model, optimizer, loss_fn, pipeline, masks, execution: str):
        self.strategy, self.layout, self.model, self.optimizer = strategy, layout, model, optimizer
        self.loss_fn, self.pipeline, self.masks = loss_fn, pipeline, masks
        self.gradients = tf.function(self._gradients, jit_compile=execution == "compiled")
        self.step = tf.function(self._step)

    def _gradients(self, parts: dict):
        """One replica's K micro-batches: Σ_k ∇(Σ w·ℓ · s_k + (A / P) · Σ model.losses), and Σ_k Σ w·ℓ."""
        variables = self.model.trainable_variables
        penalty = self.layout.penalty_scale(AVERAGED)
        grads = [tf.zeros_like(v) for v in variables]
        loss_sum = tf.zeros((), parts["weights"].dtype)
        for k in tf.range(self.layout.accumulate):
            w = parts["weights"][k]
            with tf.GradientTape() as tape:
                logits = self.model(
                    parts["x"][k], masks=[m[k] for m in parts["masks"]] or None, real=w > 0, training=True
                )
                weighted = self.loss_fn(parts["y"][k], logits, sample_weight=w)
                total = weighted * parts["scales"][k] + penalty * sum(self.model.losses)
            grads = [a + g for a, g in zip(grads, tape.gradient(total, variables), strict=True)]
            loss_sum += weighted
        return grads, loss_sum

    def _replica(self, parts: dict):
        grads, loss_sum = self.gradients(parts)
        self.optimizer.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        return loss_sum, tf.reduce_sum(parts["weights"]), parts["ids"]

    def _step(self, parts):
        """One optimizer step: the replicas' steps, then Σ w·ℓ / max(Σ w, 1) over the whole step, and the ids fed
        to each replica (per replica)."""
        loss_sum, weight_sum, ids = self.strategy.run(self._replica, args=(parts,))
        total = self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss_sum, axis=None)
        weights = self.strategy.reduce(tf.distribute.ReduceOp.SUM, weight_sum, axis=None)
        return total / tf.maximum(weights, 1), ids

    def inputs(self, epoch: int, first_step: int) -> tf.distribute.DistributedDataset:
        """The epoch's parts as a distributed dataset: one element per step and replica (module docstring)."""
        layout = self.layout
        fields = {"ids": [], "weights": [], "scales": [], "masks": []}
        for step, batch in enumerate(self.pipeline.plan.batches(epoch), first_step):
            parts = layout.split(batch)
            weights = np.array([[part.weights for part in replica] for replica in parts])
            fields["ids"].append([[part.ids for part in replica] for replica in parts])
            fields["weights"].append(weights)
            fields["scales"].append(layout.part_scales(weights.sum(axis=2), AVERAGED).astype(self.pipeline.dtype))
            fields["masks"].append([by_part(layout, m) for m in self.masks(step, layout.step_rows)])
        ids, weights, scales = (np.array(fields[key]) for key in ("ids", "weights", "scales"))
        masks = [np.array(layer) for layer in zip(*fields["masks"], strict=True)]  # per layer (steps, R, K, c, …)

        def dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
            local = context.num_replicas_in_sync // context.num_input_pipelines
            mine = slice(context.input_pipeline_id * local, (context.input_pipeline_id + 1) * local)

            def flat(a):  # (steps, R, K, ...) → this pipeline's (step, replica) elements in order
                return a[:, mine].reshape(-1, *a.shape[2:])

            return self.pipeline.parts(
                flat(ids), flat(weights), scales=flat(scales), masks=tuple(flat(m) for m in masks)
            )

        return self.strategy.distribute_datasets_from_function(dataset)

    def run(self, epoch: int, first_step: int) -> EpochRun:
        losses, fed = [], []
        for step, parts in enumerate(self.inputs(epoch, first_step), first_step):
            self.optimizer.before_step(step)
            loss, ids = self.step(parts)
            losses.append(loss)
            fed.append(self.strategy.experimental_local_results(ids))
        shards = [[list(ids.numpy()) for ids in replicas] for replicas in fed]
        batches = self.pipeline.plan.batches(epoch)
        return EpochRun([batch.ids for batch in batches], [0] * len(batches), tf.stack(losses).numpy(), shards)
