"""The shapes shared by every layer kind: a resolved `Layer`, a parameter's `Param` and the `LayerKind` base."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from common.spec import Spec

# what flows between layers: token ids (B, T), a sequence of vectors (B, T, E), features (B, F) or images
# (B, H, W, C), canonical NHWC
TOKENS, SEQUENCE, FEATURES, IMAGES = "tokens", "sequence", "features", "images"


@dataclass(frozen=True)
class Layer:
    """One layer of a resolved stack (hashable, so a flax module can hold a tuple of them).

    `name` is its canonical parameter prefix (`layer0`, `ln0`, `conv0`, `bn0`, `embed`, `rnn`; "" for kinds
    without parameters), `number` counts the earlier layers of the same kind (dense i, dropout i, conv i, ...),
    `in_width`/`width` are the widths it reads and gives: features, or channels C of images (an embedding reads
    the vocabulary size). `in_shape`/`shape` are the per-row shapes it reads and gives: (F,) for features,
    (H, W, C) for images, () for tokens and sequences. `flow` is what it reads (FEATURES, IMAGES, ...).
    Image kinds: `kernel` (conv kernel or pool window, square), `stride`, `padding` ("same" | "valid") and `pads`,
    the (top, bottom, left, right) zero padding "same" resolves to (common.layers.image.same_pads);
    batch_norm: `momentum` (decay convention), `running_var` ("biased" | "unbiased"), `sync` (statistics over all
    replicas of a split step, common.layers.norm); dense and conv2d: `bias`
    (False: no bias parameter, the idiom before a batch_norm). Unused keys are defaults.
    """

    kind: str
    index: int
    number: int
    name: str
    in_width: int
    width: int
    activation: str = "none"
    rate: float = 0.0
    eps: float = 0.0
    flow: str = FEATURES
    in_shape: tuple[int, ...] = ()
    shape: tuple[int, ...] = ()
    kernel: int = 0
    stride: int = 1
    padding: str = "valid"
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    momentum: float = 0.0
    running_var: str = "biased"
    sync: bool = False
    bias: bool = True

    def param(self, suffix: str) -> str:
        """The canonical name of one of this layer's parameters, e.g. `layer0.weight`."""
        return f"{self.name}.{suffix}"


@dataclass(frozen=True)
class Param:
    """A parameter of a kind: its shape from the layer, and whether it is a kernel (always regularized) or a
    bias-like vector (bias, offset, scale: regularized only with `regularization.regularize_bias`). `state`: a
    non-trainable statistic (batch_norm's running mean and variance): recorded, loaded and compared like a
    parameter, never regularized nor updated by the optimizer."""

    shape: Callable[[Layer], tuple[int, ...]]
    kernel: bool
    state: bool = False


@dataclass(frozen=True)
class Key:
    """One key of a layer table: its type, default (None: taken from the spec, see `LayerKind.default`) and an
    optional check returning an error text or None."""

    kind: type
    default: Any = None
    check: Callable[[Any], str | None] | None = None


class LayerKind:
    """A layer kind: its table keys, what it reads and gives, its parameters and their canonical init."""

    kind: str = ""
    prefix: str = ""  # parameter prefix; "" for kinds without parameters
    numbered: bool = True  # prefix{number} (dense, ln) or one per model (embed, rnn)
    reads: tuple[str, ...] = (FEATURES,)  # the flows it accepts
    gives: str | None = FEATURES  # None: the flow it read
    keys: dict[str, Key] = {}
    required: tuple[str, ...] = ()  # keys a table must give
    params: dict[str, Param] = {}

    def default(self, key: str, spec: Spec, last: bool, n_classes: int) -> Any:
        """The value of a key the table leaves out (only for keys whose `Key.default` is None)."""
        raise KeyError(key)

    def width(self, table: dict, in_width: int) -> int:
        """The width this layer gives for the filled `table` (feature and sequence flows)."""
        return in_width

    def resolve(self, table: dict, in_shape: tuple[int, ...], where: str) -> dict:
        """Shape-dependent fields of the `Layer` on features (in_shape (F,)) and images ((H, W, C)): at least
        `shape`, the per-row output shape; `where` names the table for errors (common.errors.InputError)."""
        return {"shape": (*in_shape[:-1], self.width(table, in_shape[-1]))}

    def parameters(self, layer: Layer) -> dict[str, Param]:
        """The parameters `layer` has, by suffix (a layer without a bias leaves `bias` out)."""
        return {suffix: p for suffix, p in self.params.items() if suffix != "bias" or layer.bias}

    def init(self, layer: Layer, scheme: str, seed: int) -> dict[str, np.ndarray]:
        """Canonical initial values by parameter suffix (float64; the caller casts)."""
        return {}
