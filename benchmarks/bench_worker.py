"""Benchmark one backend in this process: `python -m benchmarks.bench_worker BACKEND CONFIG.json OUT.json`.

Compile and warm-up are kept apart from the steady state: each mode's first exact-mode epoch (the equivalence
check, where tracing and compilation happen) is recorded as `first_epoch_s`, beside its steady-state end-to-end
epoch. For each batch size: every requested mode, and every reference variant of the backend
(common.benchtarget), is first checked for equivalence against eager (per-step losses of one exact-mode epoch
within common.tolerance, on the code path then timed), then timed (common.timing): the step alone and each native
loader alone (once per batch size) in windows; then in paired rounds the end-to-end epoch of every mode (the
adapter's run_epoch with its loader), the same loop over inputs already on the device (`placed`), every reference
variant, and (with `keras_peer`) Keras `fit` on this framework (benchmarks.keras_peer). From the rounds
(common.bootstrap, medians with bootstrap intervals): each mode's throughput relative to every reference (`ratio`
rows; `strongest` marks the one with the fastest median, which the target is held to) and to Keras fit
(`vs_keras_fit`), and its loader overhead, end to end − placed, in ms per epoch and as a share of the epoch
(`loader_overhead` rows). Every epoch row also gets its FLOP/s and model FLOP utilisation (common.flops, against
the framework's GEMM peak). A mode or reference that cannot run here (e.g. a CUDA graph without a GPU) or that
fails the equivalence check is recorded with a note, not timed.
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
from benchmarks.keras_peer import KerasFit, peer_name, use_backend
from common.bootstrap import loader_overhead, median_interval, paired_ratio
from common.compare import compare_values
from common.datasets import load_dataset
from common.driver import model_layers
from common.flops import train_flops_per_sample
from common.padding import kept_lengths
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
    keras_peer: bool = False,
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
                            warmup=0,  # the first call, timed apart, warms the pipeline up
                            cap_s=cap_s,
                        ),
                    )
                )
    references = _references(backend, spec, data, device, batch_size, reference_losses, tol, rows)
    variants = {name: (runner.epoch, runner.sync) for name, runner in references.items()}
    for mode, target in epochs.items():
        variants |= {mode: (target.epoch, target.sync), f"{mode} placed": (target.placed_epoch, target.sync)}
    peer = _keras_peer(backend, spec, data, batch_size, rows, settings) if keras_peer else None
    if peer is not None:
        variants[PEER] = (peer.epoch, peer.sync)
    timed = paired_rounds(variants, rounds, cap_s)
    strongest = min(references, key=lambda name: np.median(_ran(timed, name)), default=None)
    for mode in epochs:
        rows.append(_timed("end_to_end", mode, batch_size, timed.timing(mode, n_rows), _rounds(timed, mode, n_rows)))
        placed = f"{mode} placed"
        rows.append(_timed("placed", mode, batch_size, timed.timing(placed, n_rows), _rounds(timed, placed, n_rows)))
        for name in references:  # the strongest decides the target; the others say what bounds the mode
            ratio = paired_ratio(timed.seconds[name], timed.seconds[mode])
            row = {"kind": "ratio", "mode": mode, "batch_size": batch_size, "vs": name, "strongest": name == strongest}
            rows.append({**row, **ratio})
        if peer is not None:
            ratio = paired_ratio(timed.seconds[PEER], timed.seconds[mode])
            rows.append({"kind": "vs_keras_fit", "mode": mode, "batch_size": batch_size, "vs": PEER, **ratio})
        overhead = loader_overhead(timed.seconds[mode], timed.seconds[placed])
        rows.append({"kind": "loader_overhead", "mode": mode, "batch_size": batch_size, **overhead})
    for name in references:
        extra = {**_rounds(timed, name, n_rows), "strongest": name == strongest}
        rows.append(_timed("reference", name, batch_size, timed.timing(name, n_rows), extra))
    if peer is not None:
        rows.append(
            {
                "backend": peer_name(backend),
                **_timed("keras_fit", "fit", batch_size, timed.timing(PEER, n_rows), _rounds(timed, PEER, n_rows)),
            }
        )
    return rows, settings


PEER = "keras fit"  # the Keras peer's name among the paired rounds' variants


def _references(backend, spec, data, device, batch_size, eager_losses, tol, rows) -> dict:
    """Every reference variant of the backend (reference_loop.REFERENCES) that runs here and trains as eager does:
    {"ref <variant>": its runner}. Each is checked like a mode, its own per-step losses (a fresh runner's epoch,
    the timed code path) against eager's exact-mode losses; a spec with dropout cannot be checked (the references
    draw their own masks), which the row notes. A variant that cannot run here or trains differently is noted and
    not timed."""
    module = _module(backend, "reference_loop")
    unchecked = any(layer.kind == "dropout" for layer in model_layers(spec, data))
    out = {}
    for variant in module.REFERENCES:
        name = f"ref {variant}"
        row = {"kind": "equivalence", "mode": name, "batch_size": batch_size}
        try:
            runner = module.make_reference(spec, data, device, variant)
            started = time.perf_counter()
            losses = np.asarray(runner.equivalence_losses(1), dtype=np.float64)
            row["first_epoch_s"] = time.perf_counter() - started
        except Exception as exc:  # e.g. CUDA graphs without a GPU
            rows.append({**row, "kind": "note", "note": f"{name} unavailable: {exc}".splitlines()[0]})
            continue
        if unchecked:
            rows.append({**row, "equivalent": None, "note": "not checked: dropout draws the reference's own masks"})
        else:
            check = compare_values(losses, eager_losses, list(range(1, len(losses) + 1)), tol)
            row |= {"equivalent": not check.get("divergent", True), "max_rel_diff": check["max_rel_diff"]}
            rows.append({**row, "steps": len(losses)})
            if not row["equivalent"]:
                continue
        out[name] = runner
    return out


def _keras_peer(backend, spec, data, batch_size, rows, settings):
    """The Keras fit peer on this framework (benchmarks.keras_peer), or None with a note where Keras cannot run it."""
    try:
        peer = KerasFit(spec, data)
    except Exception as exc:  # Keras not installed in this env, or a layer it does not build
        note = f"Keras fit unavailable: {exc}".splitlines()[0]
        rows.append(
            {"backend": peer_name(backend), "kind": "note", "mode": "fit", "batch_size": batch_size, "note": note}
        )
        return None
    settings[PEER] = peer.settings
    return peer


def _ran(timed, name: str) -> list[float]:
    return [t for t in timed.seconds[name] if t is not None]


def _rounds(timed, name: str, items: int) -> dict:
    """Whether variant `name` hit its cap, and the bootstrap interval of its samples/s (items over the interval of
    its median epoch time, common.bootstrap)."""
    lo, hi = median_interval(_ran(timed, name))["ci"]
    return {"capped": name in timed.capped, "items_per_s_ci": [items / hi, items / lo]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_worker")
    parser.add_argument("backend")
    parser.add_argument("config", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text(encoding="utf-8"))
    if config.get("keras_peer"):
        use_backend(args.backend)  # before any framework (or Keras) is imported
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
                config.get("keras_peer", False),
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
    training FLOPs per sample (on sequence data at the mean kept tokens per row), over the framework's peak (a
    large GEMM on the same device, dtype and threads; common.flops). Returns {"flops_per_sample",
    "peak_flops_per_s"}; the peak None where it cannot run here."""
    seq = spec.sequence
    tokens = kept_lengths(data.train_lengths, seq.max_len, seq.buckets).mean() if data.is_sequence else 1.0
    per_sample = train_flops_per_sample(model_layers(spec, data), float(tokens))
    try:
        peak = _module(backend, "bench").peak_flops(device, spec.dtype)
    except Exception as exc:  # e.g. --device gpu where this framework sees none: noted like an unavailable mode
        rows.append(
            {"backend": backend, "kind": "note", "mode": "peak", "batch_size": 0, "note": str(exc).splitlines()[0]}
        )
        peak = None
    for row in rows:
        if row["kind"] in ("end_to_end", "placed", "reference", "keras_fit"):
            row["flops_per_s"] = row["items_per_s"] * per_sample
            row["mfu"] = row["flops_per_s"] / peak if peak else None
    return {"flops_per_sample": per_sample, "peak_flops_per_s": peak}


if __name__ == "__main__":
    sys.exit(main())
