"""`parity run --against-single`: a spec whose steps are split over replicas or micro-batches (common.distributed)
against its single-device twin (`single_device`: the same rows per optimizer step, R = K = 1), per backend, step by
step (docs/design.md, "Data parallelism and accumulation")."""

from __future__ import annotations

from common.compare import compare_pair
from common.explain import explain
from common.tolerance import Tolerance


def twin_name(backend: str) -> str:
    return f"{backend}-single"


def against_single(records: dict, singles: dict, tol: Tolerance) -> dict:
    """comparison.json's `against_single`: every backend's split record against its own twin's, with the causes."""
    pairs, causes = [], []
    for name in records:
        if name in singles:
            both = {name: records[name], twin_name(name): singles[name]}
            pairs += compare_pair(name, both[name], twin_name(name), both[twin_name(name)], tol)
            causes += explain(both)
    return {
        "equivalent": bool(pairs) and not any(p["divergent"] for p in pairs),
        "tolerance": tol.to_json(),
        "pairs": pairs,
        "causes": causes,
    }
