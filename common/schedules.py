"""Learning-rate schedules (docs/design.md, "Learning-rate schedules"): the canonical lr(t) and what ports get.

t is the number of optimizer steps already taken: the first update uses lr(0). Keys of `[schedule]`: `kind`,
`warmup_steps` W, `decay_steps` D, `step_size` s, `gamma` γ, `final_lr` f; lr₀ = optimizer.lr.

    constant:       lr(t) = lr₀
    step:           lr(t) = lr₀·γ^⌊t/s⌋
    cosine:         lr(t) = f + (lr₀ − f)·½(1 + cos(π·min(t, D)/D))
    warmup_cosine:  lr(t) = lr₀·t/W for t < W, else the cosine at t − W (D steps after the warmup)

Each framework reads it where it reads a schedule: torch's LRScheduler, stepped after `optimizer.step()` (its
constructor sets lr(0)); Keras's LearningRateSchedule called with `optimizer.iterations` (incremented after the
update); optax schedules called with the update count before it is incremented. With K accumulated micro-batches t
still counts optimizer steps.

The ports' idioms (common.idioms), each a function here so the oracle and the tests share one formula:
- `torch_cosine_annealing`: `CosineAnnealingLR(T_max = D, eta_min = f)` does not stop at D; its closed form
  f + (lr₀ − f)·½(1 + cos(π·t/D)) climbs back to lr₀ at t = 2D, and a warmup through `LinearLR` cannot start
  from 0 (`cosine_annealing`);
- `optax_warmup_decay_steps`: optax's `warmup_cosine_decay_schedule(decay_steps)` counts the warmup inside
  decay_steps, so a port passing D decays over D − W steps (`optax_warmup_cosine`);
- `scheduler_step_first`: `scheduler.step()` before `optimizer.step()` skips lr(0): step t + 1 uses lr(t + 1);
- `per_epoch_schedule`: the scheduler stepped once per epoch: the step in epoch e (0-based) uses lr(e).
"""

from __future__ import annotations

import math

TORCH_WARMUP_START = 1e-8  # the start_factor a torch port's LinearLR warmup uses (torch requires > 0)


def lr(schedule, base: float, t: int) -> float:
    """The canonical lr(t) of the spec's `schedule` table with lr₀ = `base`."""
    kind = schedule.kind
    if kind == "constant":
        return base
    if kind == "step":
        return base * schedule.gamma ** (t // schedule.step_size)
    warmup = schedule.warmup_steps if kind == "warmup_cosine" else 0
    if t < warmup:
        return base * t / warmup
    return cosine(base, schedule.final_lr, min(t - warmup, schedule.decay_steps), schedule.decay_steps)


def cosine(base: float, final: float, t: float, length: int) -> float:
    """f + (lr₀ − f)·½(1 + cos(π·t/length)), with no clamp on t."""
    return final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * t / length))


def cosine_annealing(schedule, base: float, t: int) -> float:
    """torch's CosineAnnealingLR(T_max = D, eta_min = f): the cosine at t − W, not stopped at D but continued up to
    lr₀ at t − W = 2D (torch's recursive form equals this closed form to rounding: ~1e-15 relative over a thousand
    steps). For warmup_cosine the port warms up with SequentialLR's `LinearLR(start_factor = s, total_iters = W)`,
    lr₀·(s + (1 − s)·t/W), s = TORCH_WARMUP_START since torch refuses s = 0."""
    warmup = schedule.warmup_steps if schedule.kind == "warmup_cosine" else 0
    if t < warmup:
        return base * (TORCH_WARMUP_START + (1.0 - TORCH_WARMUP_START) * t / warmup)
    return cosine(base, schedule.final_lr, t - warmup, schedule.decay_steps)


def optax_warmup_cosine(schedule, base: float, t: int) -> float:
    """optax.warmup_cosine_decay_schedule(0, lr₀, W, decay_steps = D, f): the cosine runs over D − W steps."""
    w, d = schedule.warmup_steps, schedule.decay_steps
    if t < w:
        return base * t / w
    length = d - w
    return cosine(base, schedule.final_lr, min(t - w, length), length) if length > 0 else schedule.final_lr


def used(schedule, base: float, t: int, epoch: int, idioms: frozenset[str] = frozenset()) -> float:
    """The lr the (t + 1)-th optimizer step uses, in epoch `epoch` (0-based), under the listed schedule idioms."""
    if "per_epoch_schedule" in idioms:
        t = epoch
    if "scheduler_step_first" in idioms:
        t += 1
    if "torch_cosine_annealing" in idioms and schedule.kind in ("cosine", "warmup_cosine"):
        return cosine_annealing(schedule, base, t)
    if "optax_warmup_decay_steps" in idioms and schedule.kind == "warmup_cosine":
        return optax_warmup_cosine(schedule, base, t)
    return lr(schedule, base, t)


def check(schedule: dict) -> tuple[str, str] | None:
    """(key, why) for what a `[schedule]` table gets wrong (None when it is consistent): cosine kinds need D ≥ 1,
    warmup_cosine W ≥ 1, and keys of another kind must keep their defaults."""
    kind = schedule["kind"]
    uses = {
        "constant": set(),
        "step": {"step_size", "gamma"},
        "cosine": {"decay_steps", "final_lr"},
        "warmup_cosine": {"warmup_steps", "decay_steps", "final_lr"},
    }[kind]
    defaults = {"warmup_steps": 0, "decay_steps": 0, "step_size": 1, "gamma": 0.1, "final_lr": 0.0}
    for key, default in defaults.items():
        if key not in uses and schedule[key] != default:
            return f"schedule.{key}", f"not read by kind = {kind!r}; drop it"
    if "decay_steps" in uses and schedule["decay_steps"] < 1:
        return "schedule.decay_steps", f"kind = {kind!r} needs decay_steps ≥ 1"
    if kind == "warmup_cosine" and schedule["warmup_steps"] < 1:
        return "schedule.warmup_steps", "kind = 'warmup_cosine' needs warmup_steps ≥ 1 (use 'cosine' without warmup)"
    return None
