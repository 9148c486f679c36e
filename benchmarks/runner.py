"""Run each backend in its own subprocess (docs/design.md, "Architecture") and collect the records.

Separate processes keep global framework state apart (x64, thread pools, GPU pre-allocation), keep timings from
interfering, and let one backend crash without losing the others. Backends run one after another; each one's
progress lines are relayed to stderr as they come, and its full log is kept in `DIR/logs/<backend>.log`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common.spec import Spec


@dataclass
class BackendResult:
    backend: str
    returncode: int
    message: str  # the last meaningful stderr line when it failed

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_backend(backend: str, jobs_file: Path, log_file: Path, progress: bool = True) -> BackendResult:
    """`python -m backends.worker BACKEND JOBS` in a subprocess, relaying progress to stderr."""
    cmd = [sys.executable, "-m", "backends.worker", backend, str(jobs_file), "--progress"]
    lines = []
    with subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent
    ) as proc:
        for line in proc.stderr:
            lines.append(line)
            if progress and line.startswith(f"[{backend}]"):
                print(f"  {line.rstrip()}", file=sys.stderr, flush=True)
        proc.wait()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text("".join(lines), encoding="utf-8")
    meaningful = [l.strip() for l in lines if l.strip() and not l.startswith(f"[{backend}]")]
    missing = [l for l in meaningful if "is not available" in l]
    message = ""
    if proc.returncode:  # the install hint, else the exception's last line
        message = missing[0] if missing else (meaningful[-1] if meaningful else f"exit {proc.returncode}")
    return BackendResult(backend, proc.returncode, message)


def run_all(
    backends: list[str], specs_and_outs: list[tuple[Spec, Path]], work: Path, progress: bool = True
) -> list[BackendResult]:
    """Run every backend over the same jobs, one backend process at a time (the jobs file holds each spec's JSON
    form, backends.worker)."""
    work.mkdir(parents=True, exist_ok=True)
    jobs_file = work / "jobs.json"
    jobs = [{"spec": spec.to_dict(), "out": str(folder)} for spec, folder in specs_and_outs]
    jobs_file.write_text(json.dumps(jobs), encoding="utf-8")
    results = []
    for backend in backends:
        if progress:
            print(f"parity: running {backend} ...", file=sys.stderr, flush=True)
        results.append(run_backend(backend, jobs_file, work / "logs" / f"{backend}.log", progress))
    return results
