"""The experiment spec: TOML schema, defaults, `--set` overrides and strict validation (docs/design.md, "Spec").

Every key has a default, a type and an allowed range; unknown keys, wrong types and out-of-range values raise
:class:`InputError` with a one-line message naming the dotted key. Two forms:

- the JSON form, a plain nested dict: raw specs (TOML, overrides) before `validate`, and the validated dict
  `validate` returns, which records, jobs files and spec.json store;
- the typed form, `Spec`: frozen dataclasses generated from SCHEMA (`spec.optimizer.lr`), what the code passes
  around. `load_spec` returns one; `typed(validate(d))` makes one at a JSON boundary, `spec.to_dict()` gives the
  JSON form back and `dataclasses.replace(spec, seed=1)` a variant (`typed(validate(apply_overrides(
  spec.to_dict(), overrides)))` where a `--set` path is applied).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass, make_dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from common import distributed, idioms, layers, schedules
from common.errors import InputError
from common.frameworks import REGISTRY


@dataclass(frozen=True)
class Field:
    """One spec key: its default, its type and an optional check returning an error text or None."""

    default: Any
    kind: type | tuple
    check: Callable[[Any], str | None] | None = None


def _choice(*options: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"must be one of {', '.join(options)}"


def _range(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Callable[[Any], str | None]:
    def check(v):
        if not math.isfinite(v):
            return "must be finite"
        if v < lo or (lo_open and v == lo) or v > hi or (hi_open and v == hi):
            return f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        return None

    return check


# Limits on sizes (docs/design.md, "Spec"): checked before anything is allocated, so an absurd value is exit 2
# naming its key or file, never a MemoryError. MAX_CLASSES bounds labels (0..MAX_CLASSES−1), MAX_TOKEN token ids,
# MAX_WIDTH every width key (model.hidden, model.embed_dim), MAX_ELEMENTS the largest array a spec implies (one
# parameter tensor, one layer's activations over a split, the padded token storage n × longest sequence).
MAX_CLASSES = 1_000_000
MAX_TOKEN = 2**24 - 1
MAX_WIDTH = 2**20
MAX_ELEMENTS = 2**28


def _positive_ints(v) -> str | None:
    if not all(isinstance(h, int) and not isinstance(h, bool) and 0 < h <= MAX_WIDTH for h in v):
        return f"must be a list of positive integers ≤ {MAX_WIDTH}"
    return None


def _increasing_ints(v) -> str | None:
    if _positive_ints(v) or any(a >= b for a, b in itertools.pairwise(v)):
        return "must be a list of strictly increasing positive integers"
    return None


SEQUENCE_DATA = ("sequences", "jsonl")
FILE_DATA = ("csv", "npz", "jsonl")
MODEL_SHORTHAND = ("kind", "hidden", "activation", "embed_dim")


def is_sequence(spec: Spec) -> bool:
    """Whether a resolved spec's model reads token sequences (its first layer is an embedding)."""
    return layers.reads_tokens(spec)


SCHEMA: dict[str, Any] = {
    "name": Field("iris-mlp", str),
    "seed": Field(0, int, _range(0, 2**32 - 1)),
    "dtype": Field("float32", str, _choice("float32", "float64")),
    "mode": Field("exact", str, _choice("exact", "native")),
    # how a backend executes its training step (docs/design.md, "Execution modes"): eager = op by op (torch eager,
    # tf.function graph without XLA, jax without jit), compiled = torch.compile / tf.function(jit_compile=True) /
    # jax.jit, fused = CUDA-graph step (torch, GPU) / one XLA program per epoch (tf) / lax.scan over an epoch (jax);
    # default = each framework's idiomatic loop (common.frameworks)
    "execution": Field("default", str, _choice("default", "eager", "compiled", "fused")),
    "data": {
        "name": Field("iris", str, _choice("doughnuts", "iris", "digits", "csv", "npz", "sequences", "jsonl")),
        "test_fraction": Field(0.2, float, _range(0.0, 1.0, lo_open=True, hi_open=True)),
        "standardize": Field(True, bool),
        # digits as (N, 8, 8, 1) images (NHWC) instead of 64 features; an npz whose x is 4-D is read as images
        "images": Field(False, bool),
        "path": Field("", str),
        "label_column": Field("label", str),
        "params": Field({}, dict),
    },
    "model": {
        # the model: `layers`, a list of layer tables (common.layers), or the shorthand kind + hidden (+
        # activation, embed_dim): mlp on feature data; seq_pool (embedding → masked mean → MLP) or rnn (embedding →
        # Elman tanh RNN → Dense) on sequence data, `hidden` the MLP's widths (seq_pool) or the RNN state size (rnn)
        "layers": Field([], list),
        "kind": Field("mlp", str, _choice(*layers.SHORTHANDS)),
        "embed_dim": Field(8, int, _range(1, MAX_WIDTH)),
        "hidden": Field([32], list, _positive_ints),
        "activation": Field("relu", str, _choice("relu", "tanh")),
        "init": Field("torch_default", str, _choice("torch_default", "glorot_uniform", "lecun_normal")),
        "norm_eps": Field(1e-5, float, _range(0.0, 1.0, lo_open=True, hi_open=True)),  # layer_norm's ε default
    },
    "batching": {
        "batch_size": Field(16, int, _range(1, 2**31)),
        "shuffle": Field(True, bool),
        "last_batch": Field("keep", str, _choice("keep", "drop", "pad")),
        "eval_batch_size": Field(0, int, _range(0, 2**31)),
        # K micro-batches per optimizer step, and the gradient over its parts (common.distributed)
        "accumulate": Field(1, int, _range(1, 2**16)),
        "reduction": Field("global_mean", str, _choice("global_mean", "mean_of_means")),
    },
    # R data-parallel replicas on each framework's own engine; batching.batch_size is the global batch split over
    # them, or each replica's (common.distributed)
    "distributed": {
        "replicas": Field(1, int, _range(1, 64)),
        "batch": Field("global", str, _choice("global", "per_replica")),
    },
    # variable-length sequences (common.padding): pad / truncate side ("native": each framework's idiom, see
    # common.frameworks), max_len (0: the longest in the batch), masks on or off, length buckets
    # (inclusive upper bounds; empty: no bucketing) and the loss normalisation (common.padding.loss_weights)
    "sequence": {
        "pad": Field("post", str, _choice("post", "pre", "native")),
        "truncate": Field("post", str, _choice("post", "pre", "native")),
        "max_len": Field(0, int, _range(0, 2**20)),
        "mask": Field(True, bool),
        "buckets": Field([], list, _increasing_ints),
        "loss_norm": Field("per_sequence", str, _choice("per_sequence", "per_token")),
    },
    "regularization": {
        "dropout": Field(0.0, float, _range(0.0, 1.0, hi_open=True)),
        "l1": Field(0.0, float, _range(0.0, 1e6)),
        "l1_reduction": Field("mean", str, _choice("mean", "sum")),
        "l2": Field(0.0, float, _range(0.0, 1e6)),
        "weight_decay": Field(0.0, float, _range(0.0, 1e6)),
        "decay": Field("coupled", str, _choice("coupled", "decoupled")),
        "regularize_bias": Field(False, bool),
    },
    "optimizer": {
        "name": Field("sgd", str, _choice("sgd", "adam", "adamw")),
        "lr": Field(0.01, float, _range(0.0, 1e6, lo_open=True)),
        "momentum": Field(0.0, float, _range(0.0, 1.0, hi_open=True)),
        "nesterov": Field(False, bool),
        "beta1": Field(0.9, float, _range(0.0, 1.0, hi_open=True)),
        "beta2": Field(0.999, float, _range(0.0, 1.0, hi_open=True)),
        "eps": Field(1e-8, float, _range(0.0, 1.0, lo_open=True)),
        # gradient clipping by norm (common.clipping): c = clip_norm (0: off), over all tensors or each one
        "clip_norm": Field(0.0, float, _range(0.0, 1e6)),
        "clip": Field("global", str, _choice("global", "per_tensor")),
    },
    # the learning rate lr(t) after t optimizer steps (common.schedules); optimizer.lr is lr(0) or the peak
    "schedule": {
        "kind": Field("constant", str, _choice("constant", "step", "cosine", "warmup_cosine")),
        "warmup_steps": Field(0, int, _range(0, 2**31)),
        "decay_steps": Field(0, int, _range(0, 2**31)),
        "step_size": Field(1, int, _range(1, 2**31)),
        "gamma": Field(0.1, float, _range(0.0, 1.0, lo_open=True)),
        "final_lr": Field(0.0, float, _range(0.0, 1e6)),
    },
    # native-mode idioms switched one by one (common.idioms): "all" or a list of ids; mode = "native" is "all"
    "native": {
        "idioms": Field([], (list, str)),
    },
    "train": {
        "epochs": Field(5, int, _range(1, 100000)),
    },
    "metrics": {
        "aggregation": Field("weighted", str, _choice("weighted", "per_batch_mean")),
    },
    "equivalence": {  # multi-seed TOST on final test metrics (`parity run --seeds K`), see common.stats
        "acc_margin": Field(0.05, float, _range(0.0, 1.0, lo_open=True)),
        "loss_margin": Field(0.1, float, _range(0.0, 1e6, lo_open=True)),
        "alpha": Field(0.05, float, _range(0.0, 0.5, lo_open=True, hi_open=True)),
    },
}


def execution_of(spec: Spec, backend: str) -> str:
    """The execution mode `backend` runs for this spec."""
    return REGISTRY[backend].default_execution if spec.execution == "default" else spec.execution


# The built-in default experiment: the seeds' iris MLP with shared dropout masks and a little weight decay.
_DEFAULT_OVERRIDES = {
    "dtype": "float64",
    "regularization": {"dropout": 0.5, "weight_decay": 0.001},
    "optimizer": {"momentum": 0.9},
}


def defaults() -> dict:
    """The schema's defaults as a nested dict."""

    def walk(node):
        return {k: (walk(v) if isinstance(v, dict) else copy.deepcopy(v.default)) for k, v in node.items()}

    return walk(SCHEMA)


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "params":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_type(key: str, value: Any, field: Field) -> Any:
    kind = field.kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if not ok:
        expected = " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
        raise InputError(f"spec key '{key}': expected {expected}, got {type(value).__name__} {value!r}")
    if field.check is not None:
        problem = field.check(value)
        if problem:
            raise InputError(f"spec key '{key}': {value!r} {problem}")
    return value


def validate(spec: dict) -> dict:
    """Check every key of a full spec against SCHEMA and the cross-key rules; return the normalised copy (the JSON
    form; `typed` gives its `Spec` view).

    Cross-key rules:
    - `optimizer.name = "adamw"` is Adam with decoupled decay, so `regularization.decay` must be "decoupled".
    - `data.path` is required for csv, npz and jsonl, and must be empty for the built-in datasets.
    - seq_pool / rnn read sequence data (sequences, jsonl), mlp reads feature data; rnn has one hidden width;
      `sequence.buckets` and `sequence.max_len` exclude each other; sequences cannot run `execution = "fused"`.
    - `[sequence]` keys other than their defaults, and `model.embed_dim` on a shorthand model, are refused on
      feature data (they would be silently unused).
    - Adam with decoupled decay is spelled `adamw`.
    - `optimizer.nesterov` needs a momentum > 0 (torch raises otherwise).
    - split steps (distributed.replicas or batching.accumulate > 1): common.distributed.check.
    - `optimizer.clip` needs clip_norm > 0; `[schedule]`: common.schedules.check; `native.idioms`:
      common.idioms.check and check_bundle.
    """

    def walk(node: dict, schema: dict, prefix: str) -> dict:
        if not isinstance(node, dict):
            raise InputError(f"spec key '{prefix.rstrip('.')}': expected a table")
        unknown = sorted(set(node) - set(schema))
        if unknown:
            raise InputError(f"spec key '{prefix}{unknown[0]}': unknown key")
        out = {}
        for key, sub in schema.items():
            dotted = prefix + key
            if isinstance(sub, dict):
                out[key] = walk(node.get(key, {}), sub, dotted + ".")
            else:
                out[key] = _check_type(dotted, node.get(key, copy.deepcopy(sub.default)), sub)
        return out

    out = walk(spec, SCHEMA, "")
    if not out["name"].strip():
        raise InputError("spec key 'name': must not be empty")
    if out["optimizer"]["name"] == "adamw" and out["regularization"]["decay"] != "decoupled":
        raise InputError(
            "spec key 'regularization.decay': optimizer 'adamw' is decoupled by definition; "
            "set decay = \"decoupled\" or use optimizer 'adam'"
        )
    if out["optimizer"]["name"] == "adam" and out["regularization"]["decay"] == "decoupled":
        raise InputError("spec key 'optimizer.name': Adam with decoupled decay is AdamW; set name = \"adamw\"")
    if out["optimizer"]["nesterov"] and out["optimizer"]["momentum"] == 0.0:
        raise InputError("spec key 'optimizer.nesterov': nesterov needs optimizer.momentum > 0")
    if out["optimizer"]["name"] != "sgd" and (out["optimizer"]["momentum"] or out["optimizer"]["nesterov"]):
        raise InputError("spec key 'optimizer.momentum': momentum and nesterov apply to sgd only")
    if out["optimizer"]["clip"] != "global" and out["optimizer"]["clip_norm"] == 0.0:
        raise InputError("spec key 'optimizer.clip': clipping is off (optimizer.clip_norm = 0); set clip_norm > 0")
    problem = schedules.check(out["schedule"])
    if problem:
        raise InputError(f"spec key '{problem[0]}': {problem[1]}")
    idioms.check(out["mode"], out["native"]["idioms"])
    _check_model(out)
    _check_sequence_rules(typed(out))
    distributed.check(typed(out))
    idioms.check_bundle(typed(out))
    needs_path = out["data"]["name"] in FILE_DATA
    if needs_path and not out["data"]["path"]:
        raise InputError(f"spec key 'data.path': required for data.name = '{out['data']['name']}'")
    if not needs_path and out["data"]["path"]:
        raise InputError(f"spec key 'data.path': only csv, npz and jsonl read a path, not '{out['data']['name']}'")
    return out


def _check_model(spec: dict) -> None:
    """`model.layers` is checked by common.layers.check_tables; with layers given, the shorthand keys must keep
    their defaults (they would be silently unused)."""
    model, data = spec["model"], spec["data"]
    if data["images"] and data["name"] != "digits":
        raise InputError(
            f"spec key 'data.images': only digits has an image form, not '{data['name']}' "
            "(an npz is read as images when its x is 4-D (N, H, W, C))"
        )
    start = layers.IMAGES if data["images"] else (None if data["name"] == "npz" else layers.FEATURES)
    model["layers"] = layers.check_tables(model["layers"], start)
    if model["layers"]:
        base = SCHEMA["model"]
        for key in MODEL_SHORTHAND:
            if model[key] != base[key].default:
                raise InputError(
                    f"spec key 'model.{key}': the shorthand is not read when model.layers is given; drop one of them"
                )


def _check_sequence_rules(spec: Spec) -> None:
    """Sequence models need sequence data and the other way round; rnn has one state size; buckets replace
    max_len; fused execution needs the static shapes sequences do not have. Read on the typed view of the checked
    dict: whether the model reads tokens is a property of its resolved layer tables (common.layers.tables)."""
    seq_model, seq_data = is_sequence(spec), spec.data.name in SEQUENCE_DATA
    if seq_model != seq_data:
        key = "model.layers" if spec.model.layers else "model.kind"
        raise InputError(
            f"spec key '{key}': this model cannot read data.name = '{spec.data.name}' (a model "
            "starting with an embedding (seq_pool, rnn) reads sequences or jsonl, others read features)"
        )
    if not seq_data:
        for key, field in SCHEMA["sequence"].items():
            default = tuple(field.default) if isinstance(field.default, list) else field.default
            if getattr(spec.sequence, key) != default:
                raise InputError(
                    f"spec key 'sequence.{key}': applies to sequence data only, and data.name = "
                    f"'{spec.data.name}' is feature data; drop it"
                )
        if not spec.model.layers and spec.model.embed_dim != SCHEMA["model"]["embed_dim"].default:
            raise InputError(
                f"spec key 'model.embed_dim': only sequence models (seq_pool, rnn) embed tokens, "
                f"model.kind = '{spec.model.kind}' does not; drop it"
            )
    if spec.model.kind == "rnn" and len(spec.model.hidden) != 1:
        raise InputError("spec key 'model.hidden': rnn takes exactly one width, the RNN state size")
    if spec.sequence.buckets and spec.sequence.max_len:
        raise InputError(
            "spec key 'sequence.max_len': with buckets the last bucket bound is the maximum length; set max_len = 0"
        )
    if seq_model and spec.execution == "fused":
        raise InputError(
            "spec key 'execution': fused runs whole epochs as one program of static shapes, which "
            "variable-length sequences do not have; use default, eager or compiled"
        )


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one `--set key.path=value`; the value is read as a TOML value, else kept as a string."""
    if "=" not in text:
        raise InputError(f"--set '{text}': expected key.path=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise InputError(f"--set '{text}': empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def apply_overrides(spec: dict, overrides: list[str]) -> dict:
    """Apply `--set` overrides to a raw (unvalidated) spec; unknown keys are caught by validate()."""
    out = copy.deepcopy(spec)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(f"--set '{text}': '{part}' is not a table")
            node = child
        node[path[-1]] = value
    return out


def load_spec(path: str | Path | None, overrides: list[str] = ()) -> Spec:
    """Read a TOML spec file (or the built-in default when path is None), apply overrides, validate; the typed
    view of the result.

    Relative `data.path` values are resolved against the spec file's folder. A preset file (a spec plus a
    `[sweep]` table, benchmarks/presets) reads as its spec: the `[sweep]` table is set aside.
    """
    if path is None:
        raw = _merge(defaults(), _DEFAULT_OVERRIDES)
    else:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"spec file '{path}': not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"spec file '{path}': unreadable ({exc.__class__.__name__})") from None
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"spec file '{path}': invalid TOML ({exc})") from None
        raw.pop("sweep", None)
        data_path = raw.get("data", {}).get("path") if isinstance(raw.get("data"), dict) else None
        if isinstance(data_path, str) and data_path and not Path(data_path).is_absolute():
            raw["data"]["path"] = str((path.parent / data_path).resolve())
    return typed(validate(apply_overrides(raw, list(overrides))))


def to_json(spec: Spec) -> str:
    """Canonical JSON text of a resolved spec (sorted keys), as stored in records."""
    return json.dumps(spec.to_dict(), sort_keys=True)


class _Table:
    """Base of the typed spec tables: frozen dataclasses made from SCHEMA by `_table_class`."""

    def to_dict(self) -> dict:
        """The plain nested dict (the JSON form records store)."""
        return _thaw(self)


def _table_class(name: str, schema: dict) -> type:
    """A frozen dataclass with one field per key of `schema` (a sub-table becomes a nested class of its own)."""
    spec_fields = [
        (key, _table_class(f"{name}.{key}", sub) if isinstance(sub, dict) else sub.kind) for key, sub in schema.items()
    ]
    return make_dataclass(name.replace(".", "_").title().replace("_", ""), spec_fields, bases=(_Table,), frozen=True)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if is_dataclass(value):
        return {f.name: _thaw(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _build(cls: type, schema: dict, values: dict) -> _Table:
    return cls(
        **{
            key: _build(cls.__dataclass_fields__[key].type, sub, values[key])
            if isinstance(sub, dict)
            else _freeze(values[key])
            for key, sub in schema.items()
        }
    )


Spec = _table_class("spec", SCHEMA)
"""The typed, immutable view of a resolved spec: `spec.optimizer.lr`, `spec.model.layers` (lists are tuples,
free-form tables read-only mappings). `typed(validated dict)` makes one, `spec.to_dict()` gives the JSON form back,
`dataclasses.replace(spec, seed=1)` a variant."""


def typed(spec: dict) -> Spec:
    """The typed view (`Spec`) of a validated spec dict (every key present; see `validate`)."""
    return _build(Spec, SCHEMA, spec)
