"""Split steps on TensorFlow's own data-parallel engine: `tf.distribute.MirroredStrategy` over R logical CPU
devices, gradients accumulated over the K micro-batches inside each replica, one Keras `apply_gradients` per
optimizer step (docs/design.md, "Data parallelism and accumulation"; the contract is common.distributed).

Devices. `reserve_devices(R)` cuts the host CPU into R logical devices before the runtime starts (backends.worker
calls it first); `strategy(R)` mirrors the variables over the first R with `ReductionToOneDevice` as the
cross-device ops: the replicas' values added in replica order on one device and broadcast, a plain deterministic
sum (what TF itself picks for non-GPU devices; the CPU default, a RING collective, cuts each tensor into chunks
reduced in different orders). R = 1 (accumulation alone) runs the same step under TF's default strategy.

Input (exact mode, `Split`). Each step's batch is split (`Layout.split`) and each (step, replica) becomes one
tf.data element of its K parts, (K, c, ...) each: rows, weights, ids, the part scales s and the parts' slices
(`Layout.rows`) of the step's shared dropout masks drawn for S rows. `distribute_datasets_from_function` hands an
input pipeline's elements to its replicas in turn, so replica r is fed exactly `layout.split(batch)[r][k]`.

Step (exact mode; `Replicas` is what both modes share). Per replica (`strategy.run`), per micro-batch k, a
GradientTape of

    Σ w·ℓ · s_k + (A / P) · Σ model.losses           (Layout.part_scales, Layout.penalty_scale; A = 1)

the K gradients summed in the replica, then `apply_gradients`, which all-reduces them with SUM (Keras's TF
optimizer) and updates once: the engine's combination is a plain sum, A = 1, and A / P = 1 / (R·K) generalises
`tf.nn.scale_regularization_loss` (1 / R). s replaces `tf.nn.compute_average_loss(global_batch_size=G)`, which
divides a ragged step by the constant G instead of its real rows (and casts to float32 under `sample_weight`).
Keras's own `gradient_accumulation_steps` (A = K; Adam's t counts optimizer steps there, `iterations` being
micro-steps // K) is not used: its update sits in an `ops.cond` whose all-reduce is a merge_call, which
MirroredStrategy refuses inside control flow under tf.function; one `apply_gradients` per optimizer step also
keeps `iterations`, which a learning-rate schedule reads, the optimizer-step count t. Keras clips in the replica
context before its all-reduce, i.e. each replica's share of the gradient: with clipping on, the optimizer is
backends.tf_backend.optim.ReducedClip's variant, which all-reduces first and clips the step's gradient (exact split
steps; with the idiom `split_step` Keras's own placement stays). The recorded loss is strategy.reduce(SUM) of
Σ w·ℓ over that of Σ w; `shards` are the ids each replica returns.

BatchNorm (common.layers.norm, "under split steps"). Every part is full (common.distributed.check_batch_norm), so a
part's forward pass gives its batch_norm layers no real-row mask (backends.tf_backend.norm): each replica's c rows
are one batch (sync = false), or Keras's `synchronized=True` all-reduces the moments over the R replicas (sync =
true). Each micro-batch's forward pass updates the moving statistics, K updates per step. They are
MirroredVariables (aggregation NONE, synchronization ON_WRITE): in `strategy.run` each replica's assign writes its
own copy, so the copies follow their replicas' chains (sync = false) or agree (sync = true), and a cross-replica
read (evaluation, `parameters`) gives the copy on the current device, CPU:0, replica 0's
(tensorflow/python/distribute/values.py, `_get_on_device_or_primary`): the canonical first replica's chain.

The idiom `split_step` (`NativeSplit`; common.native.SPLIT_IDIOMS["tf"]: global_batch, global_batch, loss_over_k):
what a port writes. The native tf.data pipeline (`shuffle(N, seed, reshuffle_each_iteration=True)`, `.batch(G)`,
`drop_remainder` under "drop") goes once through `strategy.experimental_distribute_dataset`, whose rebatching (the
batch size is not static) cuts each global batch of n rows into R consecutive pieces of ⌈n/R⌉ rows: a ragged one
leaves the last replicas short or empty (105 rows, G = 8, R = 2: the last batch's one row to replica 0, none to
replica 1). The host takes K global batches per optimizer step (the epoch's rest in its last step) for one
`strategy.run`; each replica's micro-batch objective is the TF tutorial's loss over K (`native_loss`),

    tf.nn.compute_average_loss(ℓ, global_batch_size=G) / K + tf.nn.scale_regularization_loss(Σ model.losses) / K

then the same summing replica step: the step gradient Σ_step ∇ℓ / (G·K) + ∇ Σ model.losses, global_mean on a
full step, shrunk by n / S on a ragged one (trap average_loss_global_batch). Keras's init, seeded Dropout and
optimizer as in native single-device runs (common.native); the Dropout's one seed generator serves every replica,
so replica r's i-th row meets the mask of every other replica's i-th row. An epoch has ⌈M/K⌉ steps for its M
global batches (⌈N/G⌉, drop: ⌊N/G⌋), not the plan's; a step records the rows fed (micro-batch by micro-batch,
replica by replica), their loss Σℓ / n, and `shards` [replica][micro-batch] over the micro-batches it ran.

Execution. eager: the step under tf.function, each replica's passes traced into it (a nested tf.function cannot
hold a synchronised batch_norm's all-reduce, a merge_call). compiled: each replica's K forward/backward passes
under `jit_compile=True`, the all-reduce and the update outside XLA, since MirroredStrategy keeps merge_call on CPU
devices and an XLA cluster cannot reach a mirrored variable's other devices (a whole-step XLA function fails with
"Trying to access resource ... located in device CPU:1 from device CPU:0"); a synchronised batch_norm over R > 1
replicas would put its all-reduce inside the XLA function, and is refused (`check_compiled`).

Past one machine: `backends.host` (docs/design.md, "Beyond one machine"). Start one process per worker, each with
TF_CONFIG = {"cluster": {"worker": ["host0:port", "host1:port", ...]}, "task": {"type": "worker", "index": i}}:
`TF_CONFIG=... python -m backends.host tf SPEC.toml OUT`. `join_hosts` builds `MultiWorkerMirroredStrategy()`
there, before any TensorFlow op (one replica per worker's CPU; the spec's replicas must equal the workers), and
`strategy(R)` returns it: the same `Split` step, its all-reduces collective ops across the workers (bounded by
TIMEOUT_S), the dataset function feeding the global replica r (worker r) its part r. Worker 0 records.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys

import keras
import numpy as np
import tensorflow as tf

from common import InputError
from common.distributed import Layout
from common.driver import EpochRun
from common.layers import Layer

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


TIMEOUT_S = 120.0  # multi-worker: the longest the strategy waits for the other workers, and each collective
_joined: tf.distribute.Strategy | None = None  # join_hosts's MultiWorkerMirroredStrategy, in a backends.host process


def join_hosts(spec) -> int:
    """backends.host: this process's worker of TF_CONFIG's cluster (module docstring, "Past one machine"), the
    MultiWorkerMirroredStrategy that `strategy` returns from now on; its rank, the task index (worker 0, the chief,
    records). InputError when TF_CONFIG is missing or malformed, or lists another number of workers than the spec's
    replicas (checked before the strategy waits for any peer)."""
    global _joined
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        raise InputError(
            'backends.host tf: TF_CONFIG is not set: start one process per worker, each with TF_CONFIG = {"cluster": '
            '{"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}'
        )
    try:
        config = json.loads(raw)
        workers, task = config["cluster"]["worker"], config["task"]
        kind, index = task["type"], task["index"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f'backends.host tf: TF_CONFIG is not {{"cluster": {{"worker": [...]}}, "task": {{"type": '
            f'"worker", "index": i}}}} ({exc.__class__.__name__}: {exc})'
        ) from None
    if set(config["cluster"]) != {"worker"} or kind != "worker" or not isinstance(index, int):
        raise InputError(
            f"backends.host tf: TF_CONFIG must list only workers and give this task type 'worker' and an integer "
            f"index (cluster {sorted(config['cluster'])}, task {task})"
        )
    if not 0 <= index < len(workers):
        raise InputError(f"backends.host tf: TF_CONFIG task index {index} is outside the {len(workers)} workers")
    replicas = Layout.from_spec(spec).replicas
    if replicas != len(workers):
        raise InputError(
            f"spec key 'distributed.replicas': {replicas} replicas but TF_CONFIG lists {len(workers)} workers (one "
            "CPU replica each); start one worker per replica"
        )
    # the strategy waits for every worker without a bound (its coordination service's register timeout does not
    # reach that barrier), holding the GIL and deaf to SIGTERM: SIGALRM's default action ends a wait past TIMEOUT_S
    print(
        f"backends.host tf: worker {index} of {len(workers)}, waiting up to {TIMEOUT_S:g} s for the others",
        file=sys.stderr,
        flush=True,
    )
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(int(TIMEOUT_S))
    try:
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=TIMEOUT_S)
        joined = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    finally:
        signal.alarm(0)
    if joined.num_replicas_in_sync != replicas:
        raise InputError(
            f"spec key 'distributed.replicas': {replicas} replicas but the {len(workers)} workers hold "
            f"{joined.num_replicas_in_sync} replicas (one per device TensorFlow sees: set CUDA_VISIBLE_DEVICES)"
        )
    _joined = joined
    return joined.cluster_resolver.task_id


def strategy(replicas: int) -> tf.distribute.Strategy:
    """MirroredStrategy over the first `replicas` logical CPU devices (module docstring); the default strategy
    for one replica; in a backends.host process, the workers' MultiWorkerMirroredStrategy (`join_hosts`)."""
    if _joined is not None:
        if replicas != _joined.num_replicas_in_sync:
            raise ValueError(f"tf: {replicas} replicas asked, the joined workers hold {_joined.num_replicas_in_sync}")
        return _joined
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


def check_compiled(layout: Layout, layers: tuple[Layer, ...], execution: str) -> None:
    """Refuse compiled execution with a synchronised batch_norm over R > 1 replicas (module docstring,
    "Execution"): ValueError naming the layer."""
    synced = [layer for layer in layers if layer.kind == "batch_norm" and layer.sync]
    if execution == "compiled" and layout.replicas > 1 and synced:
        raise ValueError(
            f"tf: execution = 'compiled' XLA-compiles each replica's forward and backward passes, and batch_norm "
            f"{synced[0].name} (model.layers[{synced[0].index}], sync = true) all-reduces its moments over the "
            f"{layout.replicas} replicas inside them, a MirroredStrategy merge_call that cannot run in a nested "
            "tf.function; use execution = 'eager'"
        )


class Replicas:
    """What both split-step runners share, `run(epoch, first_step) -> EpochRun` with shards: per replica
    (`strategy.run`), one GradientTape per micro-batch, the gradients summed in the replica, then one
    `apply_gradients`, which all-reduces them with SUM (A = 1) and updates once; the step's loss is
    strategy.reduce(SUM) of Σ w·ℓ over that of Σ w. A runner gives `micro_batches(parts)` (one replica's input →
    its micro-batches), `objective(part)` (→ the loss to differentiate, Σ w·ℓ, Σ w) and `fed(parts)` (the ids).
    The model and optimizer were built under `strategy.scope()`; compiled XLA-compiles each replica's passes,
    eager traces them into the step."""

    def __init__(self, strategy, layout: Layout, model, optimizer, pipeline, execution: str):
        check_compiled(layout, model.canonical, execution)
        self.strategy, self.layout, self.model, self.optimizer = strategy, layout, model, optimizer
        self.pipeline = pipeline
        self.gradients = tf.function(self._gradients, jit_compile=True) if execution == "compiled" else self._gradients
        self.step = tf.function(self._step)

    def _gradients(self, parts):
        """One replica's micro-batches: Σ_k ∇ objective_k, Σ_k Σ w·ℓ and Σ_k Σ w."""
        variables = self.model.trainable_variables
        grads = [tf.zeros_like(v) for v in variables]
        loss_sum = weight_sum = tf.zeros((), self.pipeline.dtype)
        for part in self.micro_batches(parts):
            with tf.GradientTape() as tape:
                objective, weighted, weight = self.objective(part)
            grads = [a + g for a, g in zip(grads, tape.gradient(objective, variables), strict=True)]
            loss_sum, weight_sum = loss_sum + weighted, weight_sum + weight
        return grads, loss_sum, weight_sum

    def _replica(self, parts):
        grads, loss_sum, weight_sum = self.gradients(parts)
        self.optimizer.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        ids = self.fed(parts)
        return loss_sum, weight_sum, ids, tf.nest.map_structure(lambda t: tf.shape(t)[:1], ids)

    def _step(self, parts):
        """One optimizer step: the replicas' steps, then Σ w·ℓ / max(Σ w, 1) over the whole step, and the ids fed
        to the replicas, gathered from every replica (the other workers' too) in replica order, with each
        replica's count of them (`by_replica`)."""
        loss_sum, weight_sum, ids, counts = self.strategy.run(self._replica, args=(parts,))
        total = self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss_sum, axis=None)
        weights = self.strategy.reduce(tf.distribute.ReduceOp.SUM, weight_sum, axis=None)
        gather = lambda values: self.strategy.gather(values, axis=0)  # noqa: E731
        return total / tf.maximum(weights, 1), tf.nest.map_structure(gather, ids), tf.nest.map_structure(gather, counts)

    @staticmethod
    def by_replica(ids, counts) -> list[np.ndarray]:
        """A gathered value of `_step` cut back into its replicas' values."""
        return np.split(ids.numpy(), np.cumsum(counts.numpy())[:-1])


class Split(Replicas):
    """Exact mode: replica r is fed the parts [r][k] of the plan's split (module docstring, "Input"), each part's
    objective Σ w·ℓ · s_k + (A / P) · Σ model.losses, its forward pass without real-row flags (module docstring,
    "BatchNorm"). `loss_fn(y, logits, sample_weight=w)` is Σ w·ℓ (Keras reduction "sum"); `masks` the shared masks
    (backends.tf_backend.execution.Masks)."""

    def __init__(self, strategy, layout: Layout, model, optimizer, pipeline, execution: str, loss_fn, masks):
        super().__init__(strategy, layout, model, optimizer, pipeline, execution)
        self.loss_fn, self.masks = loss_fn, masks

    def micro_batches(self, parts: dict) -> list[dict]:
        """The element's K parts, (K, c, ...) each field, one dict per micro-batch."""
        return [
            {**{key: parts[key][k] for key in ("x", "y", "weights", "scales")}, "masks": [m[k] for m in parts["masks"]]}
            for k in range(self.layout.accumulate)
        ]

    def objective(self, part: dict):
        w = part["weights"]
        logits = self.model(part["x"], masks=part["masks"] or None, training=True)
        weighted = self.loss_fn(part["y"], logits, sample_weight=w)
        penalty = self.layout.penalty_scale(AVERAGED) * sum(self.model.losses)
        return weighted * part["scales"] + penalty, weighted, tf.reduce_sum(w)

    def fed(self, parts: dict):
        return parts["ids"]

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

    def run(self, epoch: int, first_step: int, inputs=None) -> EpochRun:
        losses, fed = [], []
        for step, parts in enumerate(self.inputs(epoch, first_step) if inputs is None else inputs, first_step):
            self.optimizer.before_step(step)
            loss, ids, counts = self.step(parts)
            losses.append(loss)
            fed.append(self.by_replica(ids, counts))
        shards = [[list(ids) for ids in replicas] for replicas in fed]
        batches = self.pipeline.plan.batches(epoch)
        return EpochRun([batch.ids for batch in batches], [0] * len(batches), tf.stack(losses).numpy(), shards)


def native_loss(per_example, model_losses: list, global_batch: int, accumulate: int):
    """A hand port's loss of one replica's micro-batch (common.native.SPLIT_IDIOMS["tf"]): the TF tutorial's
    `compute_loss` divided by K,

        tf.nn.compute_average_loss(ℓ, global_batch_size=G) / K + tf.nn.scale_regularization_loss(Σ model.losses) / K

    = Σ_part ℓ / (G·K) + Σ penalties / (R·K): the constant G whatever rows the part holds, so a ragged step's
    gradient shrinks by n/S (trap average_loss_global_batch)."""
    loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch) / accumulate
    if model_losses:
        loss += tf.nn.scale_regularization_loss(tf.add_n(model_losses)) / accumulate
    return loss


class NativeSplit(Replicas):
    """Native mode: tf.data's global batches rebatched by tf.distribute, K per step, `native_loss` per replica and
    micro-batch (module docstring, "Native mode")."""

    def __init__(self, strategy, layout: Layout, model, optimizer, pipeline, execution: str):
        super().__init__(strategy, layout, model, optimizer, pipeline, execution)
        self.dataset = strategy.experimental_distribute_dataset(pipeline.dataset(0))  # reshuffled per iteration

    def micro_batches(self, parts: list[dict]) -> list[dict]:
        return parts

    def objective(self, part: dict):
        logits = self.model(part["x"], training=True)
        per_example = keras.losses.sparse_categorical_crossentropy(part["y"], logits, from_logits=True)
        loss = native_loss(per_example, self.model.losses, self.layout.micro, self.layout.accumulate)
        return loss, tf.reduce_sum(per_example), tf.cast(tf.size(per_example), per_example.dtype)

    def fed(self, parts: list[dict]) -> list:
        return [part["ids"] for part in parts]

    def inputs(self, epoch: int, first_step: int):
        """The distributed dataset's iterator (reshuffled at every iteration)."""
        return iter(self.dataset)

    def run(self, epoch: int, first_step: int, inputs=None) -> EpochRun:
        losses, fed = [], []  # fed: per step, [micro-batch][replica] ids
        batches = iter(self.inputs(epoch, first_step) if inputs is None else inputs)
        while parts := list(itertools.islice(batches, self.layout.accumulate)):
            loss, ids, counts = self.step(parts)
            losses.append(loss)
            fed.append([self.by_replica(micro, count) for micro, count in zip(ids, counts, strict=True)])
        shards = [[[micro[r] for micro in step] for r in range(self.layout.replicas)] for step in fed]
        ids = [np.concatenate([part for micro in step for part in micro]) for step in fed]
        return EpochRun(ids, [0] * len(ids), tf.stack(losses).numpy(), shards)
