"""The `parity` command line (docs/design.md, "Records" and "Exit codes").

    parity run [SPEC] [--backends torch,tf,jax] [--set key.path=value ...] [--out DIR]
    parity sweep PRESET [--full] [--workers N] [--out DIR]
    parity bench [SPEC] [--batch-sizes ...] [--backends ...] [--modes eager,compiled,fused] [--device cpu|gpu|auto]
    parity conformance [--frameworks torch,tf,jax] [--traps ID,...] [--out DIR]

Exit codes: 0 equivalent (or native mode, where no per-step claim is made), 1 divergent, 2 bad input (one line
naming the key or file, nothing written), 3 a backend failed or is not installed (the others still run and are
compared). For `conformance`, 1 means a measured framework behaviour no longer matches common/traps.py and 3 that
a framework is missing or a probe crashed (benchmarks/conformance.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from backends import FRAMEWORKS, REFERENCE
from benchmarks import conformance, plots, report
from benchmarks.bench import MODES as BENCH_MODES
from benchmarks.bench import bench_spec, parse_list, run_bench, write_outputs
from benchmarks.presets import list_presets
from benchmarks.runner import run_all
from benchmarks.sweep import run_sweep
from common import InputError, record
from common.batching import BatchPlan
from common.compare import compare
from common.datasets import load_dataset
from common.driver import model_layers
from common.explain import explain
from common.spec import Spec, load_spec
from common.stats import seed_equivalence
from common.tolerance import tolerance_for


class _Parser(argparse.ArgumentParser):
    """argparse that raises InputError (exit 2, one line) instead of printing usage and exiting."""

    def error(self, message):
        raise InputError(f"arguments: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="parity", description="Run one experiment on PyTorch, TensorFlow and JAX and compare.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="train a spec on every backend and compare with the numpy oracle")
    run.add_argument("spec", nargs="?", help="TOML spec file (default: the built-in iris experiment)")
    run.add_argument("--backends", default=",".join(FRAMEWORKS), help="comma-separated: torch,tf,jax")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    run.add_argument("--out", type=Path, help="output folder (default: runs/<spec name>)")
    run.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="K > 1: run seeds seed..seed+K-1 and test final metrics for equivalence (TOST)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    sweep = sub.add_parser("sweep", help="run a preset's sweep on every backend (resumable)")
    sweep.add_argument("preset", help=f"a preset name ({', '.join(list_presets())}) or a preset TOML file")
    sweep.add_argument("--full", action="store_true", help="full size (default: the reduced CI size)")
    sweep.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    sweep.add_argument("--out", type=Path, help="output folder (default: runs/sweeps/<preset>[-ci])")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    bench = sub.add_parser("bench", help="time loader, step and end-to-end throughput per backend and mode")
    bench.add_argument("spec", nargs="?", help="TOML spec (default: a 16384-row doughnuts MLP in float32)")
    bench.add_argument("--batch-sizes", default="32,128,1024")
    bench.add_argument("--backends", default=",".join(FRAMEWORKS))
    bench.add_argument("--modes", default="eager,compiled,fused")
    bench.add_argument("--device", default="auto", choices=("cpu", "gpu", "auto"))
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    bench.add_argument("--windows", type=int, default=10, help="timing windows (>= 10 for reported figures)")
    bench.add_argument("--budget", type=float, default=1.0, help="seconds of step timing per mode and batch size")
    bench.add_argument("--no-keras", action="store_true", help="skip the Keras fit peer")
    bench.add_argument("--out", type=Path, help="output folder (default: runs/bench)")
    conformance.add_arguments(
        sub.add_parser(
            "conformance", help="measure the trap catalogue on each installed framework (matrix in JSON + markdown)"
        )
    )
    return parser


def command_bench(args) -> int:
    spec = bench_spec(args.spec, args.overrides)
    backends = parse_backends(args.backends)
    sizes = parse_list(args.batch_sizes, "batch-sizes", kind=int)
    modes = parse_list(args.modes, "modes", allowed=BENCH_MODES)
    if args.windows < 2 or args.budget <= 0:
        raise InputError("--windows must be at least 2 and --budget positive")
    load_dataset(spec)
    out = args.out or Path("runs") / "bench"
    result = run_bench(spec, backends, sizes, modes, args.device, out, args.windows, args.budget, not args.no_keras)
    write_outputs(result, out)
    print((out / "bench.md").read_text(encoding="utf-8"))
    for note in result["notes"]:
        print(f"parity bench: {note}", file=sys.stderr)
    return 3 if result["notes"] else 0


def parse_backends(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FRAMEWORKS]
    if not names or unknown:
        raise InputError(
            f"--backends: unknown backend '{unknown[0] if unknown else text}' (choose from {', '.join(FRAMEWORKS)})"
        )
    return list(dict.fromkeys(names))


def _prepare_out(out: Path, backends: list[str]) -> Path:
    """Create the output folder and remove stale records of the backends about to run."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out '{out}': exists and is not a folder")
    records_dir = out / "records"
    for name in backends:
        for suffix in (".json", ".npz"):
            (records_dir / f"{name}{suffix}").unlink(missing_ok=True)
    for stale in ("comparison.json", "report.md", "loss.png"):
        (out / stale).unlink(missing_ok=True)
    records_dir.mkdir(parents=True, exist_ok=True)
    return records_dir


def _run_backends(spec: Spec, seeds: list[int], out: Path, backends: list[str], quiet: bool):
    """Run every backend over the seeds; returns ({seed: {backend: record}}, {failed backend: message})."""
    folders = {
        seed: out / "records" if len(seeds) == 1 else out / "seeds" / f"seed-{seed}" / "records" for seed in seeds
    }
    for folder in folders.values():
        _prepare_out(folder.parent, backends)
    jobs = [(replace(spec, seed=seed), folder) for seed, folder in folders.items()]
    results = run_all(backends, jobs, out, progress=not quiet)
    failed = {r.backend: r.message for r in results if not r.ok}
    for name, message in failed.items():
        print(f"parity: backend '{name}' failed: {message}", file=sys.stderr)
    runs = {
        seed: {b: record.read(folder, b) for b in backends if (folder / f"{b}.json").exists()}
        for seed, folder in folders.items()
    }
    return runs, failed


def command_run(args) -> int:
    spec = load_spec(args.spec, args.overrides)
    backends = parse_backends(args.backends)
    if args.seeds < 1:
        raise InputError(f"--seeds: {args.seeds} must be at least 1")
    data = load_dataset(spec)  # every input error surfaces before anything is written
    BatchPlan.from_spec(spec, data.train_x.shape[0], data.train_lengths)
    model_layers(spec, data)
    out = args.out or Path("runs") / spec.name
    if out.exists() and not out.is_dir():
        raise InputError(f"--out '{out}': exists and is not a folder")
    everyone = [REFERENCE, *backends]
    seeds = list(range(spec.seed, spec.seed + args.seeds))
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps(spec.to_dict(), indent=1, sort_keys=True), encoding="utf-8")
    runs, failed = _run_backends(spec, seeds, out, everyone, args.quiet)
    records = runs[seeds[0]]

    comparison = compare(records, REFERENCE, tolerance_for(spec.dtype, spec.mode))
    comparison["failed"] = failed
    comparison["causes"] = explain(records)
    if len(seeds) > 1:
        finals = {
            b: {m: [runs[s][b][0]["epochs"][-1][m] for s in seeds if b in runs[s]] for m in ("test_acc", "test_loss")}
            for b in everyone
            if b not in failed
        }
        comparison["seeds"] = seeds
        comparison["statistical"] = seed_equivalence(finals, spec)
        comparison["equivalent"] = bool(comparison["statistical"]) and all(
            p["verdict"].startswith("equivalent") for p in comparison["statistical"]
        )
    (out / "comparison.json").write_text(json.dumps(comparison, indent=1), encoding="utf-8")
    plot = None
    if records:
        plots.loss_plot(records, REFERENCE, out / "loss.png")
        plot = "loss.png"
    (out / "report.md").write_text(report.markdown(spec, records, comparison, failed, plot), encoding="utf-8")
    for warning in report.banding_warnings(spec, records):
        print(warning)
    print(report.verdict_table(comparison, sorted(failed)))
    for line in report.cause_lines(comparison):
        print(line)
    if "statistical" in comparison:
        print(report.statistical_table(comparison))
    print(f"records, comparison.json, report.md and loss.png in {out}")
    if failed:
        return 3
    if "statistical" not in comparison and comparison["claim"].startswith("none"):
        return 0
    return 0 if comparison["equivalent"] else 1


def command_sweep(args) -> int:
    if args.workers < 1:
        raise InputError(f"--workers: {args.workers} must be at least 1")
    return run_sweep(args.preset, args.full, args.out, args.workers, not args.quiet)


COMMANDS = {"run": command_run, "sweep": command_sweep, "bench": command_bench, "conformance": conformance.command}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except InputError as exc:
        print(f"parity: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("parity: interrupted", file=sys.stderr)
        return 130
