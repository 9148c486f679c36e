"""Gradient clipping and learning-rate schedules in exact mode across the four backends (docs/design.md, "Gradient
clipping", "Learning-rate schedules"): every clip form and schedule kind, with SGD + momentum and with Adam, equal
to the numpy oracle at every step in float64 (≤ 1e-9), each run with the clip active on some steps and not on
others (counted on the oracle's own clip calls).

Each framework trains all cases in one worker process (one import per backend). Needs torch, tensorflow and jax
together (tox -e parity).
"""

from unittest import mock

import numpy as np
import pytest

import backends.numpy_backend.optim as oracle_optim
from backends import FRAMEWORKS
from common import clipping
from common.compare import compare
from common.tolerance import tolerance_for
from tests.support import divergences, make_spec, needs_all_frameworks, run_in_process, worker_records, worst_rel

pytestmark = [pytest.mark.cross, needs_all_frameworks]

_BASE = {"dtype": "float64", "batching": {"batch_size": 16}, "train": {"epochs": 4}}  # 8 steps an epoch, 32 in all
_WARMUP = {"kind": "warmup_cosine", "warmup_steps": 4, "decay_steps": 20, "final_lr": 0.001}  # ends at step 24
_COSINE = {"kind": "cosine", "decay_steps": 20, "final_lr": 0.001}
_STEP = {"kind": "step", "step_size": 8, "gamma": 0.5}
_SGD = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
_ADAM = {"name": "adam", "lr": 0.01}
# clip norms from the oracle's gradient norms on these runs: global 1.0 … 0.13 (SGD), 1.0 … 0.32 (Adam); the
# largest tensor's 0.89 … 0.09 and 0.89 … 0.28
CASES = {
    "sgd-step-global": {"optimizer": {**_SGD, "clip_norm": 0.5}, "schedule": _STEP},
    "sgd-cosine-per-tensor-nesterov": {
        "optimizer": {**_SGD, "nesterov": True, "clip_norm": 0.4, "clip": "per_tensor"},
        "schedule": _COSINE,
    },
    "sgd-warmup-global-decays": {
        "optimizer": {**_SGD, "clip_norm": 0.5},
        "schedule": _WARMUP,
        "regularization": {"l2": 0.001, "weight_decay": 0.01, "decay": "decoupled", "l1": 0.001},
    },
    "sgd-constant-global-coupled-k2": {
        "optimizer": {**_SGD, "clip_norm": 0.5},
        "regularization": {"weight_decay": 0.01},
        "batching": {"batch_size": 8, "accumulate": 2},
    },
    "sgd-warmup-per-tensor-r2": {
        "optimizer": {**_SGD, "clip_norm": 0.4, "clip": "per_tensor"},
        "schedule": _WARMUP,
        "distributed": {"replicas": 2},
    },
    "adam-step-per-tensor": {"optimizer": {**_ADAM, "clip_norm": 0.5, "clip": "per_tensor"}, "schedule": _STEP},
    "adam-cosine-global-l2": {
        "optimizer": {**_ADAM, "clip_norm": 0.6},
        "schedule": _COSINE,
        "regularization": {"l2": 0.01},
    },
    "adamw-warmup-global": {
        "optimizer": {"name": "adamw", "lr": 0.01, "clip_norm": 0.6},
        "schedule": _WARMUP,
        "regularization": {"weight_decay": 0.05, "decay": "decoupled"},
    },
}


def _spec(case: str):
    sections = {**_BASE, **CASES[case]}
    sections["batching"] = {**_BASE["batching"], **CASES[case].get("batching", {})}
    return make_spec(**sections)


def _oracle(case: str) -> tuple[tuple[dict, dict], list[bool]]:
    """The oracle's record and, per optimizer step, whether its clip scaled the gradient."""
    active, real = [], clipping.clip

    def spy(grads, clip_norm, form):
        out = real(grads, clip_norm, form)
        active.append(out[1])
        return out

    with mock.patch.object(oracle_optim.clipping, "clip", spy):
        run = run_in_process("numpy", _spec(case))
    return run, active


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip-schedule")
    jobs = {(case,): _spec(case) for case in CASES}
    by_backend = {backend: worker_records(backend, jobs, folder / backend) for backend in FRAMEWORKS}
    return {case: {backend: by_backend[backend][(case,)] for backend in FRAMEWORKS} for case in CASES}


@pytest.mark.parametrize("case", CASES)
def test_every_backend_equals_the_oracle_at_every_step(case, runs):
    oracle, active = _oracle(case)
    assert any(active) and not all(active), active  # the clip acts on some steps only
    comparison = compare({"numpy": oracle, **runs[case]}, "numpy", tolerance_for("float64", "exact"))
    assert comparison["equivalent"], divergences(comparison)
    assert worst_rel(comparison) <= 1e-9
    steps = {len(rec["steps"]) for rec, _ in runs[case].values()}
    assert steps == {len(oracle[0]["steps"])}


def test_the_schedule_moves_the_losses():
    """A control: the scheduled, clipped oracle run differs from the same run at constant lr without clipping, so
    the cases above compare schedules that matter."""
    scheduled, _ = _oracle("sgd-warmup-global-decays")
    plain = run_in_process(
        "numpy", make_spec(**_BASE, optimizer=_SGD, regularization=CASES["sgd-warmup-global-decays"]["regularization"])
    )
    a = np.array([s["loss"] for s in scheduled[0]["steps"]])
    b = np.array([s["loss"] for s in plain[0]["steps"]])
    assert a[0] == b[0] and np.max(np.abs(a - b) / np.abs(b)) > 1e-2
