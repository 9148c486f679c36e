"""One process of a data-parallel run launched past one machine: `python -m backends.host BACKEND SPEC OUT`
(docs/design.md, "Data parallelism and accumulation", "Beyond one machine").

The framework's own launcher starts it once per process and tells it who it is: torch, `torchrun` (RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT); tf, TF_CONFIG (MultiWorkerMirroredStrategy); jax, JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID (jax.distributed.initialize). `backends.<fw>.distributed.join_hosts(spec)`
joins that group before the framework does anything else and returns this process's rank (0: torch's rank 0, TF's
chief, JAX's process 0). Every process then trains the spec in lockstep, its collectives crossing the processes;
rank 0 alone writes the record into OUT, as `parity run` writes `records/<backend>`. Exit codes: 0 done, 2 bad
input (one line naming the key or file), 3 the framework missing or the run failed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path

from backends import REFERENCE, REGISTRY
from backends.worker import load_adapter, run_job
from common import InputError
from common.spec import load_spec


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backends.host")
    parser.add_argument("backend", choices=sorted(set(REGISTRY) - {REFERENCE}))
    parser.add_argument("spec", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except InputError as exc:
        print(f"parity: error: {exc}", file=sys.stderr)
        return 2
    try:
        module = load_adapter(args.backend)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 3
    try:
        hosts = importlib.import_module(f"backends.{REGISTRY[args.backend].package}.distributed")
        rank = hosts.join_hosts(spec)
        run_job(module, args.backend, spec, args.out, progress=False, write=rank == 0)
    except InputError as exc:
        print(f"parity: error: {exc}", file=sys.stderr)
        return 2
    except Exception:
        print(f"parity: backend '{args.backend}' failed on spec '{spec.name}':", file=sys.stderr)
        traceback.print_exc()
        return 3
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # the record is written: skip the interpreter's teardown, where a gloo group's C++ threads can abort a rank
    # after the run (seen under load with torchrun, also in a minimal torchrun + DDP script), failing the launcher
    os._exit(code)
