"""Native mode: what a user porting the spec by hand to each framework would write (DESIGN §1.2, §5).

In `mode = "native"` nothing is shared but the data split. Each adapter uses its framework's idioms, read from
this table, so the run shows the traps instead of converting them away:

| concern        | torch                              | tf / Keras                          | jax (flax + optax)            |
|----------------|------------------------------------|-------------------------------------|-------------------------------|
| order          | DataLoader(shuffle=True, own gen)  | tf.data.shuffle(N, seed)            | jax.random.permutation        |
| last batch     | keep/drop as asked; pad → ragged   | keep/drop as asked; pad → ragged    | pad with weight 0 as asked    |
| init           | nn.Linear default (kaiming a=√5)   | Dense default (glorot, zero bias)   | Dense default (lecun, 0 bias) |
| dropout        | nn.Dropout, global torch RNG       | keras.layers.Dropout(seed)          | nn.Dropout, PRNG key          |
| l2 = λ         | SGD/Adam(weight_decay=λ), one group| regularizers.L2(λ)  (grad 2λw)      | add_decayed_weights(λ)        |
|                | of model.parameters(): biases too  |                                     |                               |
| weight_decay=λ | coupled: weight_decay=λ            | coupled: L2(λ) "as written"         | add_decayed_weights(λ)        |
| decoupled λ    | AdamW(weight_decay=λ); SGD has no  | optimizer weight_decay=λ, biases too| adamw(weight_decay=λ), no mask|
|                | decoupled form: weight_decay=λ     |                                     |                               |
| l1 = λ         | loss λ·A_t (as the spec says)      | regularizers.L1(λ): sum form always | loss λ·A_t, |x|' = +1 at 0    |
| Adam ε         | spec eps                           | Keras default 1e-7, ε-hat form      | spec eps                      |
| pad = native   | pad_sequence: post; seq[:T]        | pad_sequences: pre, truncating pre  | manual: post                  |
|                | (sequence.pad / truncate = "native" in either mode: common.padding.NATIVE_SIDES)             |
| epoch loss     | running mean of step losses, weighted by batch size (the `fit` convention); not the loss of
|                | the final weights                                                                            |

The numbers a user would get therefore differ by construction: Keras L2 doubles the gradient, Keras ε is 1e-7
in the ε-hat form, Keras decays biases, JAX's |x| has subgradient +1 at 0, and every RNG differs. Native runs are
compared statistically over seeds (common.stats), never step by step.
"""

from __future__ import annotations

import numpy as np

KERAS_DEFAULT_ADAM_EPSILON = 1e-7


def l2_as_written(spec: dict) -> float:
    """λ = l2 + coupled weight decay: the one "L2 strength" a user passes to each framework's own knob

    (torch `weight_decay=λ`, optax `add_decayed_weights(λ)`: gradient λ·w; Keras `L2(λ)`: gradient 2λ·w).
    """
    r = spec["regularization"]
    return r["l2"] + (r["weight_decay"] if r["decay"] == "coupled" else 0.0)


def running_epoch_loss(losses: list[float], sizes: list[int]) -> float:
    """The `fit`-style epoch loss: Σ n_b·loss_b / Σ n_b over the epoch's steps, taken while the weights change."""
    return float(np.dot(losses, sizes) / np.sum(sizes))
