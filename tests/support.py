"""Shared test helpers: train a spec in this process on one backend and compare with the oracle."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backends import FRAMEWORKS, REGISTRY
from backends.worker import load_adapter
from common import record
from common.batching import BatchPlan
from common.compare import compare
from common.datasets import load_dataset
from common.distributed import Layout, single_device
from common.driver import canonical_init, model_layers, train
from common.idioms import comparison, on
from common.spec import Spec, apply_overrides, defaults, typed, validate
from common.tolerance import tolerance_for

ROOT = Path(__file__).resolve().parent.parent


def installed(backend: str) -> bool:
    """Whether every module `backend`'s framework needs can be imported here."""
    return all(importlib.util.find_spec(m) is not None for m in REGISTRY[backend].imports)


needs_all_frameworks = pytest.mark.skipif(
    not all(map(installed, FRAMEWORKS)), reason="needs torch, tensorflow and jax (tox -e parity)"
)


def make_spec(**sections) -> Spec:
    """A validated spec (the typed view): the schema defaults updated with `sections`, e.g.
    make_spec(dtype="float64", batching={"batch_size": 7}). Top-level scalars and section dicts are both accepted."""
    overrides = []
    for key, value in sections.items():
        if isinstance(value, dict):
            overrides += [f"{key}.{k}={_toml(v)}" for k, v in value.items()]
        else:
            overrides.append(f"{key}={_toml(value)}")
    return typed(validate(apply_overrides(defaults(), overrides)))


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def write_spec(spec: Spec, path: Path) -> Path:
    """The spec's JSON form as a TOML spec file (top-level keys, then one table per section)."""
    body = spec.to_dict()
    lines = [f"{key} = {_toml(value)}" for key, value in body.items() if not isinstance(value, dict)]
    for key, value in body.items():
        if isinstance(value, dict):
            lines += ["", f"[{key}]", *(f"{k} = {_toml(v)}" for k, v in value.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def free_ports(n: int = 1) -> list[int]:
    """n local ports free now (each bound to port 0 and read, held together so that they differ, then closed)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_in_process(backend: str, spec: Spec) -> tuple[dict, dict]:
    """(record JSON, record NPZ) of one backend trained here, without files."""
    module = load_adapter(backend)
    data = load_dataset(spec)
    adapter = module.make_adapter(spec)
    body = train(adapter, spec, data)
    rec = record.build(backend, adapter.versions(), adapter.device(), spec, body)
    return rec, record.arrays(body, data)


def worker_records(backend: str, jobs: dict, folder: Path, env: dict | None = None) -> dict:
    """{key: (record JSON, record NPZ)} of every spec of `jobs` ({key: Spec}, keys tuples of strings), trained by
    one worker process of `backend` (`python -m backends.worker`), as `parity run` runs it: what a data-parallel
    spec needs, since host devices are reserved once per process before the framework starts. `env`: extra
    environment variables. The worker's stderr is the assertion message when it fails."""
    folder.mkdir(parents=True, exist_ok=True)
    outs = {key: folder / "-".join(key) for key in jobs}
    listing = [{"spec": spec.to_dict(), "out": str(outs[key].resolve())} for key, spec in jobs.items()]
    (folder / f"{backend}-jobs.json").write_text(json.dumps(listing), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "backends.worker", backend, str(folder / f"{backend}-jobs.json")],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return {key: record.read(out, backend) for key, out in outs.items()}


def run_in_worker(backend: str, spec: Spec, folder: Path) -> tuple[dict, dict]:
    """(record JSON, record NPZ) of one spec trained in its own worker process (`worker_records`)."""
    return worker_records(backend, {("run",): spec}, folder)[("run",)]


def prepared_adapter(backend: str, spec: Spec):
    """(adapter, dataset): `backend`'s adapter prepared for `spec` as the driver prepares it, nothing trained."""
    data = load_dataset(spec)
    adapter = load_adapter(backend).make_adapter(spec)
    adapter.prepare(
        spec,
        data,
        BatchPlan.from_spec(spec, data.train_x.shape[0], data.train_lengths),
        model_layers(spec, data),
        None if on(spec, "default_init") else canonical_init(spec, data),
    )
    return adapter, data


def compare_with_oracle(backend: str, spec: Spec) -> dict:
    """comparison.json body of `backend` against the numpy oracle, both trained here."""
    records = {"numpy": run_in_process("numpy", spec), backend: run_in_process(backend, spec)}
    return compare(records, "numpy", tolerance_for(spec.dtype, comparison(spec)))


def divergences(comparison: dict) -> list[str]:
    """Human-readable lines for every divergent metric, empty when equivalent."""
    return [
        f"{p['a']} vs {p['b']} {p['metric']}: step {p['first_divergent_step']}, max rel {p['max_rel_diff']}"
        for p in comparison["pairs"]
        if p["divergent"]
    ]


def worst_rel(comparison: dict) -> float:
    vals = [p["max_rel_diff"] for p in comparison["pairs"] if p["max_rel_diff"] is not None]
    return float(np.max(vals)) if vals else 0.0


def worst_tolerance_used(comparison: dict) -> float:
    """max |a − b| / (atol + rtol·s) over every compared value (1.0 = at the limit)."""
    vals = [p["tolerance_used"] for p in comparison["pairs"] if p.get("tolerance_used") is not None]
    return float(np.max(vals)) if vals else 0.0


# The layer_norm stack every backend compares with the oracle at every step, and its runs. lr 0.01 for SGD: at 0.05
# this stack is chaotic in float32 (a 1e-7 relative change grows ×10 every ~10 steps past step 60, to 1e-3 by step
# 108 in every framework alike, while float64 stays within 1e-9), so any correct float32 run would exceed rtol 1e-4.
LAYER_NORM_STACK = [
    {"kind": "dense", "units": 16, "activation": "relu"},
    {"kind": "layer_norm"},
    {"kind": "dropout"},
    {"kind": "dense", "units": 8, "activation": "tanh"},
    {"kind": "layer_norm"},
    {"kind": "dense"},
]
LAYER_NORM_RUNS = {
    "adam-l2": {"optimizer": {"name": "adam", "lr": 0.01}, "regularization": {"l2": 1e-3, "dropout": 0.3}},
    "sgd-momentum-wd-bias": {
        "optimizer": {"lr": 0.01, "momentum": 0.9},
        "regularization": {"weight_decay": 1e-3, "regularize_bias": True, "dropout": 0.3},
    },
}

_BASE = {"batching": {"batch_size": 7}, "train": {"epochs": 6}}
EXACT_MATRIX = {
    # id: sections; iris has 120 training rows, so batch 7 leaves a last batch of 1 (>= 102 steps in 6 epochs)
    "keep-shuffle-sgd-momentum-coupled-drop0.5": {
        "batching": {"last_batch": "keep"},
        "optimizer": {"lr": 0.05, "momentum": 0.9},
        "regularization": {"weight_decay": 1e-3, "dropout": 0.5},
    },
    "drop-ordered-nesterov-l2-bias-drop0.3": {
        "batching": {"last_batch": "drop", "shuffle": False},
        "optimizer": {"lr": 0.05, "momentum": 0.9, "nesterov": True},
        "regularization": {"l2": 1e-3, "regularize_bias": True, "dropout": 0.3},
    },
    "pad-shuffle-adam-l1mean-tanh-glorot": {
        "batching": {"last_batch": "pad"},
        "optimizer": {"name": "adam", "lr": 0.01, "momentum": 0.0},
        "model": {"activation": "tanh", "init": "glorot_uniform"},
        "regularization": {"l1": 1e-3},
    },
    "keep-ordered-adamw-bias-drop0.3-lecun": {
        "batching": {"last_batch": "keep", "shuffle": False},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "model": {"init": "lecun_normal"},
        "regularization": {"weight_decay": 1e-2, "decay": "decoupled", "regularize_bias": True, "dropout": 0.3},
    },
    "pad-shuffle-sgd-decoupled-l1sum-drop0.5": {
        "batching": {"last_batch": "pad"},
        "optimizer": {"lr": 0.05, "momentum": 0.9},
        "regularization": {
            "weight_decay": 1e-2,
            "decay": "decoupled",
            "l1": 1e-4,
            "l1_reduction": "sum",
            "dropout": 0.5,
        },
    },
    "drop-shuffle-adam-coupled-l2-l1-bias-deep": {
        "batching": {"last_batch": "drop"},
        "optimizer": {"name": "adam", "lr": 0.01, "momentum": 0.0},
        "model": {"hidden": [16, 8]},
        "regularization": {"weight_decay": 1e-3, "l2": 1e-3, "l1": 1e-3, "regularize_bias": True, "dropout": 0.5},
    },
    "keep-shuffle-sgd-l1-on-zero-biases": {
        "batching": {"last_batch": "keep"},
        "optimizer": {"lr": 0.05},
        "model": {"init": "glorot_uniform"},
        "regularization": {"l1": 1e-2, "regularize_bias": True},
    },
    "pad-ordered-adamw-l2-banded-eval": {
        "batching": {"last_batch": "pad", "shuffle": False, "eval_batch_size": 8},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "metrics": {"aggregation": "per_batch_mean"},
        "regularization": {"weight_decay": 1e-2, "decay": "decoupled", "l2": 1e-3, "dropout": 0.3},
    },
    # from the per-backend suites; "drop-sgd-momentum-decoupled-plus-l2" caught torch reading decayed weights
    "keep-shuffle-momentum-l2-drop0.3": {
        "batching": {"last_batch": "keep", "shuffle": True},
        "optimizer": {"momentum": 0.9},
        "regularization": {"l2": 0.01, "dropout": 0.3},
    },
    "drop-noshuffle-nesterov-wd-l1mean-bias-glorot": {
        "batching": {"last_batch": "drop", "shuffle": False},
        "optimizer": {"momentum": 0.9, "nesterov": True},
        "regularization": {"weight_decay": 0.01, "l1": 0.01, "regularize_bias": True, "dropout": 0.5},
        "model": {"activation": "tanh", "init": "glorot_uniform"},
    },
    "pad-shuffle-adam-l1mean": {
        "batching": {"last_batch": "pad"},
        "optimizer": {"name": "adam", "lr": 0.005},
        "regularization": {"l1": 0.01, "dropout": 0.3},
    },
    "keep-adamw-decoupled-bias": {
        "optimizer": {"name": "adamw", "lr": 0.005},
        "regularization": {"weight_decay": 0.05, "decay": "decoupled", "regularize_bias": True, "dropout": 0.5},
    },
    "pad-noshuffle-sgd-l1sum-bias": {
        "batching": {"last_batch": "pad", "shuffle": False},
        "optimizer": {"lr": 0.05},
        "regularization": {"l1": 0.001, "l1_reduction": "sum", "regularize_bias": True},
    },
    "drop-sgd-momentum-decoupled-plus-l2": {
        "batching": {"last_batch": "drop"},
        "optimizer": {"momentum": 0.9},
        "regularization": {"weight_decay": 0.01, "decay": "decoupled", "l2": 0.005, "dropout": 0.3},
    },
    "keep-adam-coupled-wd-l2-two-hidden": {
        "optimizer": {"name": "adam", "lr": 0.005},
        "model": {"hidden": [16, 8], "init": "glorot_uniform"},
        "regularization": {"weight_decay": 0.01, "l2": 0.002, "dropout": 0.5},
    },
    "pad-adamw-l2-l1sum-lecun": {
        "batching": {"last_batch": "pad"},
        "optimizer": {"name": "adamw", "lr": 0.005},
        "model": {"init": "lecun_normal", "activation": "tanh"},
        "regularization": {
            "weight_decay": 0.02,
            "decay": "decoupled",
            "l2": 0.001,
            "l1": 0.0005,
            "l1_reduction": "sum",
            "dropout": 0.3,
        },
    },
    # layer stacks: layer_norm between dense layers (its scale/offset are bias-like: regularized only with
    # regularize_bias), the canonical ε passed explicitly
    "keep-shuffle-adam-l2-layernorm-drop0.3": {
        "optimizer": {"name": "adam", "lr": 0.01, "momentum": 0.0},
        "model": {"layers": LAYER_NORM_STACK},
        "regularization": {"l2": 1e-3, "dropout": 0.3},
    },
    # lr 0.01: see LAYER_NORM_RUNS
    "pad-sgd-momentum-wd-bias-layernorm-eps1e-3": {
        "batching": {"last_batch": "pad"},
        "optimizer": {"lr": 0.01, "momentum": 0.9},
        "model": {
            "layers": [
                {"kind": "dense", "units": 12},
                {"kind": "layer_norm", "eps": 1e-3},
                {"kind": "relu"},
                {"kind": "dropout", "rate": 0.5},
                {"kind": "dense"},
            ]
        },
        "regularization": {"weight_decay": 1e-3, "regularize_bias": True},
    },
}


def base_spec(**sections) -> Spec:
    """A validated float64 spec on the matrix base (iris, batch 7, 6 epochs) updated with `sections`."""
    merged = {"dtype": "float64", **{k: dict(v) for k, v in _BASE.items()}}
    for key, value in sections.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return make_spec(**merged)


def matrix_spec(case: str, dtype: str = "float64") -> Spec:
    """One covering-matrix experiment as a validated spec."""
    sections = {k: dict(v) for k, v in _BASE.items()}
    for key, value in EXACT_MATRIX[case].items():
        sections.setdefault(key, {}).update(value)
    return make_spec(dtype=dtype, name=case, **sections)


SEQ_BASE = {
    # 90 synthetic sequences of 2..10 tokens over a 16-token vocabulary: 72 training rows, so batch 7 leaves a
    # ragged last batch of 2 (11 steps per epoch)
    "data": {"name": "sequences", "params": {"n": 90, "min_len": 2, "max_len": 10, "vocab": 16, "classes": 3}},
    "model": {"kind": "seq_pool", "embed_dim": 4, "hidden": [6]},
    "batching": {"batch_size": 7},
    "optimizer": {"lr": 0.1},
    "train": {"epochs": 2},
}


def seq_spec(dtype: str = "float64", **sections) -> Spec:
    """A validated sequence spec on SEQ_BASE (seq_pool, post-padding with masks) updated with `sections`,
    e.g. seq_spec(model={"kind": "rnn"}, sequence={"pad": "pre", "buckets": [4, 10]})."""
    merged = {k: dict(v) for k, v in SEQ_BASE.items()}
    for key, value in sections.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return make_spec(dtype=dtype, **merged)


# The CNN every backend compares with the oracle at every step (docs/design.md, "Images and BatchNorm"): conv at
# stride 1 and 2 with "same" padding (pads (1, 1) then (0, 1) on 8×8), both running-variance estimators, a
# non-default momentum, max_pool, flatten (NHWC order), dropout on images and on features. Digits images have 1438
# training rows: batch 7 leaves a ragged last batch of 3. Each batch_norm comes before its relu and after a layer
# without a bias: a bias feeding a batch_norm has a zero gradient, so what the frameworks compute for it is
# rounding noise, which float32 Adam turns into lr-sized steps (0.998 relative apart after one epoch); and a
# batch_norm after a relu over 7 rows is chaotic (a 1e-16 change to lr grows to 3e-7 by step 151 in the oracle).
CNN_STACK = [
    {"kind": "conv2d", "filters": 4, "kernel": 3, "padding": "same", "bias": False},
    {"kind": "batch_norm", "momentum": 0.8},
    {"kind": "relu"},
    {"kind": "conv2d", "filters": 6, "kernel": 3, "stride": 2, "padding": "same", "activation": "relu"},
    {"kind": "dropout", "rate": 0.2},
    {"kind": "max_pool", "size": 2},
    {"kind": "flatten"},
    {"kind": "dense", "units": 16, "bias": False},
    {"kind": "batch_norm", "running_var": "unbiased"},
    {"kind": "relu"},
    {"kind": "dropout", "rate": 0.3},
    {"kind": "dense"},
]
CNN_RUNS = {
    # lr 0.01: at 0.02 a float32 jax run parts from the oracle at step 172 by a jump to 3e-2 (float64 agrees to 2e-14,
    # torch and tf float32 to 3e-6): rounding tipping a discrete event, not a semantic difference
    "sgd-momentum-wd": {"optimizer": {"lr": 0.01, "momentum": 0.9}, "regularization": {"weight_decay": 1e-3}},
    "adam-l2-bias": {
        "optimizer": {"name": "adam", "lr": 0.003},
        "regularization": {"l2": 1e-3, "regularize_bias": True},
        # conv1 without its bias: relu, dropout, max_pool, flatten and the bias-free dense carry a change of it alike
        # to every row of bn1, which cancels it (docs/design.md, "A bias before a batch_norm"); under Adam its
        # float32 rounding noise became steps that put tf and torch 1.28e-4 apart (AVX2 CPU); without it, 0.09 of rtol
        "model": {"layers": [*CNN_STACK[:3], {**CNN_STACK[3], "bias": False}, *CNN_STACK[4:]]},
    },
}


def cnn_spec(run: str = "sgd-momentum-wd", stack: list | None = None, **sections) -> Spec:
    """The CNN spec on digits images, float64, batch 7, one epoch, with one of CNN_RUNS and `sections` on top;
    `stack` replaces the run's layers."""
    base = {
        "dtype": "float64",
        "data": {"name": "digits", "images": True},
        "model": {"layers": CNN_STACK},
        "batching": {"batch_size": 7},
        "train": {"epochs": 1},
    }
    for key, value in [*CNN_RUNS[run].items(), *sections.items()]:
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    if stack:
        base["model"] = {**base["model"], "layers": stack}
    return make_spec(**base)


# Split steps (common.distributed), on iris (120 training rows), float64 unless asked, exact mode. Each ends an
# epoch on a ragged step: "r2-ragged" (R = 2, global batch 16) leaves 8 rows to replica 0 and none to replica 1;
# "k4" (4 micro-batches of 4) fills micro-batches 0 and 1 and leaves 2 and 3 empty; "r2-k2" (per-replica batch 7,
# Adam, L1 and L2 penalties on the loss) gives the last step 7 + 1 rows in micro-batch 0 and none in micro-batch 1.
DP_CASES = {
    "r2-ragged": {"distributed": {"replicas": 2}, "batching": {"batch_size": 16}},
    "k4": {"batching": {"batch_size": 4, "accumulate": 4}},
    "r2-k2": {
        "distributed": {"replicas": 2, "batch": "per_replica"},
        "batching": {"batch_size": 7, "accumulate": 2},
        "optimizer": {"name": "adam", "lr": 0.01, "momentum": 0.0},
        "regularization": {"dropout": 0.3, "l1": 0.001, "l2": 0.001},
    },
}
_DP_BASE = {
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "regularization": {"dropout": 0.3, "weight_decay": 0.001},
    "train": {"epochs": 2},
}


def dp_spec(case: str, dtype: str = "float64", reduction: str = "global_mean") -> Spec:
    """The split-step spec of DP_CASES[case] (its twin: common.distributed.single_device)."""
    sections = {key: dict(value) for key, value in _DP_BASE.items()}
    for key, value in DP_CASES[case].items():
        sections[key] = {**sections.get(key, {}), **value}
    sections.setdefault("batching", {})["reduction"] = reduction
    return make_spec(dtype=dtype, **sections)


DP_REDUCTIONS = ("global_mean", "mean_of_means")
DP_FLOAT32 = ("r2-ragged", "k4")


_BN_DENSE = [
    {"kind": "dense", "units": 8, "bias": False},
    {"kind": "batch_norm"},
    {"kind": "relu"},
    {"kind": "dense"},
]
BN_CASES = {  # batch_norm under split steps: every step full (common.distributed.check_batch_norm)
    "bn-r2": {"distributed": {"replicas": 2}, "batching": {"batch_size": 16, "last_batch": "drop"}},
    "bn-r2-sync": {
        "distributed": {"replicas": 2},
        "batching": {"batch_size": 16, "last_batch": "drop"},
        "model": {"layers": [{**t, "sync": True} if t["kind"] == "batch_norm" else t for t in _BN_DENSE]},
    },
    "bn-r2-k2": {  # one synchronised and one per-replica layer, the unbiased running variance, Adam
        "distributed": {"replicas": 2, "batch": "per_replica"},
        "batching": {"batch_size": 6, "accumulate": 2, "last_batch": "drop"},
        "optimizer": {"name": "adam", "lr": 0.01, "momentum": 0.0},
        "model": {
            "layers": [
                {"kind": "dense", "units": 8, "bias": False},
                {"kind": "batch_norm", "sync": True, "momentum": 0.8, "running_var": "unbiased"},
                {"kind": "tanh"},
                {"kind": "dense", "units": 6, "bias": False},
                {"kind": "batch_norm", "momentum": 0.7},
                {"kind": "relu"},
                {"kind": "dense"},
            ]
        },
    },
    "bn-img-r2": {
        "data": {"name": "digits", "images": True, "test_fraction": 0.95},
        "distributed": {"replicas": 2},
        "batching": {"batch_size": 16, "last_batch": "drop"},
        "model": {
            "layers": [
                {"kind": "conv2d", "filters": 3, "kernel": 3, "bias": False},
                {"kind": "batch_norm", "running_var": "unbiased"},
                {"kind": "relu"},
                {"kind": "flatten"},
                {"kind": "dense"},
            ]
        },
    },
}
BN_SYNC = "bn-r2-sync"  # K = 1, every layer synchronised: the single-device twin's statistics


def bn_spec(case: str, dtype: str = "float64") -> Spec:
    """The batch_norm split-step spec of BN_CASES[case] (the DP base: SGD with momentum, dropout, weight decay)."""
    sections = {key: dict(value) for key, value in _DP_BASE.items()}
    sections["model"] = {"layers": _BN_DENSE}
    for key, value in BN_CASES[case].items():
        sections[key] = {**sections.get(key, {}), **value}
    return make_spec(dtype=dtype, **sections)


def dp_jobs() -> dict[tuple[str, ...], Spec]:
    """The runs tests/dp_acceptance.py compares, by key: ("split", case, dtype, reduction) and its ("twin", case,
    dtype) (common.distributed.single_device), float64 for every DP case and reduction, float32 for DP_FLOAT32;
    ("native", case), each case in native mode; ("bn", case, "float64") for every BN case, BN_SYNC's float32 run
    and ("bn-twin", BN_SYNC, dtype) twins, and ("bn-native", case)."""
    jobs = {("split", c, "float64", r): dp_spec(c, "float64", r) for c in DP_CASES for r in DP_REDUCTIONS}
    jobs |= {("twin", c, "float64"): single_device(dp_spec(c)) for c in DP_CASES}
    jobs |= {("split", c, "float32", "global_mean"): dp_spec(c, "float32") for c in DP_FLOAT32}
    jobs |= {("twin", c, "float32"): single_device(dp_spec(c, "float32")) for c in DP_FLOAT32}
    jobs |= {("native", c): dataclasses.replace(dp_spec(c), mode="native") for c in DP_CASES}
    jobs |= {("bn", c, "float64"): bn_spec(c) for c in BN_CASES}
    jobs |= {("bn-twin", BN_SYNC, d): single_device(bn_spec(BN_SYNC, d)) for d in ("float64", "float32")}
    jobs |= {("bn", BN_SYNC, "float32"): bn_spec(BN_SYNC, "float32")}
    jobs |= {("bn-native", c): dataclasses.replace(bn_spec(c), mode="native") for c in BN_CASES}
    return jobs


def max_rel_gap(a: tuple[dict, dict], b: tuple[dict, dict]) -> tuple[float, float]:
    """(worst per-step loss gap |a − b| / |b|, worst final-parameter gap max|a − b| / max|b| per tensor) of two
    (record JSON, NPZ) pairs with the same steps and parameters."""
    la = np.array([s["loss"] for s in a[0]["steps"]])
    lb = np.array([s["loss"] for s in b[0]["steps"]])
    assert la.shape == lb.shape, (la.shape, lb.shape)
    finals = [k for k in b[1] if k.startswith("final/")]
    assert finals and set(finals) <= set(a[1])
    params = max(float(np.max(np.abs(a[1][k] - b[1][k])) / max(float(np.max(np.abs(b[1][k]))), 1e-300)) for k in finals)
    return float(np.max(np.abs(la - lb) / np.abs(lb))), params


def first_ragged_step(case: str, steps: list[dict]) -> int:
    """The 1-based number of the first recorded step with fewer real rows than DP_CASES[case]'s S."""
    rows = Layout.from_spec(dp_spec(case)).step_rows
    return next(s["step"] for s in steps if s["batch_size"] < rows)


def assert_reductions_part_after_the_first_ragged_step(case: str, means: list[dict], global_: list[dict]) -> None:
    """mean_of_means and global_mean records' steps: equal losses up to and including the first ragged step (every
    earlier update was the same), apart right after it (the ragged step's update differs)."""
    first = first_ragged_step(case, global_)
    if case in DP_FLOAT32:
        assert first == 8  # 120 rows, 16 per step
    gaps = [abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(means, global_, strict=True)]
    assert max(gaps[:first]) <= 1e-12, gaps[:first]
    assert gaps[first] > 1e-6, gaps[first]


def assert_the_ragged_step_has_an_empty_part(case: str, steps: list[dict]) -> None:
    """Every step records R replicas' shards; the first ragged step holds an empty part, every other part c rows,
    and its shards in row order (micro-batch k, replica r: rows [kG + rc, kG + (r+1)c)) are its batch ids."""
    layout = Layout.from_spec(dp_spec(case))
    assert all(len(s["shards"]) == layout.replicas for s in steps)
    step = steps[first_ragged_step(case, steps) - 1]
    parts = [ids for replica in step["shards"] for ids in replica]
    assert [] in parts and all(len(ids) in (0, layout.shard) for ids in parts), parts
    assert [i for k in range(layout.accumulate) for replica in step["shards"] for i in replica[k]] == step["batch_ids"]
