"""Native mode: what a user porting the spec by hand to each framework would write (docs/design.md, "Native mode").

In `mode = "native"` nothing is shared but the data split. Each adapter uses its framework's own order, default
init, dropout RNG and regularization knobs, as the table in the design document lists per framework, so the run
shows the traps instead of converting them away: Keras L2(λ) doubles the gradient, Keras Adam keeps ε = 1e-7 in
the ε-hat form, Keras decays biases, JAX's |x| has subgradient +1 at 0, and every RNG differs. Native runs are
therefore compared statistically over seeds (common.stats), never step by step.

The two rules adapters take from here: the one "L2 strength" a user passes to each framework's knob
(`l2_as_written`), and Keras `fit`'s epoch loss, the running mean of the step losses (`running_epoch_loss`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from common.spec import Spec

KERAS_DEFAULT_ADAM_EPSILON = 1e-7


def l2_as_written(spec: Spec) -> float:
    """λ = l2 + coupled weight decay: the one "L2 strength" a user passes to each framework's own knob

    (torch `weight_decay=λ`, optax `add_decayed_weights(λ)`: gradient λ·w; Keras `L2(λ)`: gradient 2λ·w).
    """
    r = spec.regularization
    return r.l2 + (r.weight_decay if r.decay == "coupled" else 0.0)


def running_epoch_loss(losses: list[float], sizes: list[int]) -> float:
    """The `fit`-style epoch loss: Σ n_b·loss_b / Σ n_b over the epoch's steps, taken while the weights change."""
    return float(np.dot(losses, sizes) / np.sum(sizes))
