"""Benchmark one backend in this process: `python -m benchmarks.bench_worker BACKEND CONFIG.json OUT.json`.

Compile and warm-up are kept apart from the steady state: each mode's first exact-mode epoch (the equivalence
check, where tracing and compilation happen) is recorded as `first_epoch_s`, beside its steady-state end-to-end
epoch. For each batch size: every requested mode is first checked for equivalence against eager (per-step losses of one
exact-mode epoch within common.tolerance), then timed (common.timing): the step alone and each native loader alone
(once per batch size) in windows; then in paired rounds the end-to-end epoch of every mode (the adapter's
run_epoch with its loader), the same loop over inputs already on the device (`placed`), and the backend's
hand-fused reference loop. From the rounds (common.bootstrap, medians with bootstrap intervals): each mode's
throughput relative to the reference (`ratio` rows) and its loader overhead, end to end − placed, in ms per epoch
and as a share of the epoch (`loader_overhead` rows). Every epoch row also gets its FLOP/s and model FLOP
utilisation (common.flops, against the framework's GEMM peak). A mode that cannot run here (e.g. a CUDA graph
without a GPU) or that fails the equivalence check is recorded with a note, not timed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np

from backends.worker import load_adapter
from common.bootstrap import loader_overhead, median_interval, paired_ratio
from common.compare import compare_values
from common.datasets import load_dataset
from common.driver import model_layers
from common.flops import train_flops_per_sample
from common.spec import Spec, typed, validate
from common.timing import calls_for_budget, paired_rounds, time_calls
from common.tolerance import tolerance_for


def _module(backend: str, name: str):
    load_adapter(backend)  # a missing framework gives the install hint
    return importlib.import_module(f"backends.{backend}_backend.{name}")


def _timed(kind: str, mode: str, batch_size: int, timing, extra: dict | None = None) -> dict:
    return {"kind": kind, "mode": mode, "batch_size": batch_size, **timing.to_json(), **(extra or {})}


def bench_batch_size(
    backend: str,
    spec: Spec,
    data,
    modes: list[str],
    device: str,
    windows: int,
    budget_s: float,
    rounds: int,
    cap_s: float,
) -> tuple[list[dict], dict]:
    bench = _module(backend, "bench")
    batch_size = spec.batching.batch_size
    n_rows = data.train_x.shape[0]
    rows, settings = [], {}
    try:
        eager = bench.make_target(spec, data, "eager", device)
        started = time.perf_counter()
        reference_losses = np.asarray(eager.equivalence_losses(1), dtype=np.float64)
        eager_first_epoch_s = time.perf_counter() - started
    except Exception as exc:  # e.g. --device gpu where this framework sees no GPU: noted, nothing timed
        note = f"eager unavailable on {device}: {exc}".splitlines()[0]
        return [{"kind": "note", "mode": m, "batch_size": batch_size, "note": note} for m in modes], settings
    tol = tolerance_for(spec.dtype, "exact")
    epochs = {}  # mode → its target, whose epochs (with its loader, and placed) join the paired rounds
    for mode in modes:
        if mode not in bench.MODES:
            rows.append(
                {"kind": "note", "mode": mode, "batch_size": batch_size, "note": f"{backend} has no {mode} mode"}
            )
            continue
        try:
            target = eager if mode == "eager" else bench.make_target(spec, data, mode, device)
            started = time.perf_counter()
            losses = reference_losses if mode == "eager" else np.asarray(target.equivalence_losses(1), dtype=np.float64)
            first_epoch_s = eager_first_epoch_s if mode == "eager" else time.perf_counter() - started
        except Exception as exc:  # a mode this device cannot run: noted, the others go on
            rows.append(
                {
                    "kind": "note",
                    "mode": mode,
                    "batch_size": batch_size,
                    "note": f"{mode} unavailable: {exc}".splitlines()[0],
                }
            )
            continue
        check = compare_values(losses, reference_losses, list(range(1, len(losses) + 1)), tol)
        equivalent = not check.get("divergent", True)
        rows.append(
            {
                "kind": "equivalence",
                "mode": mode,
                "batch_size": batch_size,
                "equivalent": equivalent,
                "max_rel_diff": check["max_rel_diff"],
                "steps": len(losses),
                "first_epoch_s": first_epoch_s,
            }
        )
        if not equivalent:
            continue
        settings[mode] = target.settings()
        probe = time_calls(target.step, target.sync, batch_size, windows=2, calls_per_window=3, warmup=1)
        step = time_calls(
            target.step,
            target.sync,
            batch_size,
            windows=windows,
            calls_per_window=calls_for_budget(probe.median_s, budget_s, windows),
        )
        rows.append(_timed("step", mode, batch_size, step))
        epochs[mode] = target
        if mode == "eager":
            for loader in bench.LOADERS:
                rows.append(
                    _timed(
                        f"loader:{loader}",
                        "-",
                        batch_size,
                        time_calls(
                            lambda target=target, loader=loader: target.loader_epoch(loader),
                            target.sync,
                            n_rows,
                            windows=windows,
                            calls_per_window=1,
                        ),
                    )
                )
    reference = _module(backend, "reference_loop").make_reference(spec, data, device)
    variants = {REFERENCE: (reference.epoch, reference.sync)}
    for mode, target in epochs.items():
        variants |= {mode: (target.epoch, target.sync), f"{mode} placed": (target.placed_epoch, target.sync)}
    timed = paired_rounds(variants, rounds, cap_s)
    for mode in epochs:
        rows.append(_timed("end_to_end", mode, batch_size, timed.timing(mode, n_rows), _rounds(timed, mode, n_rows)))
        placed = f"{mode} placed"
        rows.append(_timed("placed", mode, batch_size, timed.timing(placed, n_rows), _rounds(timed, placed, n_rows)))
        ratio = paired_ratio(timed.seconds[REFERENCE], timed.seconds[mode])
        rows.append({"kind": "ratio", "mode": mode, "batch_size": batch_size, "vs": REFERENCE, **ratio})
        overhead = loader_overhead(timed.seconds[mode], timed.seconds[placed])
        rows.append({"kind": "loader_overhead", "mode": mode, "batch_size": batch_size, **overhead})
    rows.append(
        _timed("reference", REFERENCE, batch_size, timed.timing(REFERENCE, n_rows), _rounds(timed, REFERENCE, n_rows))
    )
    return rows, settings


REFERENCE = "hand-fused"  # the reference loop's name among the paired rounds' variants


def _rounds(timed, name: str, items: int) -> dict:
    """Whether variant `name` hit its cap, and the bootstrap interval of its samples/s (items over the interval of
    its median epoch time, common.bootstrap)."""
    lo, hi = median_interval([t for t in timed.seconds[name] if t is not None])["ci"]
    return {"capped": name in timed.capped, "items_per_s_ci": [items / hi, items / lo]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_worker")
    parser.add_argument("backend")
    parser.add_argument("config", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text(encoding="utf-8"))
    try:
        load_adapter(args.backend)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 3
    _module(args.backend, "bench").pin_threads(config["threads"])  # before the framework starts any work
    spec = typed(validate(config["spec"]))
    data = load_dataset(spec)
    rows, settings, failed = [], {}, 0  # settings: mode → the target's versions, device, threads, precision
    for batch_size in config["batch_sizes"]:
        sized = replace(spec, batching=replace(spec.batching, batch_size=batch_size))
        print(f"[{args.backend}] batch {batch_size}", file=sys.stderr, flush=True)
        try:
            more, found = bench_batch_size(
                args.backend,
                sized,
                data,
                config["modes"],
                config["device"],
                config["windows"],
                config["budget_s"],
                config["rounds"],
                config["cap_s"],
            )
            rows += [{"backend": args.backend, **r} for r in more]
            settings.update(found)
        except Exception:
            failed += 1
            traceback.print_exc()
    utilisation = model_flop_utilisation(args.backend, spec, data, config["device"], rows)
    args.out.write_text(
        json.dumps({"backend": args.backend, "settings": settings, "rows": rows, **utilisation}, indent=1),
        encoding="utf-8",
    )
    return 3 if failed else 0


def model_flop_utilisation(backend: str, spec: Spec, data, device: str, rows: list[dict]) -> dict:
    """Adds `flops_per_s` and `mfu` to every epoch row (end to end, placed, reference): samples/s × the stack's
    training FLOPs per sample, over the framework's peak (a large GEMM on the same device, dtype and threads;
    common.flops). Returns {"flops_per_sample", "peak_flops_per_s"}; the peak None where it cannot run here."""
    per_sample = train_flops_per_sample(model_layers(spec, data))
    try:
        peak = _module(backend, "bench").peak_flops(device, spec.dtype)
    except Exception as exc:  # e.g. --device gpu where this framework sees none: noted like an unavailable mode
        rows.append(
            {"backend": backend, "kind": "note", "mode": "peak", "batch_size": 0, "note": str(exc).splitlines()[0]}
        )
        peak = None
    for row in rows:
        if row["kind"] in ("end_to_end", "placed", "reference"):
            row["flops_per_s"] = row["items_per_s"] * per_sample
            row["mfu"] = row["flops_per_s"] / peak if peak else None
    return {"flops_per_sample": per_sample, "peak_flops_per_s": peak}


if __name__ == "__main__":
    sys.exit(main())
