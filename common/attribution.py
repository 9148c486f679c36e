"""Attribute a native-mode gap to idioms (docs/design.md, "parity explain"): the variants to run, and what they show.

For a pair of backends (a, b) and a metric m (final test loss, test accuracy), the gap of a run is
g = m_a − m_b, per seed. The variants (`variants`), each a spec in exact mode with a set of idioms on
(common.idioms):
- `exact`: none on;  `exact+i`: just idiom i;  `native`: the native set;  `native-i`: the native set without i.
A variant with a random idiom on runs K seeds; one with deterministic idioms only is one run (its draw is shared).
On split steps `split_step` stands for its bundle (common.idioms.bundled): the split, order and dropout draw.

For each idiom i that applies to the spec and changes a or b (`relevant`), with ḡ the mean over seeds:
    on(i)  = ḡ(exact+i) − ḡ(exact)       what turning i on alone adds to the gap
    off(i) = ḡ(native) − ḡ(native-i)     what turning i off alone removes from the native gap
    share(i) = ½(on(i) + off(i)) / ḡ(native)
the two estimates differ where idioms interact; both are reported. Semantic idioms are ranked by |on(i)|, the gap
each makes alone, noise idioms by their spread. A deterministic idiom is "semantic": it moves
the expected result, and its exact+i run is compared step by step (the first step where a and b part beyond the
exact tolerance, and their step-loss gap at the end). A random idiom changes the draw; its noise floor is the
seed-to-seed standard deviation of g(exact+i). It is "noise" unless on(i) lies beyond the 95% t interval of its K
draws' mean: then it moves the expected result too (a framework's default init is another distribution, not only
another draw) and is "semantic". The unexplained rest is ḡ(native) − Σ on(i).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from common.idioms import IDIOMS, NATIVE_SET, RANDOM, Idiom, bundled
from common.split_causes import first_apart
from common.stats import t_quantile

METRICS = ("test_loss", "test_acc")


@dataclass(frozen=True)
class Variant:
    key: str  # exact, exact+<id>, native, native-<id>
    idioms: frozenset[str]
    seeds: tuple[int, ...]


def relevant(spec, pair: tuple[str, str]) -> list[Idiom]:
    """The native-set idioms that apply to `spec` and change a or b, in registry order; a bundle of idioms that
    switch together (common.idioms.bundled) is represented by `split_step`."""
    folded = bundled(spec) - {"split_step"}
    return [
        i for i in IDIOMS.values() if i.id in NATIVE_SET and i.id not in folded and set(i.affects(spec)) & set(pair)
    ]


def variants(spec, pairs: list[tuple[str, str]], seeds: int) -> list[Variant]:
    """Every variant the pairs need (module docstring), seeds spec.seed … spec.seed + K − 1 where one is random."""
    ids = list(dict.fromkeys(i.id for pair in pairs for i in relevant(spec, pair)))
    many = tuple(range(spec.seed, spec.seed + seeds))

    def variant(key: str, on: frozenset[str]) -> Variant:
        return Variant(key, on, many if any(IDIOMS[i].kind == RANDOM for i in on) else (spec.seed,))

    together = bundled(spec)

    def members(i: str) -> frozenset[str]:
        return together if i in together else frozenset({i})

    out = [variant("exact", frozenset()), variant("native", NATIVE_SET)]
    out += [variant(f"exact+{i}", members(i)) for i in ids]
    out += [variant(f"native-{i}", NATIVE_SET - members(i)) for i in ids]
    return out


def variant_spec(spec, variant: Variant, seed: int):
    """The spec of one run of `variant`: exact mode with the variant's idioms listed, at `seed`."""
    native = dataclasses.replace(spec.native, idioms=tuple(sorted(variant.idioms)))
    return dataclasses.replace(spec, mode="exact", seed=seed, native=native, name=f"{spec.name}-{variant.key}")


def _gaps(records: dict, key: str, seeds, a: str, b: str, metric: str) -> np.ndarray:
    return np.array(
        [records[a][key, s]["epochs"][-1][metric] - records[b][key, s]["epochs"][-1][metric] for s in seeds]
    )


def _shifts(on: float, drawn: np.ndarray) -> bool:
    """Whether a random idiom moves the expected gap: |on| beyond the two-sided 95% t interval of its K draws'
    mean (a shift the draw alone would not explain)."""
    se = float(np.std(drawn, ddof=1)) / np.sqrt(drawn.size)
    return abs(on) > t_quantile(0.975, drawn.size - 1) * se


def _mean_se(values: np.ndarray) -> dict:
    se = float(np.std(values, ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0
    return {"mean": float(np.mean(values)), "se": se, "n": int(values.size)}


def attribute(spec, pair: tuple[str, str], runs: list[Variant], records: dict) -> dict:
    """The attribution of one pair (module docstring). `records[backend][(variant key, seed)]` is a record's JSON."""
    a, b = pair
    by_key = {v.key: v for v in runs}

    def gaps(key: str, metric: str) -> np.ndarray:
        return _gaps(records, key, by_key[key].seeds, a, b, metric)

    native = {m: _mean_se(gaps("native", m)) for m in METRICS}
    exact = {m: float(gaps("exact", m).mean()) for m in METRICS}
    rows = []
    for idiom in relevant(spec, pair):
        on = {m: float(gaps(f"exact+{idiom.id}", m).mean()) - exact[m] for m in METRICS}
        off = {m: native[m]["mean"] - float(gaps(f"native-{idiom.id}", m).mean()) for m in METRICS}
        share = {m: (on[m] + off[m]) / 2.0 / native[m]["mean"] if native[m]["mean"] != 0.0 else None for m in METRICS}
        row = {
            "id": idiom.id,
            "kind": idiom.kind,
            "class": "semantic",
            "touches": [f for f in pair if f in idiom.affects(spec)],
            "trap": idiom.trap,
            "fix": idiom.fix,
            "on": on,
            "off": off,
            "share": share,
        }
        if idiom.kind == RANDOM:
            drawn = {m: gaps(f"exact+{idiom.id}", m) for m in METRICS}
            row["spread"] = {m: float(np.std(drawn[m], ddof=1)) for m in METRICS}
            row["class"] = "semantic" if any(_shifts(on[m], drawn[m]) for m in METRICS) else "noise"
        else:
            rec_a, rec_b = (records[x][f"exact+{idiom.id}", spec.seed] for x in pair)
            row["first_step"] = first_apart(rec_a, rec_b)
            row["end_step_loss_gap"] = abs(rec_a["steps"][-1]["loss"] - rec_b["steps"][-1]["loss"])
            row["metric_gap"] = {m: rec_a["epochs"][-1][m] - rec_b["epochs"][-1][m] for m in METRICS}
        rows.append(row)

    def rank(cls: str) -> list[str]:
        """Semantic idioms by |on(i)| (the gap each one makes alone), noise idioms by their spread; test loss."""
        chosen = [r for r in rows if r["class"] == cls]
        size = (lambda r: abs(r["on"]["test_loss"])) if cls == "semantic" else (lambda r: r["spread"]["test_loss"])
        return [r["id"] for r in sorted(chosen, key=size, reverse=True)]

    explained = {m: sum(r["on"][m] for r in rows) for m in METRICS}
    return {
        "a": a,
        "b": b,
        "native_gap": native,
        "exact_gap": exact,
        "unexplained": {m: native[m]["mean"] - explained[m] for m in METRICS},
        "idioms": rows,
        "ranking": {"semantic": rank("semantic"), "noise": rank("noise")},
    }
