"""JAX's own data-parallel engine for a split step (common.distributed.Layout; docs/design.md, "Data parallelism and
accumulation").

Devices: `reserve_devices(R)` asks XLA for R host devices (`jax_num_cpu_devices`) before JAX starts its backends.
Mesh: the first R devices, one axis "data". Micro-batch k of a step, its G = R·c rows the parts split(batch)[r][k]
in replica order (the step's rows kG .. (k+1)G), is placed with NamedSharding(mesh, P("data")): device r holds part
(r, k), c rows, a static shape; the variables and the optimizer state are replicated (P()).
Reductions, s the part's factor (Layout.part_scales) on every row of the part:
  global_mean:   `jax.jit` of the step over the sharded micro-batch, loss Σ_G w·s·ℓ: XLA inserts the cross-device
                 sum of the gradient, so the engine sums the R parts: A = 1.
  mean_of_means: `jax.shard_map` over the mesh, each device's Σ_c w·s·ℓ, its gradient `lax.pmean`-ed over "data"
                 (DDP's average): A = R.
batch_norm (common.layers.norm, "under split steps"): under jit a flax BatchNorm sees the whole micro-batch (the
G rows' statistics whatever `sync` says), so with a batch_norm layer and R > 1 global_mean runs the shard_map as
well, its gradient `lax.psum`-ed (A = 1 still). In the shard_map the model is the clone with `axis_name="data"`:
a `sync = false` layer normalises its device's c rows, a `sync = true` one gets flax's `axis_name` (norm.py: the
statistics of the G rows). The micro-batch's `batch_stats` leave it as device 0's on every device,
psum_r [r = 0]·stats_r (a sum with zeros: exact): the first replica's chain for `sync = false` (what a flax port
under shard_map keeps), every device's for `sync = true`. Each micro-batch updates them once, carried into the
next call while MultiSteps accumulates the gradients (K updates per optimizer step). R = 1: the jit path (the
micro-batch is the part).
Accumulation: `optax.MultiSteps(tx, K, use_grad_mean=False, accumulator_dtype=dtype)`: zero updates for K − 1
micro-batches, then the inner chain (its Adam count, decay and L1 step once per K) on the exact sum of the K
gradients (A unchanged). Its default mean is a Welford running mean, acc + (g − acc)/(n + 1), not Σ/K to the last
bit, in a float32 accumulator: hence the sum, in the spec's dtype. R = 1 runs the same path on a one-device mesh.
Idiom `split_step` (common.native.SPLIT_IDIOMS, jax: global_batch, micro_mean, multisteps_mean): a port's loop. Each
global micro-batch of G rows (data.micro_batches: the native order, a ragged one padded with weight 0) is placed
the same way and fed to the native jitted step (execution.train_step), loss Σ_G w·ℓ / Σ_G w: the gradient of the
micro-batch mean, XLA summing over the devices; a batch_norm normalises with the G rows' statistics, whatever
`sync` says, and updates its running statistics once per micro-batch. `optax.MultiSteps(tx, every_k_schedule=K)`
with its defaults (`native_accumulate`): Welford's running mean of the K gradients, (1/K) Σ_k ∇ mean_k (the mean of
the micro-batch means), kept in a float32 accumulator whatever the spec's dtype (trap accumulator_dtype); it
updates on every K-th call counted over the whole run, so an epoch whose micro-batches are no multiple of K hands
its last ones over to the next epoch's first update. A recorded step is one update (`has_updated`): the K
micro-batches it averaged, wherever they came from; micro-batches fed after the run's last update were never
applied and are in no step.

Past one machine (backends.host): one process per host, each told the coordinator, the process count and its id,
    JAX_COORDINATOR_ADDRESS=HOST0:PORT JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i python -m backends.host jax SPEC.toml OUT
on every host i = 0 .. N−1 (jax.distributed.initialize reads only the address itself: `join_hosts` passes all three).
`join_hosts` joins before any other JAX call (CPU: gloo collectives, R/N host devices per process); the Mesh then
spans every process's `jax.devices()`, each process places only its own devices' rows (`place`), the jitted step,
shard_map and pmean are unchanged (XLA's collectives cross the processes), and results are read from replicated
arrays or gathered (`held`). R = jax.device_count(), all processes' devices.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from common import InputError
from common.batching import Batch, Rows
from common.distributed import Layout

AXIS = "data"
LAUNCHER = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")  # what backends.host jax reads
JOIN_TIMEOUT_S = 120  # jax.distributed.initialize: how long a process waits for the others to connect
HEARTBEAT_S = 30  # a process silent this long is dead: the coordination service ends the others (jax default 100)


class Micro(NamedTuple):
    """Micro-batch k of a step: `batch`, its G rows (the parts (r, k) of `Layout.split` concatenated in replica
    order), `scales`, each row's s (its part's), and `rows`, its slice of the step's S rows (kG .. (k+1)G), which
    cuts the step's shared dropout masks."""

    batch: Batch
    scales: np.ndarray
    rows: slice


def reserve_devices(n: int) -> None:
    """Ask for n host (CPU) devices before the backends start; RuntimeError when JAX already runs with fewer."""
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the backends are up: fine if they already have the devices
        have = len(jax.devices("cpu"))
        if have < n:
            raise RuntimeError(
                f"jax: {n} replicas need {n} host devices, but JAX already started with {have}; call "
                "backends.jax_backend.distributed.reserve_devices before any JAX operation (one per process)"
            ) from None


def join_hosts(spec) -> int:
    """backends.host: join the processes the launcher describes (LAUNCHER) before any other JAX call, and return
    this one's `jax.process_index()`. On CPU each process gets R / N host devices and gloo collectives; the spec's
    replicas must equal `jax.device_count()`, every process's devices together."""
    missing = [key for key in LAUNCHER if not os.environ.get(key)]
    if missing:
        raise InputError(
            f"backends.host jax: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: start one "
            "process per host with JAX_COORDINATOR_ADDRESS=HOST0:PORT JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i"
        )
    address = os.environ["JAX_COORDINATOR_ADDRESS"]
    try:
        processes, index = int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"])
    except ValueError:
        raise InputError(
            f"backends.host jax: JAX_NUM_PROCESSES={os.environ['JAX_NUM_PROCESSES']!r} and "
            f"JAX_PROCESS_ID={os.environ['JAX_PROCESS_ID']!r} are not both integers"
        ) from None
    if not 0 <= index < processes:
        raise InputError(
            f"backends.host jax: JAX_PROCESS_ID={index} is not in 0 .. JAX_NUM_PROCESSES − 1 = {processes - 1}"
        )
    replicas = spec.distributed.replicas
    if replicas % processes:
        raise InputError(
            f"spec key 'distributed.replicas': {replicas} replica{'s' * (replicas != 1)} but the launcher started "
            f"{processes} process{'es' * (processes != 1)} (JAX_NUM_PROCESSES; each process the same number of "
            "devices, replicas = all processes' devices)"
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the CPU client's cross-process collectives
    reserve_devices(replicas // processes)  # host devices; a GPU/TPU backend brings its own
    jax.distributed.initialize(
        address,
        processes,
        index,
        initialization_timeout=JOIN_TIMEOUT_S,
        heartbeat_timeout_seconds=HEARTBEAT_S,
        shutdown_timeout_seconds=JOIN_TIMEOUT_S,
    )
    if jax.device_count() != replicas:
        raise InputError(
            f"spec key 'distributed.replicas': {replicas} replicas but the {processes} processes have "
            f"{jax.device_count()} devices ({jax.local_device_count()} each)"
        )
    return jax.process_index()


def devices(n: int) -> list:
    """The first n devices of the default backend, else the n host devices `reserve_devices` made."""
    default = jax.devices()
    if len(default) >= n:
        return default[:n]
    cpu = jax.devices("cpu")
    if len(cpu) < n:
        raise RuntimeError(f"jax: {n} replicas but only {len(cpu)} host devices; reserve_devices({n}) first")
    return cpu[:n]


class Engine:
    """The mesh, the placements and the gradient combination of one spec's Layout (module docstring)."""

    def __init__(self, layout: Layout, dtype):
        self.layout, self.dtype = layout, np.dtype(dtype)
        self.mesh = Mesh(np.array(devices(layout.replicas)), (AXIS,))
        self.rows = NamedSharding(self.mesh, P(AXIS))
        self.replicated = NamedSharding(self.mesh, P())
        self.averaged = layout.replicas if layout.reduction == "mean_of_means" else 1  # A

    def accumulate(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
        """`tx` stepping once per K micro-batches on the sum of their gradients (K = 1: `tx` itself)."""
        k = self.layout.accumulate
        if k == 1:
            return tx
        return optax.MultiSteps(tx, k, use_grad_mean=False, accumulator_dtype=self.dtype).gradient_transformation()

    def combine(self, sums, model):
        """`sums(model) → f(variables, x, y, w, s, masks) → (Σ w·ℓ, ∇ Σ w·s·ℓ, batch_stats)` over the rows f is
        given, made the global micro-batch's (module docstring): f of `model` as is under jit, or f of the model's
        clone with `axis_name` per device in the shard_map, the gradients psum-ed (global_mean) or pmean-ed
        (mean_of_means) and device 0's batch_stats on every device."""
        norms = any(layer.kind == "batch_norm" for layer in model.layers)
        if self.layout.reduction == "global_mean" and not (norms and self.layout.replicas > 1):
            return sums(model)
        rows_of = sums(model.clone(axis_name=AXIS))
        reduce = jax.lax.pmean if self.layout.reduction == "mean_of_means" else jax.lax.psum

        def per_device(variables, *rows):
            # the device's own copy (varying over "data"): else JAX's transpose of the replication psums the
            # gradients itself, and the reduction would find them already combined
            loss, grads, state = rows_of(jax.lax.pcast(variables, AXIS, to="varying"), *rows)
            first = jax.lax.axis_index(AXIS) == 0
            state = jax.tree.map(lambda a: jax.lax.psum(jnp.where(first, a, jnp.zeros_like(a)), AXIS), state)
            return jax.lax.psum(loss, AXIS), reduce(grads, AXIS), state

        rows = P(AXIS)
        return jax.shard_map(
            per_device, mesh=self.mesh, in_specs=(P(), rows, rows, rows, rows, rows), out_specs=(P(), P(), P())
        )

    def native_accumulate(self, tx: optax.GradientTransformation) -> optax.GradientTransformation | optax.MultiSteps:
        """Idiom `split_step`: `optax.MultiSteps(tx, every_k_schedule=K)` as a port writes it, every default kept (the
        mean of K gradients in a float32 accumulator); K = 1: `tx` itself."""
        k = self.layout.accumulate
        return tx if k == 1 else optax.MultiSteps(tx, every_k_schedule=k)

    @staticmethod
    def has_updated(tx, opt_state) -> jax.Array | bool:
        """Whether the call that left `opt_state` updated the parameters: MultiSteps's own `has_updated`; every call
        without accumulation."""
        return tx.has_updated(opt_state) if isinstance(tx, optax.MultiSteps) else True

    def micro_batches(self, batch: Batch) -> list[Micro]:
        """The step's K micro-batches (`Micro`), from `Layout.split` and `Layout.part_scales` for this A."""
        layout = self.layout
        parts = layout.split(batch)
        scales = layout.part_scales([[p.weights.sum() for p in replica] for replica in parts], self.averaged)
        return [
            Micro(
                Batch(
                    np.concatenate([replica[k].ids for replica in parts]),
                    np.concatenate([replica[k].weights for replica in parts]),
                ),
                np.repeat(scales[:, k], layout.shard).astype(self.dtype),
                slice(layout.rows(0, k).start, layout.rows(layout.replicas - 1, k).stop),
            )
            for k in range(layout.accumulate)
        ]

    def place(self, tree):
        """Row-wise numpy arrays (the global G rows, the same in every process) sharded over the mesh: device r gets
        rows rc .. (r+1)c, each process placing only its own devices' rows (one process: all of them)."""
        return jax.tree.map(lambda a: jax.make_array_from_callback(a.shape, self.rows, lambda index: a[index]), tree)

    def sharded(self, pipeline, batch: Batch) -> tuple[Rows, jax.Array]:
        """A micro-batch's training rows (data.Features.arrays) placed over the mesh, and its ids as placed."""
        ids, *arrays = self.place((batch.ids, *pipeline.arrays(batch)))
        return Rows(batch.ids, *arrays), ids

    def replicate(self, tree):
        """Variables and optimizer state: a full copy on every device of the mesh (past one machine: every process
        made the same tree, from the same spec and canonical state)."""
        return jax.device_put(tree, self.replicated)

    def held(self, ids: jax.Array) -> list[np.ndarray]:
        """The ids each device of the mesh actually holds, in replica order: this process's devices' read back from
        their shards, other processes' gathered from theirs (`process_allgather`, a collective every process runs)."""
        by_device = {shard.device: np.asarray(shard.data) for shard in ids.addressable_shards}
        if len(by_device) < self.mesh.size:
            whole = multihost_utils.process_allgather(ids, tiled=True)
            index = ids.sharding.devices_indices_map(ids.shape)
            by_device.update({d: whole[index[d]] for d in self.mesh.devices.flat if d not in by_device})
        return [by_device[device] for device in self.mesh.devices.flat]

    def held_real(self, ids: jax.Array, weights: jax.Array) -> list[np.ndarray]:
        """Idiom `split_step`: the real rows (w > 0) each device holds, in replica order."""
        return [i[w > 0] for i, w in zip(self.held(ids), self.held(weights), strict=True)]
