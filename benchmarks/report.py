"""The verdict table (terminal) and report.md, built from comparison.json and the records."""

from __future__ import annotations

from collections import defaultdict

from common.compare import EPOCH_METRICS, earliest, first_divergence
from common.metrics import banding
from common.spec import Spec

STEP_METRICS = ("loss", "batch_ids", "padded_length")  # compared per step; the others per epoch


def fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2e}" if isinstance(value, float) else str(value)


def _worst(vals: list) -> float | None:
    """The largest value, NaN if any is NaN (max() alone depends on the order), None when there is none."""
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return float("nan") if any(v != v for v in vals) else max(vals)


def pair_rows(comparison: dict) -> list[dict]:
    """One summary row per backend pair: worst relative differences by metric group and the first divergence."""
    groups = defaultdict(list)
    for p in comparison["pairs"]:
        groups[(p["a"], p["b"])].append(p)
    rows = []
    for (a, b), pairs in groups.items():

        def worst(select, pairs=pairs):
            return _worst([p["max_rel_diff"] for p in pairs if select(p["metric"])])

        bad = [p for p in pairs if p["divergent"]]
        first = earliest(pairs)
        ids = [p for p in pairs if p["metric"] in ("batch_ids", "padded_length") and p["divergent"]]
        first_ids = min((p["first_divergent_step"] for p in ids), default=None)
        rows.append(
            {
                "a": a,
                "b": b,
                "batch_ids": "identical" if not ids else f"differ at step {first_ids}",
                "loss": worst(lambda m: m == "loss"),
                "metrics": worst(lambda m: m in EPOCH_METRICS),
                "params": worst(lambda m: m.startswith("final/")),
                "used": _worst([p.get("tolerance_used") for p in pairs]),
                "first": None if first is None else f"{first['metric']} @ {first['first_divergent_step']}",
                "agree": not bad,
            }
        )
    return rows


def verdict_line(comparison: dict, failed: list[str]) -> str:
    tol = comparison["tolerance"]
    if "statistical" in comparison:
        verdicts = sorted({p["verdict"] for p in comparison["statistical"]})
        head = (
            "EQUIVALENT over seeds (TOST)" if comparison["equivalent"] else "NOT SHOWN EQUIVALENT over seeds"
        ) + f": {'; '.join(verdicts)}"
    elif comparison["claim"].startswith("none"):
        head = "NO PER-STEP CLAIM (native mode: each framework's own RNG)"
    elif comparison["equivalent"]:
        head = f"EQUIVALENT within rtol {tol['rtol']:g} at every step"
    else:
        first = first_divergence(comparison)
        head = (
            "DIVERGENT"
            if first is None
            else (
                f"DIVERGENT: {first['a']} vs {first['b']} first differ in {first['metric']} at "
                f"{'step' if first['metric'] in STEP_METRICS else 'epoch'} {first['first_divergent_step']} "
                f"(max rel diff {fmt(first['max_rel_diff'])})"
            )
        )
    diverged = nonfinite_phrase(comparison)
    if diverged:
        head += f", but {diverged}" if comparison["equivalent"] else f"; {diverged}"
    if failed:
        head += f"; FAILED or missing: {', '.join(failed)}"
    return head


def nonfinite_phrase(comparison: dict) -> str:
    """'training diverged to nan at step 5 in every backend' or per backend; '' when everything is finite."""
    found = comparison.get("nonfinite") or {}
    if not found:
        return ""
    where = {
        name: f"{f['value']} at step {f['step']}" if "step" in f else f"non-finite at epoch {f.get('epoch', '?')}"
        for name, f in found.items()
    }
    names = comparison.get("backends") or list(found)
    if len(set(where.values())) == 1 and set(found) >= set(names):
        return f"training diverged to {next(iter(where.values()))} in every backend"
    finite = [n for n in names if n not in found]
    return (
        "training diverged: "
        + ", ".join(f"{n} {w}" for n, w in where.items())
        + (f" ({', '.join(finite)} finite)" if finite else "")
    )


def nonfinite_warnings(comparison: dict) -> list[str]:
    """One line per backend whose training went non-finite: printed even when the backends agree."""
    out = []
    for name, f in (comparison.get("nonfinite") or {}).items():
        parts = [f"training loss became {f['value']} at step {f['step']}"] if "step" in f else []
        if "epoch" in f:
            parts.append(f"an epoch metric is non-finite from epoch {f['epoch']}")
        if "params" in f:
            names = ", ".join(f["params"][:3]) + (", …" if len(f["params"]) > 3 else "")
            parts.append(f"{len(f['params'])} final parameter tensor(s) non-finite ({names})")
        out.append(f"WARNING non-finite: {name}: {'; '.join(parts)} (training exploded: lower optimizer.lr?)")
    return out


def banding_warnings(spec: Spec, records: dict) -> list[str]:
    """One line per split whose epoch accuracy is quantised by per-batch-mean aggregation (common.metrics)."""
    if not records:
        return []
    rec = next(iter(records.values()))[0]
    out = []
    for split, sizes in rec["epochs"][0]["eval_batch_sizes"].items():
        found = banding(sizes, spec.metrics.aggregation)
        if found:
            levels = ", ".join(f"{v:g}" for v in found["levels"][:6]) + (", …" if len(found["levels"]) > 6 else "")
            out.append(
                f"WARNING banding: {split} accuracy is the mean of per-batch accuracies over unequal batches "
                f"{found['batch_sizes']}; the batch of {found['smallest']} can only score {levels}, so the "
                f"epoch accuracy moves in steps of {found['step']:.3g}. Use metrics.aggregation = "
                f'"weighted" (per sample).'
            )
    return out


def cause_lines(comparison: dict) -> list[str]:
    """One line per known cause (common.explain) behind a divergent pair: "different" over seeds when the run has
    them (per-step divergence is then expected in native mode and no claim), else divergent per step; none when
    everything agrees."""
    if "statistical" in comparison:
        divergent = {(p["a"], p["b"]) for p in comparison["statistical"] if p["verdict"].startswith("different")}
    else:
        divergent = {(p["a"], p["b"]) for p in comparison["pairs"] if p["divergent"]}
    divergent |= {(b, a) for a, b in divergent}
    return [
        f"cause [{c['trap']}] {c['a']} vs {c['b']}: {c['why']}"
        for c in comparison.get("causes", [])
        if (c["a"], c["b"]) in divergent
    ]


def against_single_lines(result: dict) -> list[str]:
    """The terminal (and report) lines: one per backend, then the causes of those that differ."""
    out = [
        f"{row['a']} vs its single-device twin: per-step loss rel {fmt(row['loss'])}, final params rel "
        f"{fmt(row['params'])}: {'equal' if row['agree'] else 'first differ in ' + row['first']}"
        for row in pair_rows(result)
    ]
    verdict = "EQUAL" if result["equivalent"] else "DIFFERENT"
    return [*out, *cause_lines(result), f"against single device: {verdict} within rtol {result['tolerance']['rtol']:g}"]


def statistical_table(comparison: dict) -> str:
    """The multi-seed TOST results (comparison["statistical"]) as fixed-width text."""
    lines = [
        f"multi-seed equivalence over seeds {comparison['seeds']} (Welch TOST, final test metrics)",
        f"{'a':<6} {'b':<6} {'metric':<10} {'diff':>9} {'90% CI':>22} {'p':>7}  verdict",
    ]
    for p in comparison["statistical"]:
        ci = f"[{p['ci_equivalence'][0]:+.4f}, {p['ci_equivalence'][1]:+.4f}]"
        lines.append(
            f"{p['a']:<6} {p['b']:<6} {p['metric']:<10} {p['difference']:>+9.4f} {ci:>22} "
            f"{p['p_tost']:>7.3f}  {p['verdict']}"
        )
    return "\n".join(lines)


TOL_USED_NOTE = (
    "tol used: the pair's largest |a − b| / (atol + rtol·scale) over steps, metrics and parameters (scale = "
    "max(|a|, |b|), per tensor for parameters); 1.0 = at the limit, above 1 divergent; inf = a non-finite value "
    "in one backend only; nan = a NaN in the differences; - = no per-step tolerance (native mode)."
)


def _used(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"


def verdict_table(comparison: dict, failed: list[str]) -> str:
    """A fixed-width table for the terminal."""
    header = (
        f"{'a':<6} {'b':<6} {'batch ids':<20} {'loss rel':>9} {'metrics rel':>11} {'params rel':>10} "
        f"{'tol used':>8}  first divergence"
    )
    lines = [header, "-" * len(header)]
    for r in pair_rows(comparison):
        lines.append(
            f"{r['a']:<6} {r['b']:<6} {r['batch_ids']:<20} {fmt(r['loss']):>9} {fmt(r['metrics']):>11} "
            f"{fmt(r['params']):>10} {_used(r['used']):>8}  {r['first'] or '-'}"
        )
    lines.append(TOL_USED_NOTE)
    lines.append("")
    lines.append("verdict: " + verdict_line(comparison, failed))
    return "\n".join(lines)


def markdown(spec: Spec, records: dict, comparison: dict, failed: dict[str, str], plot: str | None) -> str:
    """report.md: spec summary, versions, the verdict table, final metrics and the loss plot."""
    tol = comparison["tolerance"]
    out = [
        f"# Parity report: {spec.name}",
        "",
        f"**Verdict:** {verdict_line(comparison, sorted(failed))}",
        "",
        f"- dtype `{spec.dtype}`, mode `{spec.mode}`, seed {spec.seed}, data `{spec.data.name}`, "
        f"batch {spec.batching.batch_size} (last batch `{spec.batching.last_batch}`), "
        f"optimizer `{spec.optimizer.name}` lr {spec.optimizer.lr}, "
        f"dropout {spec.regularization.dropout}, epochs {spec.train.epochs}",
        f"- tolerance: rtol {tol['rtol']:g}, atol {tol['atol']:g}: {tol['why']}",
        "",
    ]
    out += [f"> {w}" for w in banding_warnings(spec, records)]
    out += [f"> {line}" for line in cause_lines(comparison)]
    if "against_single" in comparison:
        out += ["", "## Against the single-device twin", ""]
        out += [f"- {line}" for line in against_single_lines(comparison["against_single"])]
    out += ["", "## Backends", "", "| backend | device | versions | steps | train s |", "|---|---|---|---|---|"]
    for name, (rec, _) in records.items():
        versions = ", ".join(f"{k} {v}" for k, v in rec["versions"].items())
        out.append(f"| {name} | {rec['device']} | {versions} | {len(rec['steps'])} | {rec['timing']['train_s']:.2f} |")
    for name, message in sorted(failed.items()):
        out.append(f"| {name} | - | {message} | - | - |")
    out += [
        "",
        "## Agreement (max relative difference per pair)",
        "",
        "| a | b | batch ids | per-step loss | epoch metrics | final params | tolerance used | first divergence |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in pair_rows(comparison):
        out.append(
            f"| {r['a']} | {r['b']} | {r['batch_ids']} | {fmt(r['loss'])} | {fmt(r['metrics'])} | "
            f"{fmt(r['params'])} | {_used(r['used'])} | {r['first'] or '-'} |"
        )
    out += ["", TOL_USED_NOTE]
    found = comparison.get("nonfinite") or {}
    if found:
        out += [
            "",
            "## Non-finite training",
            "",
            f"{nonfinite_phrase(comparison).capitalize()}. Non-finite values are compared as values: two backends "
            "agree there only when both hold the same non-finite value at the same steps; the plot leaves those "
            "points out.",
            "",
            "| backend | first non-finite step | loss value there | first non-finite epoch | final params |",
            "|---|---|---|---|---|",
        ]
        for name, f in found.items():
            out.append(
                f"| {name} | {f.get('step', '-')} | {f.get('value', '-')} | {f.get('epoch', '-')} | "
                f"{', '.join(f.get('params', [])) or 'finite'} |"
            )
    out += [
        "",
        "## Final epoch metrics",
        "",
        "| backend | train loss | train acc | test loss | test acc |",
        "|---|---|---|---|---|",
    ]
    for name, (rec, _) in records.items():
        e = rec["epochs"][-1]
        out.append(
            f"| {name} | {e['train_loss']:.10g} | {e['train_acc']:.6g} | {e['test_loss']:.10g} | {e['test_acc']:.6g} |"
        )
    if "statistical" in comparison:
        out += [
            "",
            "## Multi-seed equivalence",
            "",
            f"Seeds {comparison['seeds']}; margins from the spec's "
            f"[equivalence] table: accuracy ±{spec.equivalence.acc_margin}, loss "
            f"±{spec.equivalence.loss_margin}, α = {spec.equivalence.alpha}.",
            "",
            "| a | b | metric | mean diff | (1−2α) CI | (1−α) CI | p (TOST) | verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in comparison["statistical"]:
            out.append(
                f"| {p['a']} | {p['b']} | {p['metric']} | {p['difference']:+.4f} | "
                f"[{p['ci_equivalence'][0]:+.4f}, {p['ci_equivalence'][1]:+.4f}] | "
                f"[{p['ci_difference'][0]:+.4f}, {p['ci_difference'][1]:+.4f}] | {p['p_tost']:.3g} | "
                f"{p['verdict']} |"
            )
    if plot:
        out += ["", f"![per-step loss]({plot})"]
    return "\n".join(out) + "\n"
