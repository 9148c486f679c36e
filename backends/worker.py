"""Run one backend over a list of jobs in this process: `python -m backends.worker BACKEND JOBS.json`.

JOBS.json is a list of {"spec": <resolved spec, JSON form>, "out": <absolute records folder>} (the worker runs with
the repository root as its working folder, so the caller resolves every path first); each spec is validated again
and read as a `common.spec.Spec` here, at the process boundary. Many jobs share one process so that
a framework is imported (and its thread pools built) once; before the first job, the host devices of the most
replicas any job asks for are reserved (`backends.<fw>.distributed.reserve_devices`). After each job's record
is written it prints
`done <job index>` on stdout (sweeps append results as they come). Exit codes: 0 done, 3 framework missing or a
job failed (stderr: `parity: backend 'B' failed on spec 'S':` then the traceback), 130 interrupted; the process ends
with `os._exit` once its output is flushed, skipping the interpreter's teardown.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from pathlib import Path

from backends import REFERENCE, REGISTRY, install_hint
from common import record
from common.datasets import load_dataset
from common.driver import train
from common.spec import Spec, typed, validate


def load_adapter(name: str):
    """Import the backend's adapter module; ImportError of its framework becomes a clear message."""
    module_name = REGISTRY[name].adapter
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(
            f"parity: backend '{name}' is not available ({exc.name or exc} not installed); "
            f"install it with: {install_hint(name)}"
        ) from None
    return module


def reserve_devices(name: str, jobs: list[dict]) -> None:
    """Before any job: a framework backend's `distributed.reserve_devices(R)` for the most replicas any job asks
    (host devices must be configured before the framework starts its runtime, once per process)."""
    replicas = max((job["spec"].get("distributed", {}).get("replicas", 1) for job in jobs), default=1)
    if replicas > 1 and name != REFERENCE:
        importlib.import_module(f"backends.{REGISTRY[name].package}.distributed").reserve_devices(replicas)


def run_job(module, name: str, spec: Spec, out: Path, progress: bool, write: bool = True, concurrent: int = 1) -> None:
    """Train `spec` on the backend `module` and write its record into `out` (not when `write` is False: a process
    of a multi-host run other than rank 0, backends.host); `concurrent`: the backend processes running side by side
    with this one included, recorded as `timing.concurrent` (1: timed alone)."""
    data = load_dataset(spec)
    adapter = module.make_adapter(spec)
    body = train(adapter, spec, data, progress=progress)
    body["timing"]["concurrent"] = concurrent
    if write:
        rec = record.build(name, adapter.versions(), adapter.device(), spec, body)
        record.write(out, rec, record.arrays(body, data))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backends.worker")
    parser.add_argument("backend", choices=sorted(REGISTRY))
    parser.add_argument("jobs", type=Path)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--concurrent", type=int, default=1, help="backend processes running side by side")
    args = parser.parse_args(argv)
    try:
        module = load_adapter(args.backend)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 3
    failed = 0
    jobs = json.loads(args.jobs.read_text(encoding="utf-8"))
    try:
        reserve_devices(args.backend, jobs)
        for index, job in enumerate(jobs):
            try:
                spec = typed(validate(job["spec"]))
                run_job(module, args.backend, spec, Path(job["out"]), args.progress, concurrent=args.concurrent)
                print(f"done {index}", flush=True)
            except Exception:  # one failed job must not lose the others; the traceback goes to the log
                failed += 1
                print(f"parity: backend '{args.backend}' failed on spec '{job['spec']['name']}':", file=sys.stderr)
                traceback.print_exc()
    except KeyboardInterrupt:
        return 130
    return 3 if failed else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # every record is written: the teardown would only free the framework's modules and threads (~1 s for torch, tf)
    os._exit(code)
