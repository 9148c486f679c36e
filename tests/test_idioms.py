"""The idiom registry, the clip rule and the schedules of common/ (docs/design.md, "Idioms", "Gradient clipping",
"Learning-rate schedules"), framework-free. Expected values are worked out by hand or are the measurements of
the design notes (torch, Keras and optax outputs to 17 digits)."""

import dataclasses
import math

import numpy as np
import pytest

from common import clipping, schedules
from common.frameworks import REGISTRY
from common.idioms import DETERMINISTIC, IDIOMS, NATIVE_SET, RANDOM, active, on, plan_order, statistical
from common.traps import CATALOGUE
from tests.support import make_spec


def test_every_idiom_names_known_frameworks_and_an_existing_trap():
    traps = {trap.id for trap in CATALOGUE}
    for idiom in IDIOMS.values():
        assert set(idiom.frameworks) <= set(REGISTRY), idiom.id
        assert idiom.kind in (DETERMINISTIC, RANDOM), idiom.id
        assert idiom.trap in traps, (idiom.id, idiom.trap)
        assert idiom.fix and not idiom.fix.endswith("."), idiom.id
    assert set(IDIOMS) - {"scheduler_step_first", "per_epoch_schedule"} == NATIVE_SET


def test_mode_and_the_idioms_list_decide_what_is_on():
    assert active(make_spec()) == frozenset()
    assert active(make_spec(mode="native")) == NATIVE_SET
    assert active(make_spec(native={"idioms": "all"})) == NATIVE_SET
    chosen = make_spec(native={"idioms": ["l2_as_written", "scheduler_step_first"]})
    assert active(chosen) == {"l2_as_written", "scheduler_step_first"}
    assert on(chosen, "l2_as_written") and not on(chosen, "order")
    assert not statistical(chosen) and plan_order(chosen)
    order = make_spec(native={"idioms": ["order"]})
    assert statistical(order) and not plan_order(order)
    assert not plan_order(make_spec(native={"idioms": ["split_step"]}))
    with pytest.raises(KeyError):
        on(chosen, "no_such_idiom")


def test_affects_names_the_frameworks_the_spec_changes():
    l2, wd = make_spec(regularization={"l2": 0.1}), make_spec(regularization={"weight_decay": 0.1})
    assert IDIOMS["l2_as_written"].affects(l2) == ("torch", "jax")  # weight_decay = l2: half the gradient
    assert IDIOMS["l2_as_written"].affects(wd) == ("tf",)  # L2(wd): twice the gradient
    assert IDIOMS["bias_decay"].affects(l2) == ("torch",)
    decoupled = make_spec(regularization={"weight_decay": 0.1, "decay": "decoupled"}, optimizer={"name": "adamw"})
    assert IDIOMS["bias_decay"].affects(decoupled) == ("torch", "tf", "jax")
    assert IDIOMS["keras_adam_eps"].affects(make_spec()) == ()


def test_applies_reads_the_spec():
    plain = make_spec()
    assert not IDIOMS["l2_as_written"].applies(plain)
    assert IDIOMS["l2_as_written"].applies(make_spec(regularization={"l2": 0.1}))
    assert not IDIOMS["clip_epsilon"].applies(plain)
    clipped = make_spec(optimizer={"clip_norm": 1.0, "clip": "per_tensor"})
    assert IDIOMS["clip_epsilon"].applies(clipped) and not IDIOMS["keras_clipnorm_per_variable"].applies(clipped)
    cosine = make_spec(schedule={"kind": "cosine", "decay_steps": 5})
    assert IDIOMS["torch_cosine_annealing"].applies(cosine) and not IDIOMS["optax_warmup_decay_steps"].applies(cosine)
    assert IDIOMS["keras_sgd_momentum"].applies(
        dataclasses.replace(cosine, optimizer=make_spec(optimizer={"momentum": 0.9}).optimizer)
    )


# base 0.1, W = 2, D = 5, final 0.01, step_size 2, γ = 0.5: the design notes' table (used lr per t = 0 … 8)
STEP = make_spec(optimizer={"lr": 0.1}, schedule={"kind": "step", "step_size": 2, "gamma": 0.5}).schedule
COSINE = make_spec(optimizer={"lr": 0.1}, schedule={"kind": "cosine", "decay_steps": 5, "final_lr": 0.01}).schedule
WARMUP = make_spec(
    optimizer={"lr": 0.1}, schedule={"kind": "warmup_cosine", "warmup_steps": 2, "decay_steps": 5, "final_lr": 0.01}
).schedule
COS = [0.1, 0.0914058, 0.0689058, 0.0410942, 0.0185942, 0.01]  # f + (lr0 − f)·½(1 + cos(πt/5)), t = 0 … 5


def test_canonical_schedules():
    assert [schedules.lr(STEP, 0.1, t) for t in range(9)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125, 0.00625], rel=1e-15
    )
    assert [schedules.lr(COSINE, 0.1, t) for t in range(9)] == pytest.approx(COS + [0.01] * 3, abs=5e-8)
    assert [schedules.lr(WARMUP, 0.1, t) for t in range(9)] == pytest.approx([0.0, 0.05, *COS, 0.01], abs=5e-8)
    assert schedules.lr(COSINE, 0.1, 5) == 0.01 and schedules.lr(WARMUP, 0.1, 0) == 0.0


def test_the_ports_schedules():
    # torch CosineAnnealingLR past T_max climbs back (measured 0.0185942, 0.0410942, 0.0689058 at t = 6, 7, 8)
    assert [schedules.cosine_annealing(COSINE, 0.1, t) for t in (6, 7, 8)] == pytest.approx(
        [0.0185942, 0.0410942, 0.0689058], abs=5e-8
    )
    assert schedules.cosine_annealing(COSINE, 0.1, 10) == pytest.approx(0.1)
    # optax warmup_cosine_decay_schedule(0, 0.1, 2, decay_steps = 5, 0.01): the cosine over 3 steps
    assert [schedules.optax_warmup_cosine(WARMUP, 0.1, t) for t in range(7)] == pytest.approx(
        [0.0, 0.05, 0.1, 0.0775, 0.0325, 0.01, 0.01], rel=1e-12
    )
    assert schedules.used(STEP, 0.1, 1, 0, frozenset({"scheduler_step_first"})) == 0.05  # lr(2)
    assert schedules.used(STEP, 0.1, 5, 2, frozenset({"per_epoch_schedule"})) == 0.05  # lr(epoch 2)
    assert schedules.used(STEP, 0.1, 5, 2) == 0.025


A = np.array([0.1, 0.2, 0.3])
B = np.array([0.4, 0.5])


def test_global_clip_matches_keras_and_optax_to_the_last_digit():
    # the design notes' case B: n = 0.74161984870956632, c = 0.5; Keras global_clipnorm and optax agree bitwise
    clipped, active_ = clipping.clip({"a": A, "b": B}, 0.5, "global")
    assert active_
    np.testing.assert_allclose(
        clipped["a"], [0.067419986246324212, 0.13483997249264842, 0.2022599587389726], rtol=2e-16
    )
    np.testing.assert_allclose(clipped["b"], [0.26967994498529685, 0.33709993123162102], rtol=2e-16)


def test_per_tensor_clip_scales_only_the_tensors_above_c():
    clipped, active_ = clipping.clip({"a": A, "b": B}, 0.5, "per_tensor")
    assert active_ and clipped["a"] is not A
    np.testing.assert_array_equal(clipped["a"], A)  # ‖a‖ = 0.374 < 0.5
    np.testing.assert_allclose(clipped["b"], [0.31234752377721214, 0.39043440472151514], rtol=2e-16)  # Keras clipnorm


def test_boundary_zero_and_off():
    thirteen = {"a": np.array([3.0, 4.0]), "b": np.array([12.0])}  # n = 13
    clipped, active_ = clipping.clip(thirteen, 13.0, "global")
    assert not active_ and clipped["a"].tolist() == [3.0, 4.0]
    assert clipping.torch_scale(13.0, 13.0) == pytest.approx(13.0 / (13.0 + 1e-6), rel=1e-15)  # torch clips at n = c
    zero, active_ = clipping.clip({"a": np.zeros(3)}, 1.0, "global")
    assert not active_ and zero["a"].tolist() == [0.0, 0.0, 0.0]
    assert clipping.clip({"a": A}, 0.0, "global") == ({"a": A}, False)
    assert clipping.scale(2.0, 1.0) == 0.5 and math.isclose(clipping.torch_scale(2.0, 1.0), 1.0 / (2.0 + 1e-6))
