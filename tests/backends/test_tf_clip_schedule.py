"""TensorFlow / Keras: gradient clipping and learning-rate schedules against the numpy oracle, step by step in float64
(backends.tf_backend.optim; common.clipping, common.schedules), in every execution mode, with accumulation and over
two MirroredStrategy replicas; then the idioms this backend owns, each alone (mode exact, `native.idioms = [id]`),
diverging at the step its formula predicts and not before.

The runs: iris, batch 16 (8 steps an epoch, the last ragged), 4 epochs. Expected steps are computed from the
oracle's gradients (which steps common.clipping scales) and common.schedules, never from the backend; a step's
recorded loss is pre-update, so an update that differs at step s shows at step s + 1.
"""

import dataclasses
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from backends.tf_backend import optim as tf_optim  # noqa: E402
from common import clipping, schedules  # noqa: E402
from tests.support import base_spec, prepared_adapter, run_in_process, worker_records  # noqa: E402

RTOL, ATOL = 1e-9, 1e-12  # common.tolerance.FLOAT64_EXACT
SGD = {"lr": 0.1, "momentum": 0.9}
ADAM = {"name": "adam", "lr": 0.01}
SCHEDULES = {
    "step": {"kind": "step", "step_size": 5, "gamma": 0.5},
    "cosine": {"kind": "cosine", "decay_steps": 20, "final_lr": 0.001},  # holds final_lr over the last 12 steps
    "warmup_cosine": {"kind": "warmup_cosine", "warmup_steps": 4, "decay_steps": 14, "final_lr": 0.001},
}
# the oracle's global gradient norm is 0.997 at step 1 and falls below 0.5 later: c = 0.7 (global) and 0.6 (per
# tensor; the largest tensor's norm is 0.89 at step 1) clip some steps and not others (checked below)
CLIPS = {"global": 0.7, "per_tensor": 0.6}


def _spec(**sections):
    return base_spec(**{"train": {"epochs": 4}, "batching": {"batch_size": 16}, **sections})


def _oracle(spec, monkeypatch=None):
    """The oracle's (losses, final params) and, per step, whether common.clipping scaled its gradient."""
    active = []
    if monkeypatch is not None:
        clip = clipping.clip

        def recording(grads, clip_norm, form):
            out = clip(grads, clip_norm, form)
            active.append(out[1])
            return out

        monkeypatch.setattr(clipping, "clip", recording)
    _, npz = run_in_process("numpy", spec)
    if monkeypatch is not None:
        monkeypatch.undo()
    return npz, active


def _gap(want, got) -> tuple[int | None, float]:
    """(first step whose loss differs beyond the tolerance or None, the largest relative gap of losses and final
    parameters)."""
    a, b = np.asarray(want["losses"]), np.asarray(got["losses"])
    bad = np.nonzero(np.abs(a - b) > ATOL + RTOL * np.abs(a))[0]
    worst = float(np.max(np.abs(a - b) / np.abs(a)))
    for key in (k for k in want if k.startswith("final/")):
        worst = max(worst, float(np.max(np.abs(want[key] - got[key]) / (np.abs(want[key]) + ATOL / RTOL))))
    return (int(bad[0]) + 1 if bad.size else None), worst


def _agrees(spec, oracle=None):
    want = oracle if oracle is not None else run_in_process("numpy", spec)[1]
    first, worst = _gap(want, run_in_process("tf", spec)[1])
    assert first is None and worst <= RTOL, (first, worst)


@pytest.mark.parametrize("form", sorted(CLIPS))
def test_clipping_matches_the_oracle_and_is_active_on_some_steps(form, monkeypatch):
    spec = _spec(optimizer={**SGD, "clip_norm": CLIPS[form], "clip": form}, regularization={"l2": 1e-3})
    oracle, active = _oracle(spec, monkeypatch)
    assert len(active) == 32 and any(active) and not all(active)
    _agrees(spec, oracle)
    adapter = prepared_adapter("tf", spec)[0].optimizer.optimizer
    key = "global_clipnorm" if form == "global" else "clipnorm"
    assert (
        getattr(adapter, key) == CLIPS[form]
        and (adapter.clipnorm if form == "global" else adapter.global_clipnorm) is None
    )


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_schedules_match_the_oracle(kind, optimizer):
    spec = _spec(optimizer=SGD if optimizer == "sgd" else ADAM, schedule=SCHEDULES[kind])
    constant = run_in_process("numpy", _spec(optimizer=SGD if optimizer == "sgd" else ADAM))[1]
    oracle = run_in_process("numpy", spec)[1]
    assert _gap(constant, oracle)[0] is not None  # the schedule changes the run
    _agrees(spec, oracle)


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_the_keras_schedule_is_common_schedules_lr_and_float32_hyper_is_not(kind):
    """The optimizer's schedule at t = common.schedules.lr(t) to 1e-15; with the idiom float32_hyper (Python floats)
    Keras takes lr through float32: off by ~1e-9 relative or more."""
    spec = _spec(optimizer=ADAM, schedule=SCHEDULES[kind])
    want = np.array([schedules.lr(spec.schedule, spec.optimizer.lr, t) for t in range(40)])
    keras.config.set_floatx("float64")
    got = np.array([float(tf_optim.learning_rate(spec)(t)) for t in range(40)])
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=1e-18)
    loose = dataclasses.replace(spec, native=dataclasses.replace(spec.native, idioms=("float32_hyper",)))
    lossy = np.array([float(tf_optim.learning_rate(loose)(t)) for t in range(40)])
    assert np.max(np.abs(lossy - want) / np.maximum(want, 1e-300)) > 1e-9


def test_nesterov_and_adamw_with_decoupled_decay_under_a_schedule():
    decay = {"weight_decay": 0.01, "decay": "decoupled"}
    _agrees(_spec(optimizer={**SGD, "nesterov": True}, schedule=SCHEDULES["step"], regularization=decay))
    _agrees(_spec(optimizer={**ADAM, "name": "adamw"}, schedule=SCHEDULES["warmup_cosine"], regularization=decay))


@pytest.mark.parametrize("execution", ["compiled", "fused"])
def test_clip_and_schedule_in_the_xla_modes(execution):
    """compiled: one XLA step; fused: one XLA program an epoch, ε̂_t from its table and lr(t) read from
    `iterations` inside the loop."""
    for optimizer, kind, form in ((SGD, "step", "global"), (ADAM, "warmup_cosine", "per_tensor")):
        spec = _spec(optimizer={**optimizer, "clip_norm": CLIPS[form], "clip": form}, schedule=SCHEDULES[kind])
        _agrees(dataclasses.replace(spec, execution=execution))


def test_accumulation_counts_optimizer_steps():
    """accumulate = 2 (two micro-batches of 8 an optimizer step, one apply_gradients): lr(t) counts optimizer
    steps, and the clip sees the step's summed gradient."""
    spec = _spec(
        optimizer={**SGD, "clip_norm": CLIPS["global"]},
        schedule=SCHEDULES["step"],
        batching={"batch_size": 16, "accumulate": 2},
    )
    _agrees(spec)


def test_replicas_clip_the_reduced_gradient(tmp_path):
    """Two MirroredStrategy replicas (a worker process reserves the devices): Keras would clip each replica's half
    before its all-reduce; optim.ReducedClip all-reduces first."""
    specs = {
        (form,): _spec(
            optimizer={**SGD, "clip_norm": CLIPS[form], "clip": form},
            schedule=SCHEDULES["cosine"],
            distributed={"replicas": 2},
        )
        for form in CLIPS
    }
    records = worker_records("tf", specs, tmp_path)
    for key, spec in specs.items():
        first, worst = _gap(run_in_process("numpy", spec)[1], records[key][1])
        assert first is None and worst <= RTOL, (key, first, worst)


def _with(spec, idiom):
    return dataclasses.replace(spec, native=dataclasses.replace(spec.native, idioms=(idiom,)))


def test_keras_clipnorm_per_variable_diverges_after_the_first_clipped_step(monkeypatch):
    """`clipnorm` for a global clip scales each variable by its own norm: the first update that differs is the
    first step the global rule clips (where it does not, no tensor's norm exceeds c either)."""
    spec = _spec(optimizer={**SGD, "clip_norm": 0.95})
    oracle, active = _oracle(spec, monkeypatch)
    first_clipped = active.index(True) + 1
    run = run_in_process("tf", _with(spec, "keras_clipnorm_per_variable"))
    assert _gap(oracle, run[1])[0] == first_clipped + 1
    assert prepared_adapter("tf", _with(spec, "keras_clipnorm_per_variable"))[0].optimizer.optimizer.clipnorm == 0.95


def test_keras_sgd_momentum_diverges_after_the_first_lr_change():
    """Keras's m = μ·m − lr_t·g equals torch's −lr_t·b while lr is constant; lr(t) first changes at t = step_size
    (common.schedules), the update of step step_size + 1, seen in the loss of step step_size + 2."""
    spec = _spec(optimizer=SGD, schedule=SCHEDULES["step"])
    s = spec.schedule
    first_change = next(t for t in range(1, 40) if schedules.lr(s, 0.1, t) != schedules.lr(s, 0.1, t - 1))
    assert first_change == 5
    oracle = run_in_process("numpy", spec)[1]
    native = _with(spec, "keras_sgd_momentum")
    assert type(prepared_adapter("tf", native)[0].optimizer.optimizer) is keras.optimizers.SGD
    assert type(prepared_adapter("tf", spec)[0].optimizer.optimizer) is tf_optim.TorchMomentumSGD
    assert _gap(oracle, run_in_process("tf", native)[1])[0] == first_change + 2


# Part of the same switchboard (common.idioms): the regularizer and optimizer idioms this backend reads, each alone,
# with the step a hand derivation predicts: each changes the first update, so step 2's loss (`bias_decay`: the
# torch_default init draws non-zero biases, which Keras's weight_decay then decays too).
PART_A = {
    # L2(wd) for a coupled wd instead of L2(wd/2): the decay gradient doubles (for l2 alone Keras's L2(l2) is exact)
    "l2_as_written": ({"regularization": {"weight_decay": 0.01, "decay": "coupled"}}, 2),
    "keras_l1_sum": ({"regularization": {"l1": 0.01}}, 2),  # L1(l1) instead of L1(l1/size)
    "keras_adam_eps": ({"optimizer": {**ADAM, "eps": 1e-4}}, 2),  # constant ε = 1e-7 in the ε-hat form
    "float32_hyper": ({"optimizer": ADAM}, 2),  # β1, β2 through float32
    "bias_decay": (
        {"optimizer": {**ADAM, "name": "adamw"}, "regularization": {"weight_decay": 0.1, "decay": "decoupled"}},
        2,
    ),
}


@pytest.mark.parametrize("idiom", sorted(PART_A))
def test_each_optimizer_idiom_alone_diverges_where_predicted(idiom):
    sections, step = PART_A[idiom]
    spec = _spec(train={"epochs": 1}, **sections)
    assert _gap(run_in_process("numpy", spec)[1], run_in_process("tf", _with(spec, idiom))[1])[0] == step
