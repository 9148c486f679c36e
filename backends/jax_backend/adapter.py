"""The JAX backend as a common.driver.Adapter: the flax stack of model.py, the pipeline of data.py, the optax chain
of optim.py, trained by execution.py's one pure step in the spec's execution mode (docs/design.md, "Architecture").

`run_epoch` is the whole training loop. Features and images: the epoch's plan slots (ids, weights, the shared
masks with dropout, the global steps) stacked and put on the device in one transfer (`_stacked`), the training
split on the device since `prepare`; eager / compiled call execution's `step_at` once per step (only the step's
index comes from the host, the rows are gathered on the device), a ragged "keep" tail a stack of its own shape;
fused runs the whole epoch as one scan program, a ragged "keep" tail padded to B with weight-0 filler by
common.batching's "pad" rule (the same mean loss; batch_norm's statistics and the masks of the real rows unchanged),
its recorded ids still the plan's. Tokens (eager or compiled): the training split padded to each T the epoch uses,
on the device (data.Tokens.splits); the epoch's batches stacked per size B in one transfer each, every batch's
masked-loss weights at its own T (`_token_inputs`), and `step_at` per step, in plan order, gathering its rows from
the split of its T: jit compiles once per (B, T), as for per-batch padding. Either way the next epoch's inputs are
made while the device runs (prefetch), and the losses stay on the device, fetched once at the end of the epoch.
Every native behaviour is an idiom of common.idioms, each on alone or all together (mode = "native"): `order`
data.JaxOrderPlan (a pad batch's weight-0 filler fed, one shape, but not reported); `default_init` flax's own init,
`model.init(PRNGKey(seed), x)` (the driver passes params=None); `dropout_rng` nn.Dropout keyed
fold_in(fold_in(PRNGKey(seed), rng.JAX_DROPOUT), t) instead of the shared masks (common.dropout, drawn here per global
step); the layer idioms in core / norm / image (model.Options); the optimizer's, clipping's and schedules' in optim.py.
With neither `order` nor `split_step` on the run walks the shared plan and lists its ids, filler included
(common.idioms.plan_order), which the driver checks.
Split steps (common.distributed: R replicas, K micro-batches): distributed.py's engine, a mesh of R devices; the
plan's split: `execution.split_step` per micro-batch (eager or compiled) into the chain wrapped in optax.MultiSteps;
idiom `split_step`: the `train_step` per global micro-batch (data.micro_batches), its nn.Dropout key folded with
the run's micro-batch count (or the shared masks of that count), into `optax.MultiSteps(tx, K)` as a port writes
it, a step recorded per update. The records' `shards` are read back from the devices.
`self.params` holds all the flax variables, {'params'} plus {'batch_stats'} with batch_norm: the canonical state is
loaded into and exported from `batch_stats` (model.py), the optax state covers `params` only, and evaluation
normalises with the running statistics.
`jax_enable_x64` is switched on for every spec (process-global) and every array gets its dtype explicitly, so a
float32 run stays float32 while optax's scalar arithmetic (Adam's 1 − βᵗ) is float64 (docs/design.md, "Precision").
"""

from __future__ import annotations

from dataclasses import replace

import jax
import numpy as np
import optax

from backends.jax_backend import data as pipelines
from backends.jax_backend import execution, optim
from backends.jax_backend.distributed import Engine
from backends.jax_backend.model import build, load_canonical, native_init, split_state, to_canonical
from common import rng
from common.distributed import Layout
from common.driver import EpochRun
from common.dropout import shared_masks
from common.idioms import on, plan_order
from common.layers import dropout_layers
from common.regularization import Regularization
from common.spec import Spec, execution_of


class JaxAdapter:
    name = "jax"

    def __init__(self, spec: Spec):
        self.spec = spec
        self.dtype = np.dtype(spec.dtype)
        self.execution = execution_of(spec, "jax")
        execution.check(self.execution)

    def versions(self) -> dict[str, str]:
        import flax
        import jaxlib

        return {
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
        }

    def device(self) -> str:
        d = jax.devices()[0]
        return "cpu" if d.platform == "cpu" else f"{d.platform}:{d.id} ({d.device_kind})"

    def prepare(self, spec, data, plan, layers, params):
        execution.check(self.execution, data)
        self.layers = layers
        self.layout = Layout.from_spec(spec)
        self.planned = plan_order(spec)  # the shared plan's ids, filler included, as the driver checks them
        self.native_split = self.layout.is_split and on(spec, "split_step")
        dropout = any(layer.rate > 0.0 for layer in dropout_layers(layers))
        self.shared_dropout = dropout and not on(spec, "dropout_rng")  # masks drawn only where there is dropout
        self.pipeline = pipelines.pipeline(spec, data, plan)
        self.plan = self.pipeline.plan
        self.model = build(layers, spec)
        reg = Regularization.from_spec(spec)
        if params is None:  # default_init
            self.params = native_init(self.model, spec.seed)
            params = to_canonical(self.params)
        else:
            self.params = load_canonical(self.model, params)
        tx, penalty = optim.build(spec, reg, params), optim.l1_penalty(spec, reg, params)
        native_dropout = dropout and not self.shared_dropout
        # nn.Dropout's key, made only where it is used (making it compiles XLA programs: ~0.15 s)
        self.key = jax.random.fold_in(jax.random.PRNGKey(spec.seed), rng.JAX_DROPOUT) if native_dropout else None
        if self.layout.is_split:  # split_step also returns the batch_norm state (distributed.Engine)
            self.engine = Engine(self.layout, self.dtype)
            tx = self.engine.native_accumulate(tx) if self.native_split else self.engine.accumulate(tx)
        if self.layout.is_split and not self.native_split:
            step = execution.split_step(self.model, tx, self.engine.combine, penalty)
        else:
            step = execution.train_step(self.model, tx, penalty, self.key)
        self.tx, self.opt_state = tx, tx.init(split_state(self.params)[0])
        if self.layout.is_split:
            self.params, self.opt_state = self.engine.replicate((self.params, self.opt_state))
            self.calls, self.pending = 0, []  # split_step: micro-batches fed, and those not yet in an update
        self.run = execution.Execution(self.execution, step)
        self._eval = execution.eval_sums(self.model)
        self.tokens = isinstance(self.pipeline, pipelines.Tokens)  # what the pipeline feeds, not the model kind
        if not self.layout.is_split:  # run_epoch over `_stacked` epoch inputs
            if not self.tokens:
                self.split = pipelines.on_device(data.train_x, data.train_y, self.dtype)
            self.ahead = None  # ((epoch, first step), its inputs) prefetched by the epoch before

    @property
    def compile_count(self) -> int:
        return self.run.compile_count

    def dropout_key(self, step) -> jax.Array:
        """Native nn.Dropout's key for global step `step` (the step function folds it the same way); dropout under
        the idiom `dropout_rng` only."""
        return jax.random.fold_in(self.key, step)

    def epoch_inputs(self, epoch: int, first_step: int):
        """What `run_epoch` steps over: features and images, made lazily per stack of steps (its `_stacked` device
        inputs, its host (ids, weights)); tokens, the list of `_token_inputs`. `list()` of it holds them on the
        device (the bench's loop without its loader)."""
        if self.tokens:
            return self._token_inputs(epoch, first_step)
        return ((self._stacked(ids, w, steps), (ids, w)) for ids, w, steps in self._chunks(epoch, first_step))

    def run_epoch(self, epoch: int, first_step: int, inputs=None) -> EpochRun:
        """One training epoch over `inputs` (`epoch_inputs`). Without them it takes those the previous epoch
        prefetched (made anew if they are not this epoch's), and once its steps are dispatched it prefetches the
        next epoch's, host work and transfer while the device still runs; the losses are fetched last."""
        if self.layout.is_split:
            if inputs is not None:
                raise ValueError("jax: split steps shard their own micro-batches, not inputs made beforehand")
            return self._native_split_epoch(epoch) if self.native_split else self._split_epoch(epoch, first_step)
        prefetch = inputs is None
        if prefetch:
            ahead, self.ahead = self.ahead, None
            mine = ahead is not None and ahead[0] == (epoch, first_step)
            inputs = ahead[1] if mine else self.epoch_inputs(epoch, first_step)
        ids, lengths, losses = (self._token_epoch if self.tokens else self._stacked_epoch)(inputs)
        if prefetch:
            after = (epoch + 1, first_step + len(ids))
            self.ahead = (after, list(self.epoch_inputs(*after)))
        return EpochRun(ids, lengths, np.hstack(jax.device_get(losses)))

    def _split_epoch(self, epoch: int, first_step: int) -> EpochRun:
        """Split steps (distributed.py): per step, one `split_step` per micro-batch on the mesh, the shared masks
        drawn for the step's S rows and cut per micro-batch; the step's loss Σ_step w·ℓ / Σ_step w; the shards
        as the devices hold them."""
        batches = self.plan.batches(epoch)
        losses, shards = [], []
        for t, batch in enumerate(batches, start=first_step):
            masks = self._shared(t, self.layout.step_rows)
            loss, placed = 0.0, []
            for micro in self.engine.micro_batches(batch):
                rows, ids = self.engine.sharded(self.pipeline, micro.batch)
                cut = None if masks is None else self.engine.place([m[micro.rows] for m in masks])
                self.params, self.opt_state, part = self.run.step(
                    self.params, self.opt_state, rows.x, rows.y, rows.weights, self.engine.place(micro.scales), cut
                )
                loss = loss + part
                placed.append(ids)
            losses.append(loss / max(float(batch.weights.sum()), 1.0))
            shards.append(placed)
        shards = [  # read back from the devices after the epoch, not inside its loop
            [list(replica) for replica in zip(*map(self.engine.held, placed), strict=True)] for placed in shards
        ]
        ids = [b.ids if self.planned else b.real_ids for b in batches]
        return EpochRun(ids, [0] * len(batches), np.asarray(jax.device_get(losses)), shards)

    def _native_split_epoch(self, epoch: int) -> EpochRun:
        """Idiom `split_step` (distributed.py): the epoch's global micro-batches through `train_step` on the mesh
        (with the shared masks of the run's micro-batch count unless `dropout_rng`). Each update of MultiSteps is a
        step: the micro-batches it averaged (the previous epoch's left-overs first), their real ids, Σℓ / n over those
        rows, and per replica and micro-batch the real ids its device held. The losses and MultiSteps's update flags
        are fetched once, at the end of the epoch."""
        placed, fed = [], []
        for batch in self.plan.batches(epoch):
            self.calls += 1
            rows, ids = self.engine.sharded(self.pipeline, batch)
            masks = self._shared(self.calls, batch.ids.shape[0])
            masks = None if masks is None else self.engine.place(masks)
            self.params, self.opt_state, loss = self.run.step(
                self.params, self.opt_state, rows.x, rows.y, rows.weights, masks, self.calls
            )
            placed.append((ids, rows.weights))
            fed.append((loss * batch.n_real, self.engine.has_updated(self.tx, self.opt_state)))
        steps = []
        for (ids, weights), (loss_sum, updated) in zip(placed, jax.device_get(fed), strict=True):  # after the loop
            self.pending.append((self.engine.held_real(ids, weights), loss_sum))
            if updated:
                steps.append(self.pending)
                self.pending = []
        ids = [np.concatenate([i for held, _ in step for i in held]) for step in steps]
        losses = np.array([sum(loss for _, loss in step) / fed.size for step, fed in zip(steps, ids, strict=True)])
        shards = [[list(replica) for replica in zip(*(held for held, _ in step), strict=True)] for step in steps]
        return EpochRun(ids, [0] * len(steps), losses, shards)

    def _shared(self, step: int, rows: int) -> list[np.ndarray] | None:
        """The shared masks (common.dropout) of `step` for `rows` rows: None without dropout or with `dropout_rng`."""
        return shared_masks(self.spec.seed, step, self.layers, rows, self.dtype) if self.shared_dropout else None

    def _masks(self, step: int, rows: int):
        """The shared masks of global step `step` on the device (`_shared`)."""
        masks = self._shared(step, rows)
        return None if masks is None else jax.device_put(masks)

    def _advance(self, x, y, w, masks, t) -> jax.Array:
        self.params, self.opt_state, loss = self.run.step(self.params, self.opt_state, x, y, w, masks, t)
        return loss

    def _stacked(self, ids: np.ndarray, w: np.ndarray, steps: np.ndarray) -> tuple:
        """S batches of one shape, global steps `steps`, as device inputs, one transfer: ids int32 and w (S, B),
        the shared masks stacked per dropout layer (None without them: no per-step draw), the steps (S,) int32."""
        steps = np.asarray(steps, dtype=np.int32)
        masks = None
        if self.shared_dropout:
            per_step = [self._shared(int(t), ids.shape[1]) for t in steps]
            masks = [np.stack(layer) for layer in zip(*per_step, strict=True)]
        return jax.device_put((ids.astype(np.int32), w.astype(self.dtype), masks, steps))

    def _scan(self, ids, w, masks, steps) -> jax.Array:
        self.params, self.opt_state, losses = self.run.scan(
            self.params, self.opt_state, *self.split, ids, w, masks, steps
        )
        return losses

    def _step_at(self, split: tuple, stacked: tuple, i: int) -> jax.Array:
        self.params, self.opt_state, loss = self.run.at(self.params, self.opt_state, *split, *stacked, i)
        return loss

    def _chunks(self, epoch: int, first_step: int) -> list[tuple]:
        """The epoch's stacks as (ids (S, B), weights (S, B), global steps (S,)), the plan's slots cut into
        consecutive batches of batch_size: one stack, and a ragged "keep" tail as a one-step stack of its own
        shape, except fused, which pads that tail to B (the plan's "pad" rule) to scan the epoch in one program."""
        plan = self.plan
        if self.execution == "fused" and plan.last_batch == "keep":
            plan = replace(plan, last_batch="pad")
        b = plan.batch_size
        ids, w = plan.slots(epoch)
        full = ids.shape[0] // b
        steps = np.arange(first_step, first_step + full + 1)
        chunks = [(ids[: full * b].reshape(full, b), w[: full * b].reshape(full, b), steps[:full])] if full else []
        if ids.shape[0] > full * b:
            chunks.append((ids[None, full * b :], w[None, full * b :], steps[full:]))
        return chunks

    def _stacked_epoch(self, inputs) -> tuple[list, list, list]:
        """Features and images: (ids, padded lengths 0, losses on the device) of the steps of `_stacked` inputs,
        fused one scan per stack, eager / compiled `step_at` per step. The recorded ids are the plan's batches: only
        an unbucketed plan's last batch can hold filler (weight 0), listed where the run lists the plan's ids under
        "pad" and cut otherwise (native order, or fused's padded "keep" tail)."""
        losses, fed, last = [], [], None
        for stacked, (ids, w) in inputs:
            if self.execution == "fused":
                losses.append(self._scan(*stacked))
            else:
                losses += [self._step_at(self.split, stacked, i) for i in range(ids.shape[0])]
            fed, last = fed + list(ids), w[-1]
        if fed and not (self.planned and self.plan.last_batch == "pad"):
            fed[-1] = fed[-1][last > 0]
        return fed, [0] * len(fed), losses

    def _token_inputs(self, epoch: int, first_step: int) -> list[tuple]:
        """The epoch's token steps in plan order as (split, stack, i, batch): the training split padded to the
        batch's T on the device (data.Tokens.splits), the `_stacked` inputs of all the epoch's batches of its size
        B (ids, masked-loss weights m at each batch's own T, masks, global steps), i its index there, and its plan
        batch. How many batches have B rows is fixed by the plan, not by the epoch's order, so jit sees one
        signature per (B, T) across epochs."""
        batches = self.plan.batches(epoch)
        splits = self.pipeline.splits({batch.length for batch in batches})
        sizes: dict[int, list[int]] = {}  # B → the positions of its batches in the epoch
        for k, batch in enumerate(batches):
            sizes.setdefault(batch.rows, []).append(k)
        placed = {}
        for members in sizes.values():
            ids = np.stack([batches[k].ids for k in members])
            kept = np.stack([splits[batches[k].length][1][batches[k].ids] for k in members])
            w = self.pipeline.weights(np.stack([batches[k].weights for k in members]), kept)
            stacked = self._stacked(ids, w, first_step + np.asarray(members))
            placed.update({k: (stacked, i) for i, k in enumerate(members)})
        return [(splits[batch.length][0], *placed[k], batch) for k, batch in enumerate(batches)]

    def _token_epoch(self, inputs) -> tuple[list, list, list]:
        """Tokens: (ids, padded lengths T, losses on the device) of `_token_inputs`, `step_at` per step; the ids
        listed as the plan's (filler included) or the real rows'."""
        ids, lengths, losses = [], [], []
        for split, stacked, i, batch in inputs:
            losses.append(self._step_at(split, stacked, i))
            ids.append(batch.ids if self.planned else batch.real_ids)
            lengths.append(batch.length)
        return ids, lengths, losses

    def evaluate(self, split, batches):
        out = []
        for batch in batches:
            rows = self.pipeline.rows(batch, split)
            loss_sum, correct = self._eval(self.params, rows.x, rows.y)
            out.append((float(loss_sum), float(correct), batch.n_real))
        return out

    def parameters(self):
        return to_canonical(self.params)


def make_adapter(spec: Spec) -> JaxAdapter:
    """The adapter for a resolved spec; switches on `jax_enable_x64` before any array is made."""
    jax.config.update("jax_enable_x64", True)
    return JaxAdapter(spec)
