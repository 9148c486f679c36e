"""`parity explain SPEC [--pair a,b] [--seeds K]`: why a native port's backends differ (docs/design.md, "parity
explain"). The variants and the arithmetic are common.attribution's; this module runs them and writes
explain.json, explain.md and explain.png.

Runs are grouped by backend: one worker process per backend trains every variant and seed of its jobs file (one
framework import each), and the backend processes run side by side on the executor (`--executor`, `--jobs`;
benchmarks.runner.run_all).
"""

from __future__ import annotations

import json
import sys
import time
from itertools import combinations
from pathlib import Path

from backends import FRAMEWORKS
from benchmarks import plots
from benchmarks.executor import Executor
from benchmarks.progress import JobBar
from benchmarks.runner import OutputFolder, absolute, run_all
from common import InputError, record
from common.attribution import METRICS, attribute, variant_spec, variants
from common.datasets import load_dataset
from common.driver import check_plan
from common.spec import Spec


def parse_pair(text: str | None) -> list[tuple[str, str]]:
    """`--pair a,b` as one pair; None: every pair of the frameworks."""
    if text is None:
        return list(combinations(FRAMEWORKS, 2))
    names = [n.strip() for n in text.split(",")]
    if len(names) != 2 or names[0] == names[1] or any(n not in FRAMEWORKS for n in names):
        raise InputError(f"--pair: {text!r} must name two different backends of {', '.join(FRAMEWORKS)}, e.g. torch,tf")
    return [(names[0], names[1])]


def _jobs(spec: Spec, runs, work: Path) -> dict[tuple[str, int], tuple[Spec, Path]]:
    return {
        (v.key, seed): (variant_spec(spec, v, seed), work / "records" / f"{v.key}-s{seed}")
        for v in runs
        for seed in v.seeds
    }


def _run(backends: list[str], jobs: dict, work: Path, quiet: bool, executor: Executor) -> dict[str, str]:
    """Every backend over every job on `executor`; returns {failed backend: message}."""
    for _, folder in jobs.values():
        folder.mkdir(parents=True, exist_ok=True)
    bar = JobBar(backends, [f"{key} seed {seed}" for key, seed in jobs], enabled=not quiet)
    results = run_all(backends, list(jobs.values()), work, executor=executor, display=bar)
    if not quiet:
        for r in results:
            state = "done" if r.ok else f"failed: {r.message}"
            print(f"parity: {r.backend} {state} ({len(jobs)} runs, {r.seconds:.0f} s)", file=sys.stderr)
    return {r.backend: r.message for r in results if not r.ok}


def explain_spec(
    spec: Spec, pairs: list[tuple[str, str]], seeds: int, out: Path | None, quiet: bool, executor: Executor
) -> int:
    if seeds < 2:
        raise InputError(f"--seeds: {seeds} must be at least 2 (the random idioms' spread is a standard deviation)")
    runs = variants(spec, pairs, seeds)
    data = load_dataset(spec)
    jobs_preview = {key: job[0] for key, job in _jobs(spec, runs, Path(".")).items()}
    for job in jobs_preview.values():  # every input error before anything is written
        check_plan(job, data)
    backends = list(dict.fromkeys(b for pair in pairs for b in pair))
    out = absolute(out or Path("runs") / f"{spec.name}-explain")
    started = time.perf_counter()
    folder = OutputFolder(out)
    with folder as work:
        (work / "spec.json").write_text(json.dumps(spec.to_dict(), indent=1, sort_keys=True), encoding="utf-8")
        jobs = _jobs(spec, runs, work)
        if not quiet:
            print(f"parity: explain {len(jobs)} runs per backend on {', '.join(backends)}", file=sys.stderr)
        failed = _run(backends, jobs, work, quiet, executor)
        records = {
            b: {key: record.read(folder, b)[0] for key, (_, folder) in jobs.items()}
            for b in backends
            if b not in failed
        }
        result = {
            "spec": spec.to_dict(),
            "seeds": seeds,
            "runs_per_backend": len(jobs),
            "failed": failed,
            "pairs": [attribute(spec, pair, runs, records) for pair in pairs if not set(pair) & set(failed)],
            "seconds": time.perf_counter() - started,
        }
        (work / "explain.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        (work / "explain.md").write_text(markdown(result), encoding="utf-8")
        plots.explain_plot(result, work / "explain.png")
        folder.commit()
    print(ranking_lines(result))
    print(f"explain.json, explain.md and explain.png in {out}")
    return 3 if failed else 0


def _fmt(value) -> str:
    return "–" if value is None else f"{value:+.3g}"


def ranking_lines(result: dict) -> str:
    """The printed ranking: per pair, the semantic idioms by share of the test-loss gap, then the noise floor."""
    lines = []
    for pair in result["pairs"]:
        gap = pair["native_gap"]
        lines.append(
            f"{pair['a']} vs {pair['b']}: native gap test_loss {gap['test_loss']['mean']:+.4g} ± "
            f"{gap['test_loss']['se']:.2g}, test_acc {gap['test_acc']['mean']:+.4g} ± {gap['test_acc']['se']:.2g}"
        )
        rows = {r["id"]: r for r in pair["idioms"]}
        for rank, idiom in enumerate(pair["ranking"]["semantic"], 1):
            r = rows[idiom]
            if "spread" in r:  # a random idiom whose draws move the mean
                step = f"random, shifts the mean beyond its spread {r['spread']['test_loss']:.3g}"
            else:
                step = f"from step {r['first_step']}" if r["first_step"] else "no per-step divergence"
            lines.append(
                f"  {rank}. {idiom} [semantic, {step}]: share of loss gap {_fmt(r['share']['test_loss'])}, "
                f"acc {_fmt(r['share']['test_acc'])}; fix: {r['fix']}"
            )
        for idiom in pair["ranking"]["noise"]:
            r = rows[idiom]
            lines.append(
                f"  ~ {idiom} [noise]: seed-to-seed spread test_loss {r['spread']['test_loss']:.3g}, "
                f"test_acc {r['spread']['test_acc']:.3g}"
            )
        lines.append(f"  unexplained: test_loss {_fmt(pair['unexplained']['test_loss'])}")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    lines = [f"# Parity explain: {result['spec']['name']}", ""]
    lines.append(
        f"{result['seeds']} seeds, {result['runs_per_backend']} runs per backend, {result['seconds']:.0f} s. "
        "gap = a − b of the final metric; on = what the idiom adds alone to exact mode; off = what removing it "
        'takes from native mode; share = mean of the two over the native gap (docs/design.md, "parity explain").'
    )
    for name, message in result["failed"].items():
        lines.append(f"\n- `{name}` failed: {message}")
    for pair in result["pairs"]:
        gap = pair["native_gap"]
        lines += ["", f"## {pair['a']} vs {pair['b']}", ""]
        lines.append(
            " ".join(
                f"native gap {m}: {gap[m]['mean']:+.4g} ± {gap[m]['se']:.2g} (n = {gap[m]['n']})." for m in METRICS
            )
        )
        lines += [
            "",
            "| idiom | class | touches | first step | on (loss) | off (loss) | share loss | share acc | "
            "spread loss | trap | fix |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        rows = {r["id"]: r for r in pair["idioms"]}
        for idiom in pair["ranking"]["semantic"] + pair["ranking"]["noise"]:
            r = rows[idiom]
            spread = f"{r['spread']['test_loss']:.3g}" if "spread" in r else ""
            first = r.get("first_step") or ("none" if "spread" not in r else "")
            lines.append(
                f"| {idiom} | {r['class']} | {', '.join(r['touches'])} | {first} | {_fmt(r['on']['test_loss'])} | "
                f"{_fmt(r['off']['test_loss'])} | {_fmt(r['share']['test_loss'])} | {_fmt(r['share']['test_acc'])} | "
                f"{spread} | `{r['trap']}` | {r['fix']} |"
            )
        lines.append("")
        lines.append(
            f"Unexplained by single idioms (interactions): test_loss {_fmt(pair['unexplained']['test_loss'])}, "
            f"test_acc {_fmt(pair['unexplained']['test_acc'])}."
        )
    return "\n".join(lines) + "\n"
