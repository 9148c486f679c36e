"""`parity sweep PRESET`: run every grid point on every backend, resumably, with several worker processes.

Each task is one backend's worker process over a chunk of runs; it reports `done <i>` after each record, and the
run's rows (one per epoch) are appended to `results.csv` at once (benchmarks.resultlog). Re-running after an
interruption skips the runs already in the CSV and redoes the rest; nothing is lost or duplicated.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from backends import REFERENCE
from benchmarks import plots
from benchmarks.presets import Run, expand, load_preset
from benchmarks.resultlog import ResultLog
from benchmarks.runner import absolute, folder_lock, signal_message, stop
from common import InputError, record
from common.datasets import load_dataset
from common.driver import check_plan

METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


def run_key(backend: str, run: Run) -> str:
    return f"{backend}|{run.label}|seed={run.seed}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)


class Progress:
    """A text progress bar on stderr, one update per finished run."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.total, self.done, self.enabled = total, done, enabled
        self.lock = threading.Lock()
        self.show("")

    def show(self, last: str) -> None:
        if not self.enabled:
            return
        filled = int(30 * self.done / max(self.total, 1))
        print(
            f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} runs {last}", file=sys.stderr, flush=True
        )

    def advance(self, last: str) -> None:
        with self.lock:
            self.done += 1
            self.show(last)


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


def _run_task(
    backend: str,
    runs: list[Run],
    work: Path,
    log: ResultLog,
    keys: list[str],
    progress: Progress,
    write_lock: threading.Lock,
) -> int:
    jobs = [{"spec": r.spec.to_dict(), "out": str(work / "records" / _slug(f"{r.label},seed={r.seed}"))} for r in runs]
    jobs_file = work / "jobs" / f"{backend}-{_slug(runs[0].label)}-{runs[0].seed}.json"
    jobs_file.parent.mkdir(parents=True, exist_ok=True)
    jobs_file.write_text(json.dumps(jobs), encoding="utf-8")
    log_file = jobs_file.with_suffix(".log")
    with (
        log_file.open("w", encoding="utf-8") as err,
        subprocess.Popen(
            [sys.executable, "-m", "backends.worker", backend, str(jobs_file)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        ) as proc,
    ):
        try:
            for line in proc.stdout:
                if line.startswith("done "):
                    index = int(line.split()[1])
                    rec, _ = record.read(Path(jobs[index]["out"]), backend)
                    with write_lock:
                        log.append(_rows(backend, runs[index], rec, keys))
                    progress.advance(f"{backend} {runs[index].label}")
            proc.wait()
        except BaseException:
            stop(proc)
            raise
    killed = signal_message(proc.returncode)
    if killed:
        print(f"parity: sweep task {backend} ({runs[0].label}, ...): {killed}", file=sys.stderr)
    return proc.returncode


def run_sweep(preset: str, full: bool, out: Path | None, workers: int, show_progress: bool = True) -> int:
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
        return _sweep_into(out, name, runs, sweep, workers, show_progress)


def _sweep_into(out: Path, name: str, runs: list[Run], sweep, workers: int, show_progress: bool) -> int:
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
    progress = Progress(len(expected), len(expected) - sum(map(len, pending.values())), show_progress)
    chunks_per_backend = max(1, math.ceil(workers / len(backends)))
    tasks = []
    for backend, todo in pending.items():
        size = max(1, math.ceil(len(todo) / chunks_per_backend))
        tasks += [(backend, todo[i : i + size]) for i in range(0, len(todo), size)]
    write_lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        codes = list(pool.map(lambda t: _run_task(t[0], t[1], out, log, keys, progress, write_lock), tasks))
    rows = log.load()
    plots.sweep_plots(rows, keys, sweep, out, name)
    (out / "summary.md").write_text(plots.sweep_summary(rows, keys, name), encoding="utf-8")
    missing = len(expected) - len({r["run_key"] for r in rows})
    print(
        f"sweep {name}: {len(expected) - missing}/{len(expected)} runs in {out / 'results.csv'}; plots and "
        f"summary.md in {out}"
    )
    return 3 if missing or any(codes) else 0
