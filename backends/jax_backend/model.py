"""The MLP in flax.linen and the canonical ⇄ flax parameter mapping.

Why linen (not nnx): `MLP.apply(params, x)` is a pure function of an explicit params pytree, so it drops straight
into one `jax.jit`-ed step and into optax's pytree API without nnx.split/merge, and `nn.Dense`'s kernel is already
stored (in, out) like the canonical layout, so the mapping is a renaming, never a transpose.

Forward: every hidden Dense (named `layer{i}`) → activation → dropout, then the output Dense → logits.
Dropout: exact mode multiplies by the shared pre-scaled mask passed in (no framework layer accepts an external
mask); native mode uses `nn.Dropout` (inverted dropout, rng stream 'dropout'), deterministic unless `train`.
Evaluation passes neither masks nor train=True, so dropout is off.
Initialisation: exact mode loads the canonical parameters (`load`); native mode keeps nn.Dense's own defaults,
lecun_normal kernel (truncated normal, variance 1/fan_in) and zero bias, drawn by `model.init(PRNGKey(seed), x)`
(`native_init`).
Dense uses `precision=HIGHEST`: on GPUs JAX's DEFAULT precision may use TF32/bf16 passes for float32 matmuls
(DESIGN §5 "Precision"); on CPU it changes nothing.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh}


class MLP(nn.Module):
    hidden: Sequence[int]
    n_classes: int
    activation: str
    dropout: float  # native-mode nn.Dropout rate; exact mode uses the passed masks instead
    dtype: Any

    @nn.compact
    def __call__(self, x, masks=None, train: bool = False):
        return self.head(x, masks, train)

    def head(self, x, masks, train: bool):
        """The Dense stack (called from a compact method; the sequence models reuse it after their encoder)."""
        act = ACTIVATIONS[self.activation]
        for i, width in enumerate(self.hidden):
            x = self.dropped(act(self._dense(i, width)(x)), masks, i, train)
        return self._dense(len(self.hidden), self.n_classes)(x)

    def dropped(self, x, masks, i: int, train: bool):
        """Dropout after hidden layer i: the shared mask (exact mode) or nn.Dropout (native mode)."""
        if masks is not None:
            return x * masks[i]
        if self.dropout > 0.0:
            return nn.Dropout(self.dropout, deterministic=not train)(x)
        return x

    def _dense(self, i: int, features: int) -> nn.Dense:
        return nn.Dense(features, dtype=self.dtype, param_dtype=self.dtype,
                        precision=jax.lax.Precision.HIGHEST, name=f"layer{i}")


def to_native(canonical: dict[str, Any]) -> dict:
    """{'layer{i}.weight': a, 'layer{i}.bias': b} → {'params': {'layer{i}': {'kernel': a, 'bias': b}}}.

    Leaves are passed through unchanged, so the same mapping builds optax masks and per-tensor coefficients.
    """
    tree: dict = {}
    for name, leaf in canonical.items():
        layer, kind = name.split(".")
        tree.setdefault(layer, {})["kernel" if kind == "weight" else "bias"] = leaf
    return {"params": tree}


def to_canonical(params: dict) -> dict[str, np.ndarray]:
    """The inverse of `to_native`, as numpy arrays."""
    return {f"{layer}.{'weight' if kind == 'kernel' else 'bias'}": np.asarray(leaf)
            for layer, leaves in params["params"].items() for kind, leaf in leaves.items()}


def load(model: MLP, canonical: dict[str, np.ndarray], n_features: int) -> dict:
    """Flax params holding `canonical`, checked against the structure and shapes `model.init` would create."""
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype=model.dtype), to_native(canonical))
    expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, n_features), model.dtype))
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), params)
    if jax.tree.map(lambda a: (a.shape, a.dtype), expected) != shapes:
        raise ValueError(f"canonical parameters do not fit the flax MLP: {shapes} vs {expected}")
    return params


def native_init(model: MLP, seed: int, x) -> dict:
    """Native mode: the params flax's own `model.init` draws from the spec seed (Dense defaults: lecun_normal
    kernel, zero bias), in the model's dtype."""
    return model.init(jax.random.PRNGKey(seed), jnp.asarray(x, dtype=model.dtype))
