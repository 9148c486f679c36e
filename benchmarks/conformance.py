"""`parity conformance`: measure every trap of common.traps on the installed frameworks and write the matrix.

    parity conformance [--frameworks torch,tf,jax] [--traps ID,...] [--out DIR]

Each framework's probes run in their own subprocess (`python -m benchmarks.conformance_worker FW OUT.json`), so
that a missing or crashing framework leaves only its own column empty and global framework state never mixes.
The matrix has one row per trap: per framework the measured value and whether it is the catalogue's expected
one, whether the frameworks diverge (Trap.diverges), the effect size (Trap.effect_of) and the conversion exact mode
applies. It is written as DIR/conformance.json and DIR/conformance.md (default DIR: runs/conformance).

Cell statuses: "as expected", "changed" (measured ≠ expected: a framework upgrade changed the behaviour, or the
catalogue is wrong), "crashed" (the probe raised), "not installed", "n/a" (the framework does not take part).
Exit codes: 0 every probe ran and matched; 1 some measured behaviour differs from the catalogue; 2 bad input;
3 a framework is missing or a probe crashed (takes precedence over 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from common import InputError
from common.traps import CATALOGUE, FRAMEWORKS, TRAPS, Trap, matches

ROOT = Path(__file__).resolve().parent.parent
WORKER_TIMEOUT_S = 600


# --------------------------------------------------------------------------------------------- measuring
def run_worker(framework: str, trap_ids: list[str], timeout: float = WORKER_TIMEOUT_S) -> dict:
    """The worker's report for `framework`, or a "crashed" report when the subprocess died without one."""
    with tempfile.TemporaryDirectory(prefix="parity-conformance-") as tmp:
        out = Path(tmp) / f"{framework}.json"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.conformance_worker",
            framework,
            str(out),
            "--traps",
            ",".join(trap_ids),
        ]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {
                "framework": framework,
                "status": "crashed",
                "message": f"timed out after {timeout:g} s",
                "versions": {},
                "results": {},
            }
        if out.exists():
            return json.loads(out.read_text(encoding="utf-8"))
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        return {
            "framework": framework,
            "status": "crashed",
            "versions": {},
            "results": {},
            "message": lines[-1] if lines else f"exit {proc.returncode}",
        }


# ---------------------------------------------------------------------------------------------- the matrix
def _cell(trap: Trap, framework: str, report: dict | None) -> dict:
    if framework not in trap.expected:
        return {"status": "n/a"}
    expected = trap.expected[framework]
    if report is None or report.get("status") != "ok":
        status = "not installed" if report is None or report.get("status") == "not installed" else "crashed"
        return {"status": status, "expected": expected, "error": (report or {}).get("message", "")}
    result = report["results"].get(trap.id)
    if result is None:
        return {"status": "not run", "expected": expected}
    if not result["ok"]:
        return {"status": "crashed", "expected": expected, "error": result["error"]}
    ok = matches(expected, result["value"], trap.rtol, trap.atol)
    return {
        "status": "as expected" if ok else "changed",
        "measured": result["value"],
        "expected": expected,
        "seconds": result.get("seconds"),
    }


def build_matrix(reports: dict[str, dict | None], traps: list[Trap] | None = None) -> dict:
    """The conformance matrix from the workers' reports {framework: report}.

    A framework absent from `reports` was not run (its cells are "not installed" unless `traps` leaves it out).
    """
    traps = list(CATALOGUE) if traps is None else traps
    frameworks = {
        fw: {
            "status": reports[fw].get("status", "crashed"),
            "message": reports[fw].get("message", ""),
            "versions": reports[fw].get("versions", {}),
        }
        if fw in reports
        else {"status": "not run", "message": "", "versions": {}}
        for fw in FRAMEWORKS
    }
    rows = []
    for trap in traps:
        cells = {fw: _cell(trap, fw, reports.get(fw)) for fw in FRAMEWORKS}
        measured = {fw: c["measured"] for fw, c in cells.items() if "measured" in c}
        effect_size, effect = trap.effect_of(measured)
        rows.append(
            {
                "id": trap.id,
                "title": trap.title,
                "section": trap.section,
                "cells": cells,
                "diverges": trap.diverges(measured) if measured else None,
                "effect": effect,
                "effect_size": effect_size,
                "conversion": trap.conversion,
                "canonical": trap.canonical,
                "tolerance": {"rtol": trap.rtol, "atol": trap.atol},
                "note": trap.note,
            }
        )
    statuses = [(r["id"], fw, c["status"]) for r in rows for fw, c in r["cells"].items()]
    summary = {
        "traps": len(rows),
        "probes": sum(s != "n/a" for _, _, s in statuses),
        "as_expected": sum(s == "as expected" for _, _, s in statuses),
        "changed": [f"{i}/{fw}" for i, fw, s in statuses if s == "changed"],
        "crashed": [f"{i}/{fw}" for i, fw, s in statuses if s in ("crashed", "not run")],
        "not_installed": sorted({fw for _, fw, s in statuses if s == "not installed"}),
        "diverging": sum(r["diverges"] is True for r in rows),
    }
    matrix = {"frameworks": frameworks, "summary": summary, "traps": rows}
    matrix["exit_code"] = exit_code(matrix)
    return matrix


def exit_code(matrix: dict) -> int:
    """3 a framework missing or a probe crashed; else 1 a behaviour changed; else 0."""
    s = matrix["summary"]
    if s["crashed"] or s["not_installed"]:
        return 3
    return 1 if s["changed"] else 0


# ------------------------------------------------------------------------------------------------ markdown
def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.10g}"
    if isinstance(value, dict):
        return "; ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _cell_md(cell: dict) -> str:
    status = cell["status"]
    if status == "as expected":
        return _md(_fmt(cell["measured"]))
    if status == "changed":
        return _md(f"**CHANGED** {_fmt(cell['measured'])} (expected {_fmt(cell['expected'])})")
    if status == "crashed":
        return _md(f"**crashed**: {cell.get('error', '')}")
    return status


def markdown(matrix: dict) -> str:
    """The matrix as a markdown report: versions, one table row per trap, then the measurement notes."""
    s = matrix["summary"]
    lines = ["# Parity conformance matrix", ""]
    for fw, info in matrix["frameworks"].items():
        versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items()) or info["message"] or info["status"]
        lines.append(f"- **{fw}**: {_md(versions)}")
    lines += [
        "",
        f"{s['traps']} traps, {s['probes']} probes: {s['as_expected']} as expected, "
        f"{len(s['changed'])} changed, {len(s['crashed'])} crashed; "
        f"not installed: {', '.join(s['not_installed']) or 'none'}; {s['diverging']} traps diverge "
        "across frameworks.",
        "",
        "Cells show what each framework measured on these versions (n/a: it does not take part). "
        "**CHANGED** marks a measurement that no longer matches common/traps/catalogue.py. *Diverges*: the "
        "frameworks (or a framework and the canonical semantics) disagree.",
        "",
        f"| # | trap | {' | '.join(FRAMEWORKS)} | diverges | effect | exact-mode conversion |",
        "|---|---|" + "---|" * len(FRAMEWORKS) + "---|---|---|",
    ]
    for n, row in enumerate(matrix["traps"], 1):
        diverges = {True: "yes", False: "no", None: "–"}[row["diverges"]]
        cells = " | ".join(_cell_md(row["cells"][fw]) for fw in FRAMEWORKS)
        lines.append(
            f"| {n} | **{_md(row['title'])}** (`{row['id']}`; {row['section']}) | {cells} | {diverges} | "
            f"{_md(row['effect'])} | {_md(row['conversion'])} |"
        )
    notes = [(row["id"], row["note"]) for row in matrix["traps"] if row["note"]]
    if notes:
        lines += ["", "## Measurement notes", ""]
        lines += [f"- `{i}`: {_md(note)}" for i, note in notes]
    return "\n".join(lines) + "\n"


def summary_table(matrix: dict) -> str:
    """A short plain-text table for the terminal."""
    width = max(len(r["id"]) for r in matrix["traps"])
    out = [f"{'trap':{width}}  " + "  ".join(f"{fw:13}" for fw in FRAMEWORKS) + "  diverges"]
    for r in matrix["traps"]:
        out.append(
            f"{r['id']:{width}}  "
            + "  ".join(f"{r['cells'][fw]['status']:13}" for fw in FRAMEWORKS)
            + f"  {({True: 'yes', False: 'no', None: '-'})[r['diverges']]}"
        )
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- the command
def add_arguments(parser) -> None:
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated: torch,tf,jax")
    parser.add_argument("--traps", default="", help="comma-separated trap ids (default: the whole catalogue)")
    parser.add_argument("--out", type=Path, default=Path("runs") / "conformance", help="output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _parse(text: str, allowed, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise InputError(f"--{what}: unknown {what[:-1]} '{unknown[0]}' (choose from {', '.join(allowed)})")
    return list(dict.fromkeys(names))


def command(args) -> int:
    frameworks = _parse(args.frameworks, FRAMEWORKS, "frameworks")
    if not frameworks:
        raise InputError("--frameworks: no framework given")
    trap_ids = _parse(args.traps, list(TRAPS), "traps") or list(TRAPS)
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out '{args.out}': exists and is not a folder")
    traps = [TRAPS[i] for i in trap_ids]
    reports = {}
    for fw in frameworks:
        wanted = [t.id for t in traps if fw in t.expected]
        if not wanted:
            continue
        if not args.quiet:
            print(f"parity: probing {fw} ({len(wanted)} traps) ...", file=sys.stderr, flush=True)
        reports[fw] = run_worker(fw, wanted)
        if reports[fw]["status"] != "ok":
            print(f"parity: {fw}: {reports[fw]['status']}: {reports[fw]['message']}", file=sys.stderr)
    # frameworks left out with --frameworks are not run: their columns are n/a rather than "not installed"
    traps = [replace(t, expected={fw: e for fw, e in t.expected.items() if fw in frameworks}) for t in traps]
    traps = [t for t in traps if t.expected]
    matrix = build_matrix(reports, traps)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "conformance.json").write_text(json.dumps(matrix, indent=1), encoding="utf-8")
    (args.out / "conformance.md").write_text(markdown(matrix), encoding="utf-8")
    print(summary_table(matrix))
    s = matrix["summary"]
    print(
        f"{s['as_expected']}/{s['probes']} probes as expected, {len(s['changed'])} changed, "
        f"{len(s['crashed'])} crashed; conformance.json and conformance.md in {args.out}"
    )
    return matrix["exit_code"]
