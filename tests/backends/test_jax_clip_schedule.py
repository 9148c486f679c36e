"""JAX backend, gradient clipping and learning-rate schedules (issue 13): the optax chain against the numpy oracle at
every step (≤ 1e-9, float64, iris, batch 16): each clip form with clipping active on some steps only, each schedule
kind with SGD + momentum / nesterov / decoupled decay and with Adam / AdamW, accumulation (K = 2: the clip and the
schedule count per optimizer step), every execution mode; then the idioms clip_before_decay,
optax_warmup_decay_steps and float32_hyper alone, each diverging at the step common.clipping / common.schedules
predict and not before."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

from backends.numpy_backend import optim as oracle_optim
from common import clipping, schedules
from common.idioms import IDIOMS
from tests.support import make_spec, run_in_process

RTOL, ATOL = 1e-9, 1e-12  # exact: every step's loss and the final parameters
SEEN = 1e-13  # a divergence: far above exact runs' rounding (~1e-16 here), far below what an idiom changes

# iris: 120 training rows, batch 16: 8 steps per epoch (the last of 8 rows), 32 steps in 4 epochs. At lr 0.6 the
# oracle's regularized gradient norm stays ≤ 1.0 (largest tensor ≤ 0.9) for steps 1-8 and exceeds 2 at step 9: the
# clips below are first active at step 9 and inactive on most later steps.
CLIPPED = {
    "optimizer": {"lr": 0.6, "momentum": 0.9},
    "regularization": {"l2": 1e-2},
}
CLIP_NORMS = {"global": 1.5, "per_tensor": 1.0}


def spec_for(*layers: dict, **sections):
    """The iris spec above updated with each of `layers` (dicts of sections), then `sections`, table by table."""
    merged = {"dtype": "float64", "batching": {"batch_size": 16}, "train": {"epochs": 4}}
    for layer in (*layers, sections):
        for key, value in layer.items():
            merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return make_spec(**merged)


def losses_and_final(backend: str, spec) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    _, npz = run_in_process(backend, spec)
    return np.asarray(npz["losses"]), {k[6:]: np.asarray(npz[k]) for k in npz if k.startswith("final/")}


def assert_matches_oracle(spec) -> np.ndarray:
    """The jax run equals the oracle's at every step and in its final parameters; returns the oracle's losses."""
    want, want_final = losses_and_final("numpy", spec)
    got, got_final = losses_and_final("jax", spec)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert got_final.keys() == want_final.keys()
    for name, value in want_final.items():
        np.testing.assert_allclose(got_final[name], value, rtol=RTOL, atol=ATOL, err_msg=name)
    return want


def first_divergent(a: np.ndarray, b: np.ndarray) -> int | None:
    """The first 0-based index whose losses differ by more than SEEN (relative), None if none does."""
    off = np.flatnonzero(np.abs(a - b) > SEEN * np.maximum(np.abs(b), 1.0))
    return int(off[0]) if off.size else None


@pytest.fixture
def clip_activity(monkeypatch):
    """Per oracle update: (the canonical clip of the regularized gradient is active, the clip of the data gradient
    alone would be), computed with common.clipping from what the oracle's optimizer is given."""
    seen: list[tuple[bool, bool]] = []
    step = oracle_optim.CanonicalOptimizer.step

    def recording(self, params, grads):
        o, trained = self.opt, {name: w for name, w in params.items() if name in grads}
        regularized = {name: grads[name] + self.reg.gradient(name, w) for name, w in trained.items()}
        data = {name: grads[name] for name in trained}
        seen.append((clipping.clip(regularized, o.clip_norm, o.clip)[1], clipping.clip(data, o.clip_norm, o.clip)[1]))
        return step(self, params, grads)

    monkeypatch.setattr(oracle_optim.CanonicalOptimizer, "step", recording)
    return seen


@pytest.mark.parametrize("form", ["global", "per_tensor"])
def test_clip_matches_oracle(form, clip_activity):
    spec = spec_for(CLIPPED, optimizer={"clip_norm": CLIP_NORMS[form], "clip": form})
    assert_matches_oracle(spec)
    active = [canonical for canonical, _ in clip_activity]
    assert any(active) and not all(active)
    assert active.index(True) == 8  # first active at step 9, as the module comment says


# each kind once with SGD (momentum, nesterov or decoupled decay) and once with Adam or AdamW
SCHEDULES = {
    "step": {"kind": "step", "step_size": 5, "gamma": 0.5},
    "cosine": {"kind": "cosine", "decay_steps": 20, "final_lr": 0.003},
    "warmup_cosine": {"kind": "warmup_cosine", "warmup_steps": 3, "decay_steps": 20, "final_lr": 0.003},
}
OPTIMIZERS = {
    ("step", "sgd"): ({"lr": 0.07, "momentum": 0.9, "nesterov": True}, {"l2": 1e-3}),
    ("cosine", "sgd"): ({"lr": 0.07, "momentum": 0.9}, {"weight_decay": 1e-2, "decay": "decoupled"}),
    ("warmup_cosine", "sgd"): ({"lr": 0.07, "momentum": 0.9}, {"weight_decay": 1e-3}),
    ("step", "adam"): ({"name": "adam", "lr": 0.01}, {"l1": 1e-3}),
    ("cosine", "adam"): ({"name": "adamw", "lr": 0.01}, {"weight_decay": 1e-2, "decay": "decoupled"}),
    ("warmup_cosine", "adam"): ({"name": "adamw", "lr": 0.01}, {"weight_decay": 1e-2, "decay": "decoupled"}),
}


@pytest.mark.parametrize(("kind", "family"), list(OPTIMIZERS))
def test_schedule_matches_oracle(kind, family):
    optimizer, regularization = OPTIMIZERS[(kind, family)]
    assert_matches_oracle(spec_for(schedule=SCHEDULES[kind], optimizer=optimizer, regularization=regularization))


def test_accumulate_clip_and_schedule_count_optimizer_steps(clip_activity):
    """K = 2 micro-batches of 8 (optax.MultiSteps): the clip sees the step's summed gradient, the schedule's count
    moves once per optimizer step."""
    spec = spec_for(
        CLIPPED,
        optimizer={"clip_norm": 1.5, "clip": "global"},
        schedule=SCHEDULES["warmup_cosine"],
        batching={"batch_size": 8, "accumulate": 2},
    )
    assert_matches_oracle(spec)
    assert any(active for active, _ in clip_activity)


@pytest.mark.parametrize("execution", ["eager", "fused"])
def test_execution_modes_clip_and_schedule(execution):
    """compiled (the default) is every test above; eager and the fused lax.scan epoch read lr(t) and clip alike."""
    spec = spec_for(
        CLIPPED,
        optimizer={"clip_norm": 1.0, "clip": "per_tensor"},
        schedule=SCHEDULES["step"],
        batching={"last_batch": "drop"},
    )
    assert_matches_oracle(replace(spec, execution=execution))


# ---- idioms alone (mode exact, native.idioms = [id]) ----------------------------------------------------------------


def idiom_run(spec, idiom: str) -> tuple[np.ndarray, np.ndarray]:
    """(the oracle's losses for `spec`, jax's with only `idiom` on)."""
    assert IDIOMS[idiom].applies(spec)
    return losses_and_final("numpy", spec)[0], losses_and_final("jax", replace_idioms(spec, [idiom]))[0]


def replace_idioms(spec, idioms: list[str]):
    return replace(spec, native=replace(spec.native, idioms=idioms))


def test_clip_before_decay_diverges_after_the_first_clipped_step(clip_activity):
    """chain(clip, add_decayed_weights, sgd): the data gradient alone is clipped, so the update changes at the first
    step where either clip is active (update s changes the loss recorded at step s + 1) and not before."""
    spec = spec_for(CLIPPED, optimizer={"clip_norm": 1.5, "clip": "global"})
    want, got = idiom_run(spec, "clip_before_decay")
    first = next(s for s, (canonical, data) in enumerate(clip_activity) if canonical or data)  # 0-based update
    assert first == 8
    assert first_divergent(got, want) == first + 1


def test_optax_warmup_decay_steps_diverges_where_the_cosines_part():
    """warmup_cosine_decay_schedule(decay_steps = D): the cosine over D − W steps. lr(t) first differs at t = W + 1
    (common.schedules.optax_warmup_cosine), used by update t + 1, whose change the loss at index t + 1 shows."""
    sched = SCHEDULES["warmup_cosine"]
    spec = spec_for(schedule=sched, optimizer={"lr": 0.07, "momentum": 0.9})
    base, idioms = spec.optimizer.lr, frozenset({"optax_warmup_decay_steps"})
    t = next(
        t
        for t in range(100)
        if schedules.used(spec.schedule, base, t, 0, idioms) != schedules.lr(spec.schedule, base, t)
    )
    assert t == sched["warmup_steps"] + 1
    want, got = idiom_run(spec, "optax_warmup_decay_steps")
    assert first_divergent(got, want) == t + 1


def test_float32_hyper_diverges_from_the_first_update():
    """Python-float schedule values: optax's exponential_decay runs in float32, so lr(0) is float32(0.07) ≠ 0.07 and
    the first update already differs (the loss at index 1), while the loss at index 0 (before any update) agrees."""
    assert float(np.float32(0.07)) != 0.07
    spec = spec_for(schedule=SCHEDULES["step"], optimizer={"lr": 0.07, "momentum": 0.9})
    want, got = idiom_run(spec, "float32_hyper")
    assert first_divergent(got, want) == 1
    assert np.max(np.abs(got - want)) < 1e-6  # a float32 rounding of lr, not another schedule
