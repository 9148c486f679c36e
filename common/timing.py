"""Timing method (docs/design.md, "Performance methodology"), framework-free: windows of many calls, the device
synchronised at window edges only.

    warm-up:  the first call (compile/trace) is timed on its own, then `warmup` more calls are run untimed;
    windows:  W ≥ 10 windows of k calls each; t_w = (sync-to-sync wall time) / k;
    summary:  median(t_w), IQR = q75 − q25, and throughput = items per call / median.

`sync` is the backend's device barrier (torch.cuda.synchronize, jax.block_until_ready, TF `.numpy()`); on CPU it
still forces pending asynchronous work (JAX dispatch) to finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
) -> Timing:
    """Time `call` (whose result `sync` waits on) as the module docstring describes."""
    t0 = time.perf_counter()
    sync(call())
    first = time.perf_counter() - t0
    out = None
    for _ in range(warmup):
        out = call()
    sync(out)
    per_call = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(calls_per_window):
            out = call()
        sync(out)
        per_call.append((time.perf_counter() - start) / calls_per_window)
    q25, median, q75 = np.percentile(per_call, [25, 50, 75])
    return Timing(
        first, float(median), float(q75 - q25), float(q25), float(q75), windows, calls_per_window, items_per_call
    )


def calls_for_budget(seconds_per_call: float, budget_s: float, windows: int) -> int:
    """Calls per window so that `windows` windows take about `budget_s` (at least 1)."""
    return max(1, int(budget_s / max(windows * seconds_per_call, 1e-9)))
