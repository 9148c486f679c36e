"""Timing method (docs/design.md, "Performance methodology"), framework-free.

Windows (`time_calls`), for one call timed alone (a step, a loader pass):

    warm-up:  the first call (compile/trace) is timed on its own, then `warmup` more calls are run untimed;
    windows:  W ≥ 10 windows of k calls each; t_w = (sync-to-sync wall time) / k; garbage collected before each
              window and disabled during it;
    summary:  median(t_w), IQR = q75 − q25, and throughput = items per call / median.

Paired rounds (`paired_rounds`), for calls whose ratios are reported (each mode's epoch against the reference's):

    first:    each variant's first call (compile/trace) timed on its own, every variant the same way;
    rounds:   R rounds; in round r every variant runs one call, in the order rotated by r places, so drift and
              position weigh on every variant alike; t_{v,r} = sync-to-sync wall time of that call;
    garbage:  collected before each timed call and disabled during it (`settled_heap`);
    cap:      a variant whose timed calls have taken `cap_s` in all is timed in no later round (its rounds are
              fewer; a pair of variants is compared over the rounds both ran).

Both collect the heap once and freeze what survives first (`settled_heap`), so the collection before each timed
call walks only what the timing made: with torch and Keras loaded a full collection takes 0.24 s, about 300 of them
per backend and batch size.

`sync` is the backend's device barrier (torch.cuda.synchronize, jax.block_until_ready, TF `.numpy()`); on CPU it
still forces pending asynchronous work (JAX dispatch) to finish.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    first_call_s: float  # compile / trace / first-touch time, kept apart from the steady state
    median_s: float  # per call, over windows
    iqr_s: float
    q25_s: float
    q75_s: float
    windows: int
    calls_per_window: int
    items_per_call: int

    @property
    def items_per_s(self) -> float:
        return self.items_per_call / self.median_s if self.median_s > 0 else float("inf")

    def to_json(self) -> dict:
        return {**asdict(self), "items_per_s": self.items_per_s}


def time_calls(
    call: Callable[[], object],
    sync: Callable[[object], None],
    items_per_call: int,
    windows: int = 10,
    calls_per_window: int = 20,
    warmup: int = 3,
    cap_s: float = float("inf"),
) -> Timing:
    """Time `call` (whose result `sync` waits on) as the module docstring describes; once the windows have taken
    `cap_s` in all, no more are timed (at least 2; `Timing.windows` says how many ran)."""
    with settled_heap():
        return _time_calls(call, sync, items_per_call, windows, calls_per_window, warmup, cap_s)


def _time_calls(call, sync, items_per_call, windows, calls_per_window, warmup, cap_s) -> Timing:
    t0 = time.perf_counter()
    sync(call())
    first = time.perf_counter() - t0
    out = None
    for _ in range(warmup):
        out = call()
    sync(out)
    per_call, spent = [], 0.0
    while len(per_call) < windows and (len(per_call) < 2 or spent < cap_s):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            for _ in range(calls_per_window):
                out = call()
            sync(out)
            took = time.perf_counter() - start
        finally:
            gc.enable()
        spent += took
        per_call.append(took / calls_per_window)
    q25, median, q75 = np.percentile(per_call, [25, 50, 75])
    return Timing(
        first, float(median), float(q75 - q25), float(q25), float(q75), len(per_call), calls_per_window, items_per_call
    )


def calls_for_budget(seconds_per_call: float, budget_s: float, windows: int) -> int:
    """Calls per window so that `windows` windows take about `budget_s` (at least 1)."""
    return max(1, int(budget_s / max(windows * seconds_per_call, 1e-9)))


@dataclass(frozen=True)
class Rounds:
    """`seconds[v][r]`: variant v's call in round r (None once v was capped); `first_call_s[v]`: its first call."""

    seconds: dict[str, list[float | None]]
    first_call_s: dict[str, float]
    capped: tuple[str, ...]

    def timing(self, name: str, items_per_call: int) -> Timing:
        """Variant `name` summarised as a Timing: its rounds as windows of one call each."""
        ran = [t for t in self.seconds[name] if t is not None]
        q25, median, q75 = np.percentile(ran, [25, 50, 75])
        return Timing(
            self.first_call_s[name],
            float(median),
            float(q75 - q25),
            float(q25),
            float(q75),
            len(ran),
            1,
            items_per_call,
        )


def paired_rounds(
    variants: dict[str, tuple[Callable[[], object], Callable[[object], None]]],
    rounds: int,
    cap_s: float = float("inf"),
    clock: Callable[[], float] = time.perf_counter,
) -> Rounds:
    """Time one call of every variant ({name: (call, sync)}) per round as the module docstring describes."""
    with settled_heap():
        return _paired_rounds(variants, rounds, cap_s, clock)


def _paired_rounds(variants, rounds, cap_s, clock) -> Rounds:
    names = list(variants)
    first = {}
    for name in names:
        first[name] = _timed(*variants[name], clock)
    seconds: dict[str, list[float | None]] = {name: [] for name in names}
    spent = dict.fromkeys(names, 0.0)
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if spent[name] >= cap_s:
                seconds[name].append(None)
                continue
            took = _timed(*variants[name], clock)
            spent[name] += took
            seconds[name].append(took)
    return Rounds(seconds, first, tuple(n for n in names if spent[n] >= cap_s))


@contextmanager
def settled_heap():
    """`gc.collect()` once, then `gc.freeze()` (the survivors, the interpreter's and frameworks' long-lived objects,
    move to a permanent generation no collection walks) until the block ends (`gc.unfreeze()`)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _timed(call: Callable[[], object], sync: Callable[[object], None], clock: Callable[[], float]) -> float:
    """Wall time of one synchronised call, garbage collected before and not collected during it."""
    gc.collect()
    gc.disable()
    try:
        start = clock()
        sync(call())
        return clock() - start
    finally:
        gc.enable()


def fastest(
    call: Callable[[], object],
    sync: Callable[[object], None],
    repeats: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """The shortest of `repeats` synchronised calls after one untimed warm-up: a peak probe (the best the device
    does, common.flops), not a typical call."""
    sync(call())
    return min(_timed(call, sync, clock) for _ in range(repeats))
