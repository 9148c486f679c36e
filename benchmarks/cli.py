"""The `parity` command line (docs/design.md, "Records" and "Exit codes").

    parity run [SPEC] [--backends torch,tf,jax] [--set key.path=value ...] [--out DIR] [--seeds K]
               [--against-single] [--jobs N] [EXECUTOR]
    parity explain [SPEC] [--pair a,b] [--seeds K] [--set key.path=value ...] [--out DIR] [--jobs N] [EXECUTOR]
    parity sweep PRESET [--full] [--workers N] [--out DIR] [EXECUTOR]

EXECUTOR: [--executor local|ray] [--address HOST:PORT] [--gpus-per-task G] (docs/design.md, "Executors").
    parity bench [SPEC] [--batch-sizes ...] [--backends ...] [--modes eager,compiled,fused] [--device cpu|gpu|auto]
    parity conformance [--frameworks torch,tf,jax] [--traps ID,...] [--out DIR]
    parity presets

Exit codes: EXIT_CODES below (the `--help` epilog; README.md and docs/design.md, "Exit codes", say the same).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from backends import FRAMEWORKS, REFERENCE
from benchmarks import conformance, plots, report
from benchmarks.attribute import explain_spec, parse_pair
from benchmarks.bench import MODES as BENCH_MODES
from benchmarks.bench import WORKLOADS, bench_spec, parse_list, run_bench, write_outputs
from benchmarks.executor import Executor, cores
from benchmarks.executor import make as make_executor
from benchmarks.presets import describe, list_presets
from benchmarks.runner import OutputFolder, absolute, check_target, run_all
from benchmarks.single import against_single, twin_name
from benchmarks.sweep import run_sweep
from common import InputError, idioms, record
from common.compare import compare
from common.datasets import load_dataset
from common.distributed import Layout, single_device
from common.driver import check_plan
from common.explain import explain
from common.spec import Spec, load_spec
from common.stats import seed_equivalence
from common.tolerance import tolerance_for
from common.traps import CATALOGUE

EXIT_CODES = """exit codes:
  0  equivalent; native mode without --seeds (no per-step claim); `parity presets`
  1  a pair diverges; with --seeds (either mode), a pair not shown "equivalent" ("different" or "inconclusive");
     with --against-single, a backend that differs from its single-device twin
  2  bad input: spec, data, arguments, output folder (one line naming the key, file or folder; nothing written);
     `parity` with no command (prints this usage)
  3  a backend failed, was killed or is not installed (the others still run and are compared); no backend ran
  130  interrupted (Ctrl-C): the previous output folder is left as it was
  conformance: 1 a measured behaviour differs from the catalogue, 3 a framework missing or a probe crashed

output folders: `parity run` writes into a temporary sibling folder and moves it into place when complete; a
reused --out is replaced whole (a non-empty folder parity did not write is refused). A lock file beside the folder
(.NAME.lock) refuses a second run into the same folder (exit 2). Relative paths (--out, the spec, data.path given
with --set) are read from the folder parity is started in."""

EXPLAIN_SEEDS = 5
SET_HELP = (
    "override one spec key, e.g. --set optimizer.lr=0.1 --set batching.last_batch='\"drop\"' (TOML values; bare "
    "words are strings; repeatable)"
)


class _Parser(argparse.ArgumentParser):
    """argparse that raises InputError (exit 2, one line) instead of printing usage and exiting."""

    def error(self, message):
        raise InputError(f"arguments: {message}")


def add_executor_arguments(parser: argparse.ArgumentParser, jobs_flag: str, what: str) -> None:
    """`--jobs`/`--workers`, `--executor`, `--address`, `--gpus-per-task` (benchmarks.executor)."""
    parser.add_argument(jobs_flag, type=int, help=what)
    parser.add_argument(
        "--executor",
        default="local",
        help="where the worker processes run: local (processes here) or ray (Ray tasks: a local Ray instance, or "
        "the cluster at --address / RAY_ADDRESS)",
    )
    parser.add_argument("--address", help="a Ray cluster to use (default: RAY_ADDRESS, else a new local instance)")
    parser.add_argument(
        "--gpus-per-task", type=float, default=0.0, help="GPUs each framework task declares to Ray (num_gpus)"
    )


def executor(args, jobs: int | None) -> Executor:
    return make_executor(args.executor, jobs, args.address, args.gpus_per_task)


def out_folder(text: str) -> Path:
    """An --out value: a folder path, never empty (Path('') would be the current folder)."""
    if not text.strip():
        raise InputError("--out: must name a folder, not ''")
    return Path(text)


def check_name(name: str) -> None:
    """A spec `name` names the run (default folder runs/<name>); it is not a path."""
    bad = (
        not name.strip()
        or name in (".", "..")
        or any(sep in name for sep in ("/", "\\", os.sep, "\0"))
        or Path(name).is_absolute()
    )
    if bad:
        raise InputError(f"spec key 'name': {name!r} is not a name (no '/', '\\', '..' or empty; use --out for a path)")


def absolute_data_path(spec: Spec) -> Spec:
    """A relative data.path (given with --set) read from the caller's folder: workers run elsewhere."""
    if spec.data.path and not Path(spec.data.path).is_absolute():
        return replace(spec, data=replace(spec.data, path=str(absolute(spec.data.path))))
    return spec


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="parity",
        description="Run one experiment on PyTorch, TensorFlow and JAX and compare.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser(
        "run",
        help="train a spec on every backend and compare with the numpy oracle",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("spec", nargs="?", help="TOML spec file (default: the built-in iris experiment)")
    run.add_argument("--backends", default=",".join(FRAMEWORKS), help="comma-separated: torch,tf,jax")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help=SET_HELP)
    run.add_argument(
        "--out",
        type=out_folder,
        help="output folder, replaced whole when complete (default: runs/<spec name> in the current folder)",
    )
    run.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="K > 1: run seeds seed..seed+K-1 and test final metrics for equivalence (TOST)",
    )
    run.add_argument(
        "--against-single",
        action="store_true",
        help="a spec with distributed.replicas or batching.accumulate > 1: also run its single-device twin (the "
        "same rows per optimizer step) and compare every backend with its twin step by step",
    )
    add_executor_arguments(
        run,
        "--jobs",
        "backend processes at a time (default: the usable cores, or the Ray cluster's CPUs); 1: one after another, "
        "timed alone",
    )
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    explain = sub.add_parser(
        "explain", help="attribute the native-mode gap between backends to named idioms (explain.json/md/png)"
    )
    explain.add_argument("spec", nargs="?", help="TOML spec file (default: the built-in iris experiment)")
    explain.add_argument("--pair", help="two backends, e.g. torch,tf (default: every pair)")
    explain.add_argument("--seeds", type=int, default=EXPLAIN_SEEDS, help=f"seeds per random variant ({EXPLAIN_SEEDS})")
    explain.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help=SET_HELP
    )
    explain.add_argument("--out", type=out_folder, help="output folder (default: runs/<name>-explain)")
    add_executor_arguments(
        explain, "--jobs", "backend processes at a time (default: the usable cores, or the Ray cluster's CPUs)"
    )
    explain.add_argument("--quiet", action="store_true", help="no progress lines")
    sweep = sub.add_parser("sweep", help="run a preset's sweep on every backend (resumable)")
    sweep.add_argument("preset", help=f"a preset name ({', '.join(list_presets())}) or a preset TOML file")
    sweep.add_argument("--full", action="store_true", help="full size (default: the reduced CI size)")
    add_executor_arguments(
        sweep, "--workers", "worker processes at a time (default: 1 locally, the Ray cluster's CPUs with ray)"
    )
    sweep.add_argument(
        "--out", type=out_folder, help="output folder, resumed in place (default: runs/sweeps/<preset>[-ci])"
    )
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    bench = sub.add_parser("bench", help="time loader, step and end-to-end throughput per backend and mode")
    bench.add_argument("spec", nargs="?", help="TOML spec (default: the --workload)")
    bench.add_argument(
        "--workload",
        default="mlp",
        choices=tuple(WORKLOADS),
        help="built-in spec: mlp (16384-row doughnuts MLP), cnn (digits images CNN), seq (token RNN padded to "
        "max_len) or seq-bucketed (the same in length buckets); all float32",
    )
    bench.add_argument("--batch-sizes", default="32,1024")
    bench.add_argument("--backends", default=",".join(FRAMEWORKS))
    bench.add_argument("--modes", default="eager,compiled,fused")
    bench.add_argument("--device", default="auto", choices=("cpu", "gpu", "auto"))
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help=SET_HELP)
    bench.add_argument("--windows", type=int, default=10, help="timing windows (>= 10 for reported figures)")
    bench.add_argument("--budget", type=float, default=1.0, help="seconds of step timing per mode and batch size")
    bench.add_argument(
        "--rounds", type=int, default=20, help="paired rounds of end-to-end epochs (every mode and the reference)"
    )
    bench.add_argument(
        "--cap",
        type=float,
        default=10.0,
        help="seconds of end-to-end (and loader) timing per variant and batch size, at most",
    )
    bench.add_argument(
        "--threads", type=int, help="CPU threads of every framework's pools (default: the usable cores), recorded"
    )
    bench.add_argument("--no-keras", action="store_true", help="skip the Keras fit peer")
    bench.add_argument("--out", type=out_folder, help="output folder (default: runs/bench)")
    conformance.add_arguments(
        sub.add_parser(
            "conformance", help="measure the trap catalogue on each installed framework (matrix in JSON + markdown)"
        )
    )
    sub.add_parser("presets", help="list the sweep presets and the trap catalogue")
    return parser


def command_bench(args) -> int:
    if args.spec and args.workload != "mlp":
        raise InputError("--workload: give a spec file or a built-in workload, not both")
    spec = absolute_data_path(bench_spec(args.spec, args.overrides, args.workload))
    backends = parse_backends(args.backends)
    sizes = parse_list(args.batch_sizes, "batch-sizes", kind=int)
    modes = parse_list(args.modes, "modes", allowed=BENCH_MODES)
    if args.windows < 2 or args.budget <= 0:
        raise InputError("--windows must be at least 2 and --budget positive")
    if args.rounds < 2:
        raise InputError(f"--rounds: {args.rounds} must be at least 2")
    if args.cap <= 0:
        raise InputError(f"--cap: {args.cap:g} seconds must be positive")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads: {args.threads} must be at least 1")
    data = load_dataset(spec)
    for size in sizes:  # BatchNorm's batch statistics at every batch size, before anything runs
        check_plan(replace(spec, batching=replace(spec.batching, batch_size=size)), data)
    out = absolute(args.out or Path("runs") / "bench")
    check_target(out)
    result = run_bench(
        spec,
        backends,
        sizes,
        modes,
        args.device,
        out,
        args.windows,
        args.budget,
        not args.no_keras,
        args.rounds,
        args.cap,
        args.threads or cores(),
    )
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


def _run_backends(spec: Spec, seeds: list[int], work: Path, backends: list[str], quiet: bool, ex: Executor):
    """Run every backend over the seeds into the (fresh) folder `work`; returns ({seed: {backend: record}},
    {failed backend: message})."""
    folders = {
        seed: work / "records" if len(seeds) == 1 else work / "seeds" / f"seed-{seed}" / "records" for seed in seeds
    }
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    listing = [(replace(spec, seed=seed), folder) for seed, folder in folders.items()]
    # matplotlib (for loss.png) is imported on the core the first finished worker leaves free
    results = run_all(backends, listing, work, progress=not quiet, executor=ex, on_idle=plots.pyplot)
    failed = {r.backend: r.message for r in results if not r.ok}
    for name, message in failed.items():
        print(f"parity: backend '{name}' failed: {message}", file=sys.stderr)
    runs = {
        seed: {b: record.read(folder, b) for b in backends if (folder / f"{b}.json").exists()}
        for seed, folder in folders.items()
    }
    return runs, failed


def command_explain(args) -> int:
    spec = load_spec(args.spec, args.overrides)
    check_name(spec.name)
    pairs = parse_pair(args.pair)
    with executor(args, args.jobs) as ex:
        return explain_spec(absolute_data_path(spec), pairs, args.seeds, args.out, args.quiet, ex)


def command_run(args) -> int:
    spec = load_spec(args.spec, args.overrides)
    check_name(spec.name)
    spec = absolute_data_path(spec)
    backends = parse_backends(args.backends)
    if args.seeds < 1:
        raise InputError(f"--seeds: {args.seeds} must be at least 1")
    ex = executor(args, args.jobs)
    if args.against_single and not Layout.from_spec(spec).is_split:
        raise InputError(
            "--against-single: the spec's steps are not split (distributed.replicas = 1, batching.accumulate = 1); "
            "there is no single-device twin to compare with"
        )
    if args.against_single and args.seeds > 1:
        raise InputError("--against-single: a per-step comparison of one seed; drop --seeds")
    check_plan(spec, load_dataset(spec))  # every input error surfaces before anything is written
    out = absolute(args.out or Path("runs") / spec.name)
    folder = OutputFolder(out)
    with ex, folder as work:
        code = _run_into(spec, backends, args, work, ex)
        jobs_file = work / "jobs.json"
        jobs = json.loads(jobs_file.read_text(encoding="utf-8"))
        for job in jobs:  # the paths the records will have once the folder is in place
            job["out"] = str(out / Path(job["out"]).relative_to(work))
        jobs_file.write_text(json.dumps(jobs), encoding="utf-8")
        folder.commit()
    print(f"records, comparison.json, report.md and loss.png in {out}")
    return code


def _no_backend_ran(spec: Spec, work: Path, failed: dict[str, str]) -> int:
    """Every framework backend failed: no verdict (exit 3), never DIVERGENT."""
    comparison = {"equivalent": False, "claim": "none (no backend ran)", "failed": failed, "pairs": []}
    (work / "comparison.json").write_text(json.dumps(comparison, indent=1), encoding="utf-8")
    lines = [f"# Parity report: {spec.name}", "", "**Verdict:** NO VERDICT: no backend ran", ""]
    lines += [f"- `{name}` failed: {message}" for name, message in failed.items()]
    (work / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"verdict: NO VERDICT: no backend ran (failed: {', '.join(failed)})")
    return 3


def _run_into(spec: Spec, backends: list[str], args, work: Path, ex: Executor) -> int:
    everyone = [REFERENCE, *backends]
    seeds = list(range(spec.seed, spec.seed + args.seeds))
    (work / "spec.json").write_text(json.dumps(spec.to_dict(), indent=1, sort_keys=True), encoding="utf-8")
    runs, failed = _run_backends(spec, seeds, work, everyone, args.quiet, ex)
    records = runs[seeds[0]]
    if not any(b in records for b in backends):
        return _no_backend_ran(spec, work, failed)

    comparison = compare(records, REFERENCE, tolerance_for(spec.dtype, idioms.comparison(spec)))
    comparison["failed"] = failed
    comparison["causes"] = explain(records)
    if args.against_single:
        twin = single_device(spec)
        singles, twin_failed = _run_backends(twin, [twin.seed], work / "single", everyone, args.quiet, ex)
        failed.update({twin_name(b): message for b, message in twin_failed.items()})
        comparison["against_single"] = against_single(
            records, singles[twin.seed], tolerance_for(spec.dtype, idioms.comparison(spec))
        )
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
    (work / "comparison.json").write_text(json.dumps(comparison, indent=1), encoding="utf-8")
    plot = None
    if records:
        plots.loss_plot(records, REFERENCE, work / "loss.png", comparison)
        plot = "loss.png"
    (work / "report.md").write_text(report.markdown(spec, records, comparison, failed, plot), encoding="utf-8")
    for warning in report.banding_warnings(spec, records) + report.nonfinite_warnings(comparison):
        print(warning)
    print(report.verdict_table(comparison, sorted(failed)))
    for line in report.cause_lines(comparison):
        print(line)
    if "statistical" in comparison:
        print(report.statistical_table(comparison))
    if idioms.statistical(spec):
        again = [
            "parity",
            "explain",
            *([args.spec] if args.spec else []),
            *[a for o in args.overrides for a in ("--set", o)],
        ]
        print(f"hint: `{shlex.join(again)}` attributes the gap between the backends to named idioms")
    if "against_single" in comparison:
        print("\n".join(report.against_single_lines(comparison["against_single"])))
    if failed:
        return 3
    if "against_single" in comparison and not comparison["against_single"]["equivalent"]:
        return 1
    if "statistical" not in comparison and comparison["claim"].startswith("none"):
        return 0  # native mode without seeds: no claim
    return 0 if comparison["equivalent"] else 1  # with seeds, "inconclusive" is not "equivalent": 1


def command_sweep(args) -> int:
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers: {args.workers} must be at least 1")
    with executor(args, args.workers or (1 if args.executor == "local" else None)) as ex:
        return run_sweep(args.preset, args.full, args.out, ex, not args.quiet)


def command_presets(args) -> int:
    """The sweep presets (benchmarks/presets/*.toml, with their one-line description) and the trap catalogue."""
    names = list_presets()
    print("presets (parity sweep PRESET):")
    for name in names:
        print(f"  {name:<{max(map(len, names))}}  {describe(name)}".rstrip())
    print("traps (parity conformance --traps ID,...):")
    width = max(len(t.id) for t in CATALOGUE)
    for trap in CATALOGUE:
        print(f"  {trap.id:<{width}}  {trap.title}")
    return 0


COMMANDS = {
    "run": command_run,
    "explain": command_explain,
    "sweep": command_sweep,
    "bench": command_bench,
    "conformance": conformance.command,
    "presets": command_presets,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # `parity` alone: the usage and the exit codes
        print(build_parser().format_help())
        return 2
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except InputError as exc:
        print(f"parity: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("parity: interrupted", file=sys.stderr)
        return 130
