"""The shapes shared by every layer kind: a resolved `Layer`, a parameter's `Param` and the `LayerKind` base."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from common.spec import Spec

# what flows between layers: token ids (B, T), a sequence of vectors (B, T, E), or features (B, F)
TOKENS, SEQUENCE, FEATURES = "tokens", "sequence", "features"


@dataclass(frozen=True)
class Layer:
    """One layer of a resolved stack (hashable, so a flax module can hold a tuple of them).

    `name` is its canonical parameter prefix (`layer0`, `ln0`, `embed`, `rnn`; "" for kinds without parameters),
    `number` counts the earlier layers of the same kind (dense i, dropout i, ln i), `in_width`/`width` are the
    feature widths it reads and gives (an embedding reads the vocabulary size). Kind keys not used are defaults.
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

    def param(self, suffix: str) -> str:
        """The canonical name of one of this layer's parameters, e.g. `layer0.weight`."""
        return f"{self.name}.{suffix}"


@dataclass(frozen=True)
class Param:
    """A parameter of a kind: its shape from the layer, and whether it is a kernel (always regularized) or a
    bias-like vector (bias, offset, scale: regularized only with `regularization.regularize_bias`)."""

    shape: Callable[[Layer], tuple[int, ...]]
    kernel: bool


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
    reads: str = FEATURES
    gives: str = FEATURES
    keys: dict[str, Key] = {}
    params: dict[str, Param] = {}

    def default(self, key: str, spec: Spec, last: bool, n_classes: int) -> Any:
        """The value of a key the table leaves out (only for keys whose `Key.default` is None)."""
        raise KeyError(key)

    def width(self, table: dict, in_width: int) -> int:
        """The width this layer gives for the filled `table`."""
        return in_width

    def init(self, layer: Layer, scheme: str, seed: int) -> dict[str, np.ndarray]:
        """Canonical initial values by parameter suffix (float64; the caller casts)."""
        return {}
