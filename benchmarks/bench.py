"""`parity bench`: loader vs step throughput per backend, mode and batch size, with Keras `fit` as the peer.

Each backend runs in its own subprocess (benchmarks.bench_worker), one after another so that timings do not
interfere; Keras `fit` on that framework (benchmarks.keras_peer, KERAS_BACKEND set in the worker) runs in the same
process, interleaved in its paired rounds. Outputs in
DIR: bench.json (rows + settings), bench.csv, bench.png (samples/s against batch size, a panel per framework),
bench_mfu.png (model FLOP utilisation) and bench.md (tables and
the ratios: best mode vs Keras fit on the same backend, naive-loader slowdown, and per mode, from paired rounds
with bootstrap intervals and a verdict on each target, its throughput against the hand-fused reference and its
loader overhead). Ratios are only ever taken within one run.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from backends import FRAMEWORKS
from common import InputError
from common.bootstrap import against_target
from common.spec import Spec, apply_overrides, defaults, load_spec, typed, validate

MODES = ("eager", "compiled", "fused")
BENCH_SPEC = {
    "name": "bench-mlp",
    "dtype": "float32",
    "data": {"name": "doughnuts", "params": {"n": 16384, "noise": 0.2, "radii": [1.0, 2.0]}},
    "model": {"hidden": [32]},
    "optimizer": {"lr": 0.05, "momentum": 0.9},
}
CNN_BENCH_SPEC = {
    "name": "bench-cnn",
    "dtype": "float32",
    "data": {"name": "digits", "images": True},
    "model": {
        "layers": [
            {"kind": "conv2d", "filters": 16, "kernel": 3, "padding": "same"},
            {"kind": "batch_norm"},
            {"kind": "relu"},
            {"kind": "max_pool", "size": 2},
            {"kind": "conv2d", "filters": 32, "kernel": 3, "padding": "same", "activation": "relu"},
            {"kind": "global_avg_pool"},
            {"kind": "dense"},
        ]
    },
    "optimizer": {"name": "adam", "lr": 0.001},
}
SEQ_BENCH_SPEC = {
    "name": "bench-seq",
    "dtype": "float32",
    "data": {"name": "sequences", "params": {"n": 2048, "min_len": 4, "max_len": 32, "vocab": 64, "classes": 4}},
    "model": {"kind": "rnn", "embed_dim": 16, "hidden": [32]},
    "sequence": {"max_len": 32},
    "optimizer": {"name": "adam", "lr": 0.001},
}
SEQ_BUCKETED_SPEC = {**SEQ_BENCH_SPEC, "name": "bench-seq-bucketed", "sequence": {"buckets": [8, 16, 32]}}
WORKLOADS = {"mlp": BENCH_SPEC, "cnn": CNN_BENCH_SPEC, "seq": SEQ_BENCH_SPEC, "seq-bucketed": SEQ_BUCKETED_SPEC}
ROOT = Path(__file__).resolve().parent.parent


def bench_spec(path: str | None, overrides: list[str], workload: str = "mlp") -> Spec:
    """The benchmark's spec: a TOML file, or a built-in workload: `mlp`, the doughnuts MLP (16384 rows, 2-32-2,
    float32, SGD); `cnn`, a digits CNN (8×8×1 images: conv 16 → batch_norm → relu → max_pool → conv 32 →
    global_avg_pool → dense, float32, Adam); `seq`, an Elman RNN on 2048 synthetic token sequences of 4..32 tokens
    (embedding 16 → rnn 32 → dense 4, float32, Adam) padded to max_len 32 (one padded shape), and `seq-bucketed`,
    the same batched by length into buckets ≤ 8, ≤ 16, ≤ 32 (each batch padded to its bucket's bound).

    Token batches have no static epoch shape, so the fused modes note themselves unavailable on sequence specs
    (common.benchtarget)."""

    if path:
        return load_spec(path, overrides)
    return typed(validate(apply_overrides({**defaults(), **WORKLOADS[workload]}, overrides)))


def parse_list(text: str, what: str, allowed=None, kind=str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--{what}: cannot read '{text}'") from None
    bad = [v for v in values if (allowed is not None and v not in allowed) or (kind is int and v < 1)]
    if not values or bad:
        raise InputError(f"--{what}: invalid value '{bad[0] if bad else text}'")
    return values


def device_env(device: str) -> dict:
    """Environment for a subprocess: `cpu` hides GPUs from every framework."""
    env = dict(os.environ)
    if device == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    return env


def _subprocess(cmd: list[str], env: dict, log: Path) -> int:
    with log.open("w", encoding="utf-8") as err:
        return subprocess.run(cmd, cwd=ROOT, env=env, stdout=err, stderr=subprocess.STDOUT).returncode


def run_bench(
    spec: Spec,
    backends: list[str],
    batch_sizes: list[int],
    modes: list[str],
    device: str,
    out: Path,
    windows: int,
    budget_s: float,
    keras_peer: bool = True,
    rounds: int = 20,
    cap_s: float = 10.0,
    threads: int = 1,
) -> dict:
    out = Path(out).absolute()  # workers run with the repository root as their working folder
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "spec": spec.to_dict(),
        "batch_sizes": batch_sizes,
        "modes": modes,
        "device": device,
        "windows": windows,
        "budget_s": budget_s,
        "rounds": rounds,
        "cap_s": cap_s,
        "threads": threads,
        "keras_peer": keras_peer,
    }
    (out / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    results, notes = [], []
    jobs = [(b, [sys.executable, "-m", "benchmarks.bench_worker", b], device_env(device)) for b in backends]
    for name, cmd, env in jobs:
        print(f"parity bench: {name} ...", file=sys.stderr, flush=True)
        result_file = out / f"{name}.json"
        result_file.unlink(missing_ok=True)
        code = _subprocess([*cmd, str(out / "config.json"), str(result_file)], env, out / f"{name}.log")
        if result_file.exists():
            results.append(json.loads(result_file.read_text(encoding="utf-8")))
        if code:
            tail = (out / f"{name}.log").read_text(encoding="utf-8").strip().splitlines()[-1:] or ["no output"]
            notes.append(f"{name}: exit {code}: {tail[0]}")
    return {"spec": spec.to_dict(), "device": device, "batch_sizes": batch_sizes, "results": results, "notes": notes}


def rows_of(bench: dict) -> list[dict]:
    return [{"backend": r.get("backend", res["backend"]), **r} for res in bench["results"] for r in res["rows"]]


def _find(rows, backend, kind, mode, batch_size, **match):
    """The first row of this backend, kind, mode and batch size (and the `match` values), or None."""
    return next(
        (
            r
            for r in rows
            if r["backend"] == backend
            and r["kind"] == kind
            and r["mode"] == mode
            and r["batch_size"] == batch_size
            and all(r.get(k) == v for k, v in match.items())
        ),
        None,
    )


# Targets a mode's figures are held to (verdicts only where the interval decides; common.bootstrap.against_target):
# throughput ≥ 0.9 × its own framework's strongest reference; the loader's share of the epoch ≤ 5 % from batch 1024
# on, ≤ 10 % below it; the best mode ≥ 2 × Keras fit on the same backend.
REFERENCE_TARGET = 0.9
KERAS_TARGET = 2.0


def loader_target(batch_size: int) -> float:
    return 0.05 if batch_size >= 1024 else 0.10


def ratios(bench: dict) -> list[dict]:
    """Per backend and batch size, all from this one run: the best mode and its throughput against Keras fit (the
    peer's own process), and per mode the paired-round figures of benchmarks.bench_worker (throughput relative to
    the strongest reference, the loader's overhead) with their intervals and verdicts, and the naive loader's
    slowdown."""
    rows = rows_of(bench)
    out = []
    for backend in [b for b in FRAMEWORKS if any(r["backend"] == b for r in rows)]:
        for bs in bench["batch_sizes"]:
            e2e = {
                r["mode"]: r
                for r in rows
                if r["backend"] == backend and r["kind"] == "end_to_end" and r["batch_size"] == bs
            }
            if not e2e:
                continue
            best_mode = max(e2e, key=lambda m: e2e[m]["items_per_s"])
            entry = {
                "backend": backend,
                "batch_size": bs,
                "best_mode": best_mode,
                "best_samples_per_s": e2e[best_mode]["items_per_s"],
            }
            peer = _find(rows, backend, "vs_keras_fit", best_mode, bs)
            if peer:
                entry["vs_keras_fit"], entry["vs_keras_fit_ci"] = peer["median"], peer["ci"]
                entry["vs_keras_fit_verdict"] = against_target(peer, KERAS_TARGET)
            for mode, r in e2e.items():
                entry[f"{mode}_mfu"] = r.get("mfu")
                paired = _find(rows, backend, "ratio", mode, bs, strongest=True)
                if paired:
                    entry[f"{mode}_reference"] = paired["vs"]
                    entry[f"{mode}_vs_reference"] = paired["median"]
                    entry[f"{mode}_vs_reference_ci"] = paired["ci"]
                    entry[f"{mode}_vs_reference_verdict"] = against_target(paired, REFERENCE_TARGET)
                overhead = _find(rows, backend, "loader_overhead", mode, bs)
                if overhead:
                    share = {"ci": overhead["share_ci"], "rounds": overhead["rounds"]}
                    entry[f"{mode}_loader_share"] = overhead["share"]
                    entry[f"{mode}_loader_share_ci"] = overhead["share_ci"]
                    entry[f"{mode}_loader_ms"] = overhead["ms_per_epoch"]
                    entry[f"{mode}_loader_verdict"] = against_target(share, loader_target(bs), at_most=True)
            naive, fast = (_find(rows, backend, f"loader:{k}", "-", bs) for k in ("naive", "fast"))
            if naive and fast:
                entry["naive_loader_slowdown"] = naive["median_s"] / fast["median_s"]
            out.append(entry)
    return out


def write_outputs(bench: dict, out: Path) -> None:
    from benchmarks import plots

    rows = rows_of(bench)
    bench["ratios"] = ratios(bench)
    (out / "bench.json").write_text(json.dumps(bench, indent=1), encoding="utf-8")
    columns = [
        "backend",
        "kind",
        "mode",
        "batch_size",
        "items_per_s",
        "median_s",
        "iqr_s",
        "first_call_s",
        "first_epoch_s",
        "equivalent",
        "max_rel_diff",
        "note",
    ]
    with (out / "bench.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plots.bench_plot(rows, out / "bench.png")
    plots.bench_plot(rows, out / "bench_mfu.png", value="mfu")
    (out / "bench.md").write_text(markdown(bench, rows), encoding="utf-8")


def _num(value, fmt=".3g") -> str:
    return "-" if value is None else format(value, fmt)


def _interval(ratio: float | None, ci) -> str:
    """A paired ratio with its bootstrap interval: `0.93 [0.90, 0.95]`."""
    return "-" if ratio is None else f"{ratio:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]"


def markdown(bench: dict, rows: list[dict]) -> str:
    lines = [
        f"# Parity bench: {bench['spec']['name']} on {bench['device']}",
        "",
        "Median per call over windows (end to end: over paired rounds, every mode, reference and Keras fit once per "
        "round), IQR beside it; compile/first-call time apart. Samples/s = items per call / median. Mode / ref: "
        "the median of per-round throughput ratios, its 95% bootstrap interval in brackets.",
        "",
    ]
    settings = {res["backend"]: res.get("settings", {}) for res in bench["results"]}
    lines += ["## Settings", ""] + [f"- **{b}**: {json.dumps(s, sort_keys=True)}" for b, s in settings.items()]
    lines += [
        "",
        "## Timings",
        "",
        "| backend | kind | mode | batch | samples/s | median s | IQR s | first call s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "median_s" in r:
            lines.append(
                f"| {r['backend']} | {r['kind']} | {r['mode']} | {r['batch_size']} | "
                f"{r['items_per_s']:.4g} | {r['median_s']:.3g} | {r['iqr_s']:.2g} | "
                f"{r['first_call_s']:.3g} |"
            )
    lines += [
        "",
        "## Equivalence of each mode with eager (one exact-mode epoch); compile and warm-up apart",
        "",
        "The first epoch (the equivalence check: tracing, compilation, first touches, the driver's records) "
        "beside the same mode's steady-state epoch.",
        "",
        "| backend | mode | batch | equivalent | max rel diff | first epoch s | steady epoch s | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] in ("equivalence", "note"):
            steady = _find(rows, r["backend"], "end_to_end", r["mode"], r["batch_size"])
            lines.append(
                f"| {r['backend']} | {r['mode']} | {r['batch_size']} | {r.get('equivalent', '-')} | "
                f"{_num(r.get('max_rel_diff'))} | {_num(r.get('first_epoch_s'))} | "
                f"{_num(steady['median_s'] if steady else None)} | {r.get('note', '')} |"
            )
    lines += [
        "",
        "## Ratios (same run)",
        "",
        f"Best / Keras fit: paired rounds in the backend's own process, target ≥ {KERAS_TARGET:g}.",
        "",
        "| backend | batch | best mode | best samples/s | best / Keras fit | verdict | naive loader slowdown |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in bench["ratios"]:
        lines.append(
            f"| {e['backend']} | {e['batch_size']} | {e['best_mode']} | {e['best_samples_per_s']:.4g} | "
            f"{_interval(e.get('vs_keras_fit'), e.get('vs_keras_fit_ci'))} | {e.get('vs_keras_fit_verdict', '-')} | "
            f"{_num(e.get('naive_loader_slowdown'))} |"
        )
    lines += [
        "",
        "## Each mode against its targets (paired rounds)",
        "",
        f"Throughput / the framework's strongest reference (the fastest reference variant that trains as eager "
        f"does, named): the median of per-round ratios, its 95% bootstrap interval in "
        f"brackets, target ≥ {REFERENCE_TARGET:g}. Loader: end to end − the same loop over inputs already on the "
        "device, per epoch, and its share of the epoch, target ≤ 5% from batch 1024 on and ≤ 10% below. A verdict "
        "is given only where the interval decides it. MFU: samples/s × the stack's training FLOPs per sample (3 × "
        "the forward matrix products) over the framework's peak, a 1024² GEMM on the same device, dtype and threads.",
        "",
        *[
            f"- {res['backend']}: {res['flops_per_sample']:,.0f} FLOP per sample, peak "
            f"{_num(res['peak_flops_per_s'] and res['peak_flops_per_s'] / 1e9, '.4g')} GFLOP/s"
            for res in bench["results"]
            if "flops_per_sample" in res
        ],
        "",
        "| backend | batch | mode | reference | / reference | verdict | loader ms/epoch | loader share | verdict "
        "| MFU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in bench["ratios"]:
        for mode in MODES:
            if f"{mode}_mfu" not in e:  # not timed (unavailable here, or not equivalent)
                continue
            share, ci = e.get(f"{mode}_loader_share"), e.get(f"{mode}_loader_share_ci")
            lines.append(
                f"| {e['backend']} | {e['batch_size']} | {mode} | {e.get(f'{mode}_reference', '-')} | "
                f"{_interval(e.get(f'{mode}_vs_reference'), e.get(f'{mode}_vs_reference_ci'))} | "
                f"{e.get(f'{mode}_vs_reference_verdict', '-')} | {_num(e.get(f'{mode}_loader_ms'))} | "
                f"{'-' if share is None else f'{share:.1%} [{ci[0]:.1%}, {ci[1]:.1%}]'} | "
                f"{e.get(f'{mode}_loader_verdict', '-')} | {_num(e.get(f'{mode}_mfu'), '.2%')} |"
            )
    against = [r for r in rows if r["kind"] == "ratio"]
    if against:
        lines += [
            "",
            "## Each mode against every reference (paired rounds)",
            "",
            "The strongest reference sets the target above; the others say what bounds a mode (a compiled mode "
            "against the compiled reference, where compilation itself costs the framework).",
            "",
            "| backend | batch | mode | reference | / reference |",
            "|---|---|---|---|---|",
            *[
                f"| {r['backend']} | {r['batch_size']} | {r['mode']} | {r['vs']}"
                f"{' (strongest)' if r['strongest'] else ''} | {_interval(r['median'], r['ci'])} |"
                for r in against
            ],
        ]
    if bench["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in bench["notes"]]
    return "\n".join(lines) + "\n"
