"""The JAX input pipeline: manual numpy batching, the idiom of the flax examples (JAX has no loader of its own),
yielding common.batching.Rows on the device (docs/design.md, "Batching and order", "Padding and masks").

Features and images: the plan batch's rows by numpy fancy indexing (features (B, F), images (B, H, W, C) NHWC as
the dataset holds them), cast to the spec dtype explicitly (x64 is on), one `jax.device_put`. Tokens:
`common.padding.pad_batch` to the plan's length T with the sides resolved for "jax" (native: post/post), so the
jitted step sees only the plan's (B, T) shapes (one compile per bucket with buckets and last_batch "pad"); weights
m_i = common.padding.loss_weights(w_i, L_i, loss_norm), L_i the kept lengths. The training loop pads the whole
training split to each T once (`Tokens.splits`, on the device) and its steps gather their rows there, as features do;
evaluation pads batch by batch (`rows`).
It follows the shared plan; with the idiom `order` on, the order a JAX user writes, `jax.random.permutation(
fold_in(PRNGKey(seed), epoch), N)` (`JaxOrderPlan`), with the plan's last-batch cuts (pad: weight-0 filler, static
shapes). A split step's micro-batch (features and images): `Features.arrays`, placed by distributed.Engine.sharded.
With the idiom `split_step` on (common.native.SPLIT_IDIOMS, jax) split steps walk the order in global micro-batches
of G rows instead of steps of S: a ragged last one is padded with weight-0 filler to G (every device a static c
rows) under keep and pad alike, dropped under drop.
Bench loaders (features, LOADERS): "naive" (per-row Python stacking, one `jnp.asarray` per array), "fast" (the
adapter's), "prefetched" (the split on the device once, `jnp.take` of each batch's ids, as the fused scan does).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np

from common.batching import Batch, BatchPlan, Rows
from common.datasets import Dataset
from common.distributed import Layout
from common.idioms import on
from common.padding import loss_weights, pad_batch, resolve_sides
from common.spec import Spec


def native_order(seed: int, epoch: int, n_rows: int) -> np.ndarray:
    """The idiom `order`'s shuffle of epoch `epoch` (0-based): jax.random's permutation, as numpy row ids."""
    return np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.PRNGKey(seed), epoch), n_rows))


@dataclass(frozen=True)
class JaxOrderPlan(BatchPlan):
    """A BatchPlan whose shuffled order is `native_order` (idiom `order`); batches are cut as the shared plan's."""

    def order(self, epoch: int) -> np.ndarray:
        return native_order(self.seed, epoch, self.n_rows) if self.shuffle else np.arange(self.n_rows)


class Pipeline:
    """A split's plan batches as Rows on the device; `epoch` walks the training plan."""

    def __init__(self, data: Dataset, plan: BatchPlan, spec: Spec):
        self.data, self.plan, self.dtype = data, plan, np.dtype(spec.dtype)

    def epoch(self, epoch: int) -> Iterator[Rows]:
        for batch in self.plan.batches(epoch):
            yield self.rows(batch)

    def rows(self, batch: Batch, split: str = "train") -> Rows:
        raise NotImplementedError


class Features(Pipeline):
    """Loader "fast": numpy indexing of the whole batch, one `jax.device_put`."""

    def arrays(self, batch: Batch, split: str = "train") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x in the spec dtype, y int32, w in the spec dtype) of the batch's rows, in numpy."""
        x, y = getattr(self.data, f"{split}_x"), getattr(self.data, f"{split}_y")
        return x[batch.ids].astype(self.dtype), y[batch.ids].astype(np.int32), batch.weights.astype(self.dtype)

    def rows(self, batch, split="train"):
        return Rows(batch.ids, *jax.device_put(self.arrays(batch, split)))


class NaiveFeatures(Features):
    """Loader "naive": each row indexed on its own in Python, stacked, then moved array by array."""

    def rows(self, batch, split="train"):
        x, y = getattr(self.data, f"{split}_x"), getattr(self.data, f"{split}_y")
        xb = np.stack([x[i].astype(self.dtype) for i in batch.ids])
        yb = np.array([y[i] for i in batch.ids], dtype=np.int32)
        return Rows(batch.ids, jnp.asarray(xb), jnp.asarray(yb), jnp.asarray(batch.weights.astype(self.dtype)))


def on_device(x: np.ndarray, y: np.ndarray, dtype) -> tuple[jax.Array, jax.Array]:
    """A whole split on the default device once: x in the spec dtype, y as int32."""
    return jax.device_put((x.astype(dtype), y.astype(np.int32)))


def take_rows(x: jax.Array, y: jax.Array, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rows `ids` (int32, in range by construction, hence mode "clip": no out-of-bounds fill) of a device split,
    features (N, F), images (N, H, W, C) or padded tokens (N, T) alike (axis 0)."""
    return jnp.take(x, ids, axis=0, mode="clip"), jnp.take(y, ids, axis=0, mode="clip")


gather = jax.jit(take_rows)


class PrefetchedFeatures(Features):
    """Loader "prefetched": the training split lives on the device; each batch is an on-device gather."""

    def __init__(self, data, plan, spec):
        super().__init__(data, plan, spec)
        self.split = on_device(data.train_x, data.train_y, self.dtype)

    def rows(self, batch, split="train"):
        ids, w = jax.device_put((batch.ids.astype(np.int32), batch.weights.astype(self.dtype)))
        return Rows(batch.ids, *gather(*self.split, ids), w)


class Tokens(Pipeline):
    """Token batches padded in numpy to the plan's T (`pad_batch`), with the masked-loss weights; for the training
    loop, the training split padded to each T an epoch uses, on the device (`splits`)."""

    def __init__(self, data, plan, spec):
        super().__init__(data, plan, spec)
        self.sides = resolve_sides(spec, "jax")
        self.loss_norm = spec.sequence.loss_norm
        self.padded: dict[int, tuple] = {}  # T → `splits`'s entry, the Ts of the last call

    def splits(self, lengths: set[int]) -> dict[int, tuple]:
        """Per T in `lengths`: ((tokens (N, T) int32, y int32) on the device, kept lengths L_i (N,)), the whole
        training split padded to T by `pad_batch`. A row's padding depends on the row and T alone, so rows `ids`
        of it are `pad_batch` of those rows to T. Made once per T and kept while the next call asks for it too:
        one split with max_len, one per bucket bound with buckets, otherwise one per distinct batch length of the
        epoch."""
        missing = sorted(set(lengths) - set(self.padded))
        every = self.data.sequences("train", np.arange(self.data.train_x.shape[0])) if missing else []
        known = dict(self.padded)
        for length in missing:
            tokens, _, kept = pad_batch(every, *self.sides, length)
            known[length] = (on_device(tokens, self.data.train_y, np.int32), kept)
        self.padded = {length: known[length] for length in lengths}
        return self.padded

    def weights(self, w: np.ndarray, kept: np.ndarray) -> np.ndarray:
        """m = common.padding.loss_weights(w, L, loss_norm) in the spec dtype, elementwise over any shape."""
        return loss_weights(w, kept, self.loss_norm).astype(self.dtype)

    def rows(self, batch, split="train"):
        tokens, _, kept = pad_batch(self.data.sequences(split, batch.ids), *self.sides, batch.length)
        y = getattr(self.data, f"{split}_y")[batch.ids]
        m = self.weights(batch.weights, kept)
        return Rows(batch.ids, *jax.device_put((tokens.astype(np.int32), y.astype(np.int32), m)), lengths=kept)


def micro_batches(spec: Spec, plan: BatchPlan) -> BatchPlan:
    """Idiom `split_step`: `plan`'s order cut into global micro-batches of G rows, the ragged last one padded to G
    with weight 0 (a sharded batch needs the static shape) unless last_batch is drop."""
    last = "drop" if spec.batching.last_batch == "drop" else "pad"
    return replace(plan, batch_size=Layout.from_spec(spec).micro, last_batch=last)


LOADERS = {"naive": NaiveFeatures, "fast": Features, "prefetched": PrefetchedFeatures}


def pipeline(spec: Spec, data: Dataset, plan: BatchPlan) -> Pipeline:
    """The training pipeline: tokens or features as the data are, over the shared plan or, idiom `order`, the
    JaxOrderPlan cut the same way; split steps with the idiom `split_step`: its global micro-batches
    (`micro_batches`)."""
    if on(spec, "order"):
        plan = JaxOrderPlan.from_spec(spec, data.train_x.shape[0], data.train_lengths)
    if on(spec, "split_step") and Layout.from_spec(spec).is_split:
        plan = micro_batches(spec, plan)
    return (Tokens if data.is_sequence else Features)(data, plan, spec)
