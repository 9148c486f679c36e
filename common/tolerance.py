"""Tolerance policy, written once (docs/design.md, "Tolerances").

Two values a, b agree when |a − b| ≤ atol + rtol·max(|a|, |b|).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    why: str

    def to_json(self) -> dict:
        return asdict(self)


FLOAT64_EXACT = Tolerance(
    1e-9,
    1e-12,
    "exact mode, float64: shared order, init and masks leave only summation-order and libm rounding "
    "(~1e-16 per op); 1e-9 leaves room for growth over hundreds of steps while any semantic difference "
    "(a missed factor, a wrong ε, a dropped row) shows at 1e-3 or more at its first step. atol covers "
    "parameters and losses that pass through zero.",
)
FLOAT32_EXACT = Tolerance(
    1e-4,
    1e-6,
    "exact mode, float32: the same computation in single precision (eps 6e-8) with different kernel "
    "orders; errors grow over steps but stay far below 1e-4 for the suite's experiments, while the traps move "
    "results by 1e-3 or more.",
)
NATIVE = Tolerance(
    0.0,
    0.0,
    "native mode: each framework's own RNG draws different masks and orders, so no per-step claim is made; "
    "agreement is a statistical question over seeds.",
)


def tolerance_for(dtype: str, mode: str) -> Tolerance:
    """The tolerance for a spec's dtype and mode."""
    if mode == "native":
        return NATIVE
    return FLOAT64_EXACT if dtype == "float64" else FLOAT32_EXACT
