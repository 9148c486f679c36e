"""The JAX backend as a common.driver.Adapter: flax.linen MLP + optax, trained by ONE jax.jit-ed pure step.

    step(params, opt_state, x, y, w, masks, key) → (params, opt_state, loss),
    loss = Σ w·ℓ / Σ w,  ℓ = optax.softmax_cross_entropy_with_integer_labels (per row; optax does not reduce).

jit compiles once per distinct input shape: under last_batch "pad" every batch has the shape B (one compile), a
ragged "keep" batch adds one more. `compile_count` counts them: it is incremented by the Python body of the step,
which only runs when JAX traces a new signature.

Native mode (common.native, jax column): order `jax.random.permutation(fold_in(PRNGKey(seed), epoch), N)` with
the plan's last-batch cuts (data.JaxOrderPlan; pad keeps its weight-0 filler, so one compile, but `batch_ids`
reports the real rows only), flax's default init `model.init(PRNGKey(seed), x)`, `nn.Dropout` with the key
`fold_in(fold_in(PRNGKey(seed), DROPOUT_STREAM), step)` (its own stream: `fold_in(PRNGKey(seed), step)` would be
the very key that shuffled epoch `step`), passed as an argument (not a closure constant) so it does not trigger
recompiles, the optax chain "as written" (optim.build_native) and L1 as a jnp.abs loss term. The loss is still
returned as the cross-entropy alone (the L1 term is differentiated, not recorded).

`jax_enable_x64` is process-global (one reason each backend runs in its own process). make_adapter turns it on for
EVERY spec, and every array is given its dtype explicitly (data.py, model.load, the masks), so a float32 run stays
float32. Why float32 too: (1) the worker runs many jobs in one process, so a float32 job after a float64 one would
otherwise run under different rules than one before it; (2) with x64 off optax evaluates Adam's bias correction
1 − β^t in float32 from β2 rounded to float32 (relative error ≈ 2e-5 for β2 = 0.999), which alone drives
float32 Adam runs past the 1e-4 tolerance against the oracle within ~20 steps; with x64 on, the Python-scalar math
is float64 (as in torch, which computes 1 − β^t in Python floats) and only the result is cast to float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from backends.jax_backend import data as pipeline
from backends.jax_backend import model as mlp
from backends.jax_backend import optim
from common.regularization import Regularization

DROPOUT_STREAM = 0x64726F70  # "drop": native dropout keys fold_in(fold_in(PRNGKey(seed), this), step)


class JaxAdapter:
    name = "jax"

    def __init__(self, spec: dict):
        self.spec = spec
        self.dtype = np.dtype(spec["dtype"])
        self.compile_count = 0

    def versions(self) -> dict[str, str]:
        import flax
        import jaxlib

        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
                "optax": optax.__version__}

    def device(self) -> str:
        d = jax.devices()[0]
        return "cpu" if d.platform == "cpu" else f"{d.platform}:{d.id} ({d.device_kind})"

    def prepare(self, spec, data, plan, params):
        self.data = data
        self.native = spec["mode"] == "native"
        reg = Regularization.from_spec(spec)
        if self.native:
            plan = pipeline.JaxOrderPlan.from_spec(spec, data.train_x.shape[0])
        self.pipeline = pipeline.Pipeline(data.train_x, data.train_y, plan, self.dtype)
        native_rate = spec["regularization"]["dropout"] if self.native else 0.0
        self.model = mlp.MLP(tuple(spec["model"]["hidden"]), data.n_classes, spec["model"]["activation"],
                             native_rate, jnp.dtype(self.dtype))
        if self.native:
            self.params = mlp.native_init(self.model, spec["seed"], data.train_x[:1])
            names = mlp.to_canonical(self.params)
            self.tx = optim.build_native(spec, reg, names)
            self.penalty = optim.native_l1_penalty(spec, reg, names)
        else:
            self.params = mlp.load(self.model, params, data.n_features)
            self.tx = optim.build(spec, reg, params)
            self.penalty = None
        self.opt_state = self.tx.init(self.params)
        self.key = jax.random.fold_in(jax.random.PRNGKey(spec["seed"]), DROPOUT_STREAM)
        self._step = jax.jit(self._train_step)
        self._eval = jax.jit(self._eval_batch)

    def _train_step(self, params, opt_state, x, y, w, masks, key):
        self.compile_count += 1  # Python side effect: runs at trace time only

        def loss_fn(p):
            logits = self.model.apply(p, x, masks, train=True, rngs={"dropout": key})
            ce = jnp.sum(w * optax.softmax_cross_entropy_with_integer_labels(logits, y)) / jnp.sum(w)
            return (ce if self.penalty is None else ce + self.penalty(p)), ce

        (_, loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def _eval_batch(self, params, x, y, w):
        logits = self.model.apply(params, x)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(w * ce), jnp.sum(w * (jnp.argmax(logits, axis=-1) == y))

    def epoch_batches(self, epoch):
        return self.pipeline.epoch(epoch)

    def batch_ids(self, batch):
        return batch.real_ids if self.native else batch.ids  # native: the real rows only (no pad filler)

    def train_step(self, batch, step, masks):
        if masks is not None:
            masks = [jnp.asarray(m, dtype=self.dtype) for m in masks]
        self.params, self.opt_state, loss = self._step(self.params, self.opt_state, batch.x, batch.y, batch.w,
                                                       masks, self.dropout_key(step))
        return float(loss)

    def dropout_key(self, step: int) -> jax.Array:
        """nn.Dropout's key for global step `step` (native mode; unused in exact mode, which passes masks)."""
        return jax.random.fold_in(self.key, step)

    def evaluate(self, split, batches):
        x, y = getattr(self.data, f"{split}_x"), getattr(self.data, f"{split}_y")
        out = []
        for batch in batches:
            b = pipeline.to_device(x, y, batch, self.dtype)
            loss_sum, correct = self._eval(self.params, b.x, b.y, b.w)
            out.append((float(loss_sum), float(correct), batch.n_real))
        return out

    def parameters(self):
        return mlp.to_canonical(self.params)


def make_adapter(spec: dict) -> JaxAdapter:
    """The adapter for a resolved spec; switches on `jax_enable_x64` (before any array is made; see the module
    docstring for why float32 specs too)."""
    jax.config.update("jax_enable_x64", True)
    return JaxAdapter(spec)
