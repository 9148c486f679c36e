"""PyTorch backend, gradient clipping and learning-rate schedules (issue 13): exact mode against the numpy oracle at
every step (float64, ≤ 1e-9) for each clip form and schedule kind, with SGD (momentum, nesterov), Adam and AdamW,
decoupled decay, accumulation, DDP replicas and torch.compile; then each torch idiom alone (mode exact,
`native.idioms = [id]`) diverging at the step its formula predicts and not before, and the lr each step used.

Expected steps come from common.clipping (the oracle's own record of which steps it clipped) and common.schedules'
formulas, never from the backend under test. A step's recorded loss is pre-update: an update that differs at step
s shows in the loss of step s + 1; an lr that differs at t (steps already taken) is used by step t + 1.
"""

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from backends.torch_backend import optim as torch_optim  # noqa: E402
from common import clipping, schedules  # noqa: E402
from common.batching import BatchPlan  # noqa: E402
from tests.support import base_spec, compare_with_oracle, divergences, run_in_process  # noqa: E402

EPOCHS, BATCH = 4, 16  # iris: 120 training rows, 8 steps per epoch, 32 steps
SGD_CLIP = {"name": "sgd", "lr": 0.5, "momentum": 0.9}  # the oracle clips steps 9, 11, ... at c = 1.5, not 1 to 8


def _spec(**sections):
    batching = {"batch_size": BATCH, **sections.pop("batching", {})}
    return base_spec(batching=batching, train={"epochs": EPOCHS}, **sections)


@pytest.fixture
def clipped_steps(monkeypatch):
    """The 1-based steps at which the numpy oracle's common.clipping.clip scaled a gradient, per oracle run."""
    runs: list[list[int]] = []
    original = clipping.clip

    def recording(grads, clip_norm, form):
        out = original(grads, clip_norm, form)
        runs[-1].append(out[1])
        return out

    def fresh():
        runs.append([])
        return runs[-1]

    monkeypatch.setattr(clipping, "clip", recording)
    return fresh


def _oracle_comparison(spec, clipped_steps):
    """(comparison, 1-based steps the oracle clipped): the oracle runs first in compare_with_oracle."""
    flags = clipped_steps()
    cmp = compare_with_oracle("torch", spec)
    return cmp, [s for s, active in enumerate(flags, 1) if active]


def _loss_pair(cmp) -> dict:
    return next(p for p in cmp["pairs"] if p["metric"] == "loss")


def _assert_exact(cmp):
    assert cmp["tolerance"]["rtol"] == 1e-9
    assert divergences(cmp) == []


# -------------------------------------------------------------------------------------------------------- clipping

CLIP_CASES = {
    "global-sgd-momentum-l2": {"optimizer": {**SGD_CLIP, "clip_norm": 1.5}, "regularization": {"l2": 0.001}},
    "per_tensor-sgd-l1": {
        "optimizer": {**SGD_CLIP, "clip_norm": 1.2, "clip": "per_tensor"},
        "regularization": {"l1": 0.001},
    },
    "global-adam-l2": {"optimizer": {"name": "adam", "lr": 0.1, "clip_norm": 0.9}, "regularization": {"l2": 0.01}},
    "per_tensor-adamw-decoupled": {
        "optimizer": {"name": "adamw", "lr": 0.1, "clip_norm": 0.8, "clip": "per_tensor"},
        "regularization": {"weight_decay": 0.01, "decay": "decoupled", "l2": 0.001},
    },
    "global-sgd-decoupled": {
        "optimizer": {**SGD_CLIP, "clip_norm": 1.5},
        "regularization": {"weight_decay": 0.01, "decay": "decoupled", "regularize_bias": True},
    },
}


def _clip(case: str, clip_norm: float, **sections) -> dict:
    """CLIP_CASES[case] at another clip norm (chosen from the oracle's norms under `sections`), plus `sections`."""
    base = CLIP_CASES[case]
    return {**base, "optimizer": {**base["optimizer"], "clip_norm": clip_norm}, **sections}


@pytest.mark.parametrize("case", sorted(CLIP_CASES))
def test_clipping_agrees_with_oracle_at_every_step(case, clipped_steps):
    cmp, clipped = _oracle_comparison(_spec(**CLIP_CASES[case]), clipped_steps)
    _assert_exact(cmp)
    assert 0 < len(clipped) < BatchPlan.from_spec(_spec(), 120).steps_per_epoch * EPOCHS  # active on some steps only


def test_clipping_is_active_and_changes_the_run(clipped_steps):
    """The clipped and unclipped torch runs agree up to the oracle's first clipped step and differ right after.
    Agree: to float64 rounding, not bitwise, since the unclipped run's coupled L2 is SGD's weight_decay and the
    clipped run's a loss term (the clipped gradient is the regularized one: backends.torch_backend.optim), which
    part in the last bits (3e-16 at step 8); the first clipped update moves the next loss by ~16%."""
    spec = _spec(**CLIP_CASES["global-sgd-momentum-l2"])
    clipped = _oracle_comparison(spec, clipped_steps)[1]
    assert clipped[0] > 1
    on = run_in_process("torch", spec)[0]["steps"]
    off = run_in_process("torch", replace(spec, optimizer=replace(spec.optimizer, clip_norm=0.0)))[0]["steps"]
    apart = [abs(s["loss"] - u["loss"]) / abs(u["loss"]) for s, u in zip(on, off, strict=True)]
    first = next(step for step, gap in enumerate(apart, 1) if gap > 1e-12)
    assert first == clipped[0] + 1 and apart[first - 1] > 1e-3


# ------------------------------------------------------------------------------------------------------- schedules

SCHEDULES = {
    "step": {"kind": "step", "step_size": 5, "gamma": 0.5},
    "cosine": {"kind": "cosine", "decay_steps": 10, "final_lr": 0.01},
    "warmup_cosine": {"kind": "warmup_cosine", "warmup_steps": 4, "decay_steps": 12, "final_lr": 0.001},
}
OPTIMIZERS = {
    "sgd-momentum-decoupled": (
        {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        {"weight_decay": 0.01, "decay": "decoupled"},
    ),
    "sgd-nesterov-l2": ({"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True}, {"l2": 0.001}),
    "adam-l2": ({"name": "adam", "lr": 0.01}, {"l2": 0.001}),
    "adamw": ({"name": "adamw", "lr": 0.01}, {"weight_decay": 0.05, "decay": "decoupled"}),
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_schedule_agrees_with_oracle_at_every_step(kind, optimizer):
    opt, reg = OPTIMIZERS[optimizer]
    _assert_exact(compare_with_oracle("torch", _spec(optimizer=opt, regularization=reg, schedule=SCHEDULES[kind])))


ACCUMULATE = {"batching": {"accumulate": 2}}  # 16 optimizer steps of 2 × 16 rows
SPLIT_CASES = {  # clipped on a few early steps only
    "accumulate2-global-step": _clip("global-sgd-momentum-l2", 0.5, schedule=SCHEDULES["step"], **ACCUMULATE),
    "accumulate2-per_tensor-warmup": _clip(
        "per_tensor-adamw-decoupled", 0.5, schedule=SCHEDULES["warmup_cosine"], **ACCUMULATE
    ),
    "replicas2-accumulate2": _clip(
        "global-sgd-decoupled", 0.5, schedule=SCHEDULES["cosine"], distributed={"replicas": 2}, **ACCUMULATE
    ),
}


@pytest.mark.parametrize("case", sorted(SPLIT_CASES))
def test_split_steps_clip_and_schedule_per_optimizer_step(case, clipped_steps):
    """accumulate K: clipping of the accumulated (and all-reduced) gradient, lr(t) with t counting optimizer steps."""
    cmp, clipped = _oracle_comparison(_spec(**SPLIT_CASES[case]), clipped_steps)
    _assert_exact(cmp)
    assert clipped


@pytest.mark.parametrize(
    "sections",
    [
        _clip("global-sgd-momentum-l2", 0.9, schedule=SCHEDULES["step"]),
        _clip("per_tensor-adamw-decoupled", 0.8, schedule=SCHEDULES["warmup_cosine"]),
    ],
    ids=["sgd-global-step", "adamw-per_tensor-warmup"],
)
def test_compiled_mode_clips_and_schedules_exactly(sections, clipped_steps):
    """torch.compile of the optimizer step (clip, decay, torch.optim) reads the scheduled lr tensor: exact, and
    no recompile per lr (execution.CompiledStep makes hitting the recompile limit an error)."""
    cmp, clipped = _oracle_comparison(replace(_spec(**sections), execution="compiled"), clipped_steps)
    _assert_exact(cmp)
    assert clipped


# ------------------------------------------------------------------------------------------------ idioms, one each


def _first_lr_difference(spec, idiom: str) -> int:
    """t*: the first t (steps already taken) whose lr under `idiom` (common.schedules.used) is not lr(t)."""
    steps = BatchPlan.from_spec(spec, 120).steps_per_epoch
    s, base = spec.schedule, spec.optimizer.lr
    return next(
        t
        for t in range(steps * EPOCHS)
        if schedules.used(s, base, t, t // steps, frozenset({idiom})) != schedules.lr(s, base, t)
    )


SCHEDULE_IDIOMS = {
    "torch_cosine_annealing": SCHEDULES["cosine"],  # t* = D + 1: the cosine climbs back
    "scheduler_step_first": SCHEDULES["step"],  # t* = 4: lr(5) at the fifth step
    "per_epoch_schedule": SCHEDULES["step"],  # t* = 5: lr(0) through the first epoch
}


@pytest.mark.parametrize("idiom", sorted(SCHEDULE_IDIOMS))
def test_schedule_idiom_alone_diverges_where_its_lr_differs(idiom):
    spec = _spec(
        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9},
        schedule=SCHEDULE_IDIOMS[idiom],
        native={"idioms": [idiom]},
    )
    t = _first_lr_difference(spec, idiom)
    assert t >= 1
    cmp = compare_with_oracle("torch", spec)
    assert cmp["tolerance"]["rtol"] == 1e-9
    assert _loss_pair(cmp)["first_divergent_step"] == t + 2  # step t + 1 uses it, step t + 2's loss shows it


@pytest.mark.parametrize("form", ["global", "per_tensor"])
def test_clip_epsilon_alone_diverges_after_the_first_clipped_step(form, clipped_steps):
    case = "global-sgd-momentum-l2" if form == "global" else "per_tensor-sgd-l1"
    spec = _spec(**CLIP_CASES[case], native={"idioms": ["clip_epsilon"]})
    cmp, clipped = _oracle_comparison(spec, clipped_steps)
    assert cmp["tolerance"]["rtol"] == 1e-9
    # torch's c/(n + 1e-6) vs c/n: ~1e-6 relative on the first clipped update
    assert clipping.scale(2.0, 1.5) / clipping.torch_scale(2.0, 1.5) - 1.0 > 1e-7
    assert _loss_pair(cmp)["first_divergent_step"] == clipped[0] + 1


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_clip_before_decay_alone_diverges_after_the_first_clipped_step(optimizer, clipped_steps):
    """Coupled decay in weight_decay (added after the clip) instead of in the clipped gradient."""
    sections = CLIP_CASES["global-sgd-momentum-l2" if optimizer == "sgd" else "global-adam-l2"]
    spec = _spec(**sections, native={"idioms": ["clip_before_decay"]})
    cmp, clipped = _oracle_comparison(spec, clipped_steps)
    assert cmp["tolerance"]["rtol"] == 1e-9
    assert _loss_pair(cmp)["first_divergent_step"] == clipped[0] + 1


# ------------------------------------------------------------------------------------------------ the lr each step used


USED_CASES = {
    "step": ("step", ()),
    "cosine": ("cosine", ()),
    "warmup_cosine": ("warmup_cosine", ()),
    "cosine-annealing": ("cosine", ("torch_cosine_annealing",)),
    "warmup-cosine-annealing": ("warmup_cosine", ("torch_cosine_annealing",)),
    "step-first": ("step", ("scheduler_step_first",)),
    "per-epoch": ("step", ("per_epoch_schedule",)),
    "per-epoch-step-first": ("cosine", ("per_epoch_schedule", "scheduler_step_first")),
}


@pytest.mark.parametrize("case", sorted(USED_CASES))
def test_each_step_uses_the_lr_common_schedules_says(case, monkeypatch):
    kind, idioms = USED_CASES[case]
    spec = _spec(
        optimizer={"name": "adam", "lr": 0.01},
        schedule={**SCHEDULES[kind], "decay_steps": 6} if kind != "step" else SCHEDULES[kind],
        native={"idioms": list(idioms)},
    )
    used = []
    original = torch_optim.TorchOptimizer.step

    def recording(self):
        used.append([float(group["lr"]) for group in self.opt.param_groups])
        original(self)

    monkeypatch.setattr(torch_optim.TorchOptimizer, "step", recording)
    run_in_process("torch", spec)
    steps = BatchPlan.from_spec(spec, 120).steps_per_epoch
    assert len(used) == steps * EPOCHS
    s, base = spec.schedule, spec.optimizer.lr
    for t, lrs in enumerate(used):
        want = schedules.used(s, base, t, t // steps, frozenset(idioms))
        assert all(abs(lr - want) <= 1e-15 + 1e-12 * want for lr in lrs), (t, lrs, want)
