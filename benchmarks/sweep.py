"""`parity sweep PRESET`: run every grid point on every backend, resumably, on an executor (local or Ray).

Each task is one backend's worker process over a chunk of runs (benchmarks.executor); it reports `done <i>` after
each record, and the driver appends the run's rows (one per epoch) to `results.csv` at once (benchmarks.resultlog).
Re-running after an interruption skips the runs already in the CSV and redoes the rest; nothing is lost or
duplicated, whichever executor ran them.
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
from pathlib import Path

from backends import REFERENCE
from benchmarks import plots
from benchmarks.executor import Executor, Local, Task
from benchmarks.presets import Run, expand, load_preset
from benchmarks.progress import TaskBar
from benchmarks.resultlog import ResultLog
from benchmarks.runner import absolute, folder_lock
from common import InputError, record
from common.datasets import load_dataset
from common.driver import check_plan

METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


def run_key(backend: str, run: Run) -> str:
    return f"{backend}|{run.label}|seed={run.seed}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)


def _rows(backend: str, run: Run, rec: dict, keys: list[str]) -> list[dict]:
    rows = []
    for epoch in rec["epochs"]:
        row = {
            "run_key": run_key(backend, run),
            "backend": backend,
            **{k: run.point[k] for k in keys},
            "seed": run.seed,
            "epoch": epoch["epoch"],
            **{m: epoch[m] for m in METRICS},
        }
        row["gap"] = epoch["train_acc"] - epoch["test_acc"]
        rows.append(row)
    return rows


def _records(work: Path, run: Run) -> Path:
    return work / "records" / _slug(f"{run.label},seed={run.seed}")


def _task(backend: str, runs: list[Run], work: Path, executor: Executor) -> Task:
    """One worker process over a chunk of runs: its jobs file (under `work/jobs`) and its log beside it."""
    jobs = [{"spec": r.spec.to_dict(), "out": str(_records(work, r))} for r in runs]
    jobs_file = work / "jobs" / f"{backend}-{_slug(runs[0].label)}-{runs[0].seed}.json"
    jobs_file.parent.mkdir(parents=True, exist_ok=True)
    jobs_file.write_text(json.dumps(jobs), encoding="utf-8")
    return Task(backend, jobs_file, jobs_file.with_suffix(".log"), executor.gpus_for(backend))


def run_sweep(
    preset: str, full: bool, out: Path | None, executor: Executor | None = None, show_progress: bool = True
) -> int:
    """Run (or resume) a preset's sweep; returns 0, or 3 when a backend failed on some run."""
    raw, sweep, name = load_preset(preset, full)
    runs = expand(raw, sweep)
    datasets = {}
    for run in runs:  # input errors (data, batch statistics of every run's plan) surface before anything is written
        key = json.dumps(run.spec.data.to_dict(), sort_keys=True)
        if key not in datasets:
            datasets[key] = load_dataset(run.spec)
        check_plan(run.spec, datasets[key])
    out = absolute(out or Path("runs") / "sweeps" / f"{name}{'' if full else '-ci'}")
    with folder_lock(out, "--out"):  # one sweep at a time per folder; the folder itself is resumed in place
        return _sweep_into(out, name, runs, sweep, executor or Local(1), show_progress)


def _sweep_into(out: Path, name: str, runs: list[Run], sweep, executor: Executor, show_progress: bool) -> int:
    backends = [REFERENCE, *sweep.backends]
    keys = list(sweep.grid)
    columns = ["run_key", "backend", *keys, "seed", "epoch", *METRICS, "gap"]
    expected = {run_key(b, r): r.spec.train.epochs for r in runs for b in backends}
    out.mkdir(parents=True, exist_ok=True)
    log = ResultLog(out / "results.csv", columns, expected)
    try:
        done = log.done_keys()
    except ValueError as exc:
        raise InputError(f"--out '{out}': {str(exc).split(': ', 1)[-1]}") from None
    pending = {b: [r for r in runs if run_key(b, r) not in done] for b in backends}
    progress = TaskBar(len(expected), len(expected) - sum(map(len, pending.values())), "runs", show_progress)
    chunks_per_backend = max(1, math.ceil(executor.jobs / len(backends)))
    tasks, chunks = [], {}
    for backend, todo in pending.items():
        size = max(1, math.ceil(len(todo) / chunks_per_backend))
        for i in range(0, len(todo), size):
            tasks.append(_task(backend, todo[i : i + size], out, executor))
            chunks[tasks[-1].jobs_file] = todo[i : i + size]
    write_lock = threading.Lock()

    def on_line(task: Task, line: str) -> None:
        """A finished run (`done <i>`): its rows appended at once (the driver is the log's only writer)."""
        if line.startswith("done "):
            run = chunks[task.jobs_file][int(line.split()[1])]
            rec, _ = record.read(_records(out, run), task.backend)
            with write_lock:
                log.append(_rows(task.backend, run, rec, keys))
            progress.advance(f"{task.backend} {run.label}")

    with progress:
        results = executor.run(tasks, on_line=on_line)
    for task, result in zip(tasks, results, strict=True):
        if not result.ok:
            print(
                f"parity: sweep task {task.backend} ({chunks[task.jobs_file][0].label}, ...): {result.message}",
                file=sys.stderr,
            )
    rows = log.load()
    plots.sweep_plots(rows, keys, sweep, out, name)
    (out / "summary.md").write_text(plots.sweep_summary(rows, keys, name), encoding="utf-8")
    missing = len(expected) - len({r["run_key"] for r in rows})
    print(
        f"sweep {name}: {len(expected) - missing}/{len(expected)} runs in {out / 'results.csv'}; plots and "
        f"summary.md in {out}"
    )
    return 3 if missing or not all(r.ok for r in results) else 0
