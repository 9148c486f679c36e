"""Layer stacks: the canonical vocabulary every model is built from (docs/design.md, "Layer stacks").

A model is `model.layers`, an ordered list of tables `{kind = "...", <that kind's keys>}`, or the shorthand
`model.kind = "mlp" | "seq_pool" | "rnn"` with `hidden`, `activation`, `embed_dim`, which `tables` expands:

    mlp:      [dense(h, act), dropout]* · dense
    seq_pool: embedding · masked_mean · [dense(h, act), dropout]* · dense
    rnn:      embedding · rnn(h) · dropout · dense           (dropout only when regularization.dropout > 0)

`stack` resolves the tables for a dataset: every key filled, each layer's widths, shapes and canonical parameter
prefix. Each kind is defined once, in its family's module (core, norm, image, sequence), with its formula; adding a
kind is a class there plus one entry in each backend's layer module (docs/design.md, "Adding a layer kind").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from common.errors import InputError
from common.layers import core, image, norm, sequence
from common.layers.base import FEATURES, IMAGES, SEQUENCE, TOKENS, Layer, LayerKind, Param
from common.layers.norm import check_batch_statistics

if TYPE_CHECKING:
    from common.spec import Spec

KINDS: dict[str, LayerKind] = {k.kind: k for k in (*core.KINDS, *norm.KINDS, *image.KINDS, *sequence.KINDS)}
SHORTHANDS = ("mlp", "seq_pool", "rnn")


def _where(k: int) -> str:
    return f"model.layers[{k}]"


def check_tables(tables: list, start: str | None = None) -> list[dict]:
    """Spec-time checks of `model.layers` (known kinds and keys, types, ranges, required keys, one embedding and
    one rnn at most, a dense layer last, and the flow tokens → sequence → features or images → features when the
    input flow `start` is known: None checks it when the data is loaded, in `stack`); returns the tables with
    floats normalised. Keys left out stay out (`stack` fills them), so a resolved spec validates again unchanged."""
    out = []
    if tables and isinstance(tables[0], dict) and tables[0].get("kind") == "embedding":
        start = TOKENS
    flow = start
    seen: set[str] = set()
    for k, table in enumerate(tables):
        if not isinstance(table, dict):
            raise InputError(f"spec key '{_where(k)}': expected a table {{kind = ...}}")
        kind = KINDS.get(table.get("kind"))
        if kind is None:
            raise InputError(f"spec key '{_where(k)}.kind': {table.get('kind')!r} must be one of {', '.join(KINDS)}")
        row = {"kind": kind.kind}
        for key, value in table.items():
            if key == "kind":
                continue
            if key not in kind.keys:
                raise InputError(f"spec key '{_where(k)}.{key}': unknown key for kind '{kind.kind}'")
            row[key] = _typed(f"{_where(k)}.{key}", value, kind.keys[key])
        for key in kind.required:
            if key not in row:
                raise InputError(f"spec key '{_where(k)}.{key}': required for kind '{kind.kind}'")
        if flow is not None:
            flow = next_flow(kind, flow, f"{_where(k)}.kind")
        if not kind.numbered and kind.kind in seen:
            raise InputError(f"spec key '{_where(k)}.kind': a model has at most one '{kind.kind}' layer")
        seen.add(kind.kind)
        out.append(row)
    if out and out[-1]["kind"] != "dense":
        raise InputError(f"spec key '{_where(len(out) - 1)}.kind': the last layer must be dense (it gives the logits)")
    return out


def next_flow(kind: LayerKind, flow: str, key: str) -> str:
    """The flow after a layer of `kind` reading `flow`; a one-line error naming `key` when it cannot read it."""
    if flow in kind.reads:
        return flow if kind.gives is None else kind.gives
    if flow == IMAGES:
        hint = "; put a flatten or global_avg_pool before it"
    elif IMAGES in kind.reads:
        hint = "; set data.images = true (digits) or give an npz whose x is 4-D (N, H, W, C)"
    else:
        hint = ""
    raise InputError(f"spec key '{key}': '{kind.kind}' reads {' or '.join(kind.reads)} but gets {flow}{hint}")


def _typed(where: str, value, key) -> object:
    if key.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, key.kind) or (key.kind in (int, float) and isinstance(value, bool)):
        raise InputError(f"spec key '{where}': expected {key.kind.__name__}, got {type(value).__name__} {value!r}")
    problem = key.check(value) if key.check else None
    if problem:
        raise InputError(f"spec key '{where}': {value!r} {problem}")
    return value


def tables(spec: Spec) -> list[dict]:
    """The model's layer tables: `model.layers` as written, or the shorthand expanded (module docstring)."""
    model = spec.model
    if model.layers:
        return [dict(t) for t in model.layers]
    drop = [{"kind": "dropout"}] if spec.regularization.dropout > 0.0 else []
    dense = [
        row for h in model.hidden for row in ({"kind": "dense", "units": h, "activation": model.activation}, *drop)
    ]
    if model.kind == "mlp":
        return [*dense, {"kind": "dense"}]
    embed = {"kind": "embedding", "dim": model.embed_dim}
    if model.kind == "seq_pool":
        return [embed, {"kind": "masked_mean"}, *dense, {"kind": "dense"}]
    return [embed, {"kind": "rnn", "units": model.hidden[0]}, *drop, {"kind": "dense"}]


def reads_tokens(spec: Spec) -> bool:
    """Whether the model starts with an embedding (it reads token sequences, not features)."""
    return tables(spec)[0]["kind"] == "embedding"


def stack(spec: Spec, n_in: int | tuple[int, ...], n_classes: int) -> tuple[Layer, ...]:
    """The resolved layers for inputs `n_in`: the vocabulary for token models, the feature count, or the image
    shape (H, W, C). Flow and shape errors name the key (`next_flow`, each kind's `resolve`)."""
    rows = tables(spec)
    counts: dict[str, int] = {}
    if rows[0]["kind"] == "embedding":
        flow, width, shape = TOKENS, int(n_in), ()
    elif isinstance(n_in, tuple) and len(n_in) == 3:
        flow, width, shape = IMAGES, n_in[2], tuple(n_in)
    else:
        n_in = n_in[0] if isinstance(n_in, tuple) else n_in
        flow, width, shape = FEATURES, int(n_in), (int(n_in),)
    out = []
    for k, table in enumerate(rows):
        kind = KINDS[table["kind"]]
        last = k == len(rows) - 1
        filled = {
            key: table[key]
            if key in table
            else (spec_key.default if spec_key.default is not None else kind.default(key, spec, last, n_classes))
            for key, spec_key in kind.keys.items()
        }
        if kind.kind == "dense" and filled["units"] == 0:
            filled["units"] = n_classes
        out_flow = next_flow(kind, flow, f"{_where(k)}.kind" if spec.model.layers else "model.kind")
        number = counts.get(kind.kind, 0)
        counts[kind.kind] = number + 1
        name = (f"{kind.prefix}{number}" if kind.numbered else kind.prefix) if kind.prefix else ""
        if flow in (FEATURES, IMAGES):
            fields = kind.resolve(filled, shape, _where(k))
            new_width = fields["shape"][-1]
        else:
            new_width = kind.width(filled, width)
            fields = {"shape": (new_width,) if out_flow == FEATURES else ()}
        own = {
            key: filled[key]
            for key in ("activation", "rate", "eps", "momentum", "running_var", "sync", "bias")
            if key in filled
        }
        out.append(Layer(kind.kind, k, number, name, width, new_width, flow=flow, in_shape=shape, **own, **fields))
        flow, width, shape = out_flow, new_width, fields["shape"]
    if width != n_classes:
        raise InputError(
            f"spec key '{_where(len(rows) - 1)}.units': the last dense layer gives the logits, "
            f"so it needs {n_classes} units (the number of classes), not {width}"
        )
    return tuple(out)


def param_shapes(layers: tuple[Layer, ...]) -> dict[str, tuple[int, ...]]:
    """Canonical parameter name → shape, in stack order."""
    return {layer.param(s): p.shape(layer) for layer in layers for s, p in KINDS[layer.kind].parameters(layer).items()}


def init_params(layers: tuple[Layer, ...], scheme: str, seed: int, dtype) -> dict[str, np.ndarray]:
    """The canonical initial parameters of the stack (each kind's `init`), cast to `dtype`."""
    out = {}
    for layer in layers:
        kind = KINDS[layer.kind]
        for suffix, value in kind.init(layer, scheme, seed).items():
            if suffix in kind.parameters(layer):  # drawn anyway (weights first), so the weight streams never move
                out[layer.param(suffix)] = np.asarray(value).astype(dtype)
    return out


def _param(name: str) -> Param:
    """The `Param` of canonical parameter `name`, its kind found from the name's prefix."""
    prefix, suffix = name.split(".", 1)
    for kind in KINDS.values():
        if kind.prefix and prefix.rstrip("0123456789") == kind.prefix and suffix in kind.params:
            return kind.params[suffix]
    raise KeyError(f"no layer kind has a parameter named {name!r}")


def regularized(name: str, regularize_bias: bool) -> bool:
    """Whether l1, l2 and weight decay touch parameter `name`: kernels always, bias-like vectors (bias, offset,
    scale) only with regularize_bias, state (batch_norm's running statistics) never."""
    param = _param(name)
    return not param.state and (param.kernel or regularize_bias)


def is_state(name: str) -> bool:
    """Whether `name` is non-trainable state (batch_norm's `bn{i}.mean`, `bn{i}.var`), not a trained parameter."""
    return _param(name).state


def dropout_layers(layers: tuple[Layer, ...]) -> tuple[Layer, ...]:
    """The dropout layers in stack order (the i-th draws shared mask i)."""
    return tuple(layer for layer in layers if layer.kind == "dropout")


__all__ = [
    "FEATURES",
    "IMAGES",
    "KINDS",
    "SEQUENCE",
    "SHORTHANDS",
    "TOKENS",
    "Layer",
    "check_batch_statistics",
    "check_tables",
    "dropout_layers",
    "init_params",
    "is_state",
    "param_shapes",
    "reads_tokens",
    "regularized",
    "stack",
    "tables",
]
