"""`parity bench` smoke test: tiny sizes, no thresholds (performance is measured, never asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench import bench_spec, markdown, ratios, rows_of
from common.datasets import load_dataset
from common.frameworks import REGISTRY
from tests.support import needs_all_frameworks

ROOT = Path(__file__).resolve().parent.parent


def test_ratios_from_rows_without_frameworks():
    def row(backend, kind, mode, median, items):
        return {
            "backend": backend,
            "kind": kind,
            "mode": mode,
            "batch_size": 32,
            "median_s": median,
            "items_per_call": items,
            "items_per_s": items / median,
            "iqr_s": 0.0,
            "first_call_s": 0.0,
        }

    def paired(kind, mode, **figures):
        """A paired-round row of benchmarks.bench_worker (`ratio` or `loader_overhead`) over 20 rounds."""
        return {"backend": "torch", "kind": kind, "mode": mode, "batch_size": 32, "rounds": 20, **figures}

    def overhead(mode, ms, ms_ci, share, share_ci):
        return paired("loader_overhead", mode, ms_per_epoch=ms, ms_ci=ms_ci, share=share, share_ci=share_ci)

    bench = {
        "batch_sizes": [32],
        "results": [
            {
                "backend": "torch",
                "rows": [
                    row("torch", "end_to_end", "eager", 0.010, 128),
                    row("torch", "end_to_end", "compiled", 0.005, 128),
                    row("torch", "step", "eager", 0.002, 32),
                    row("torch", "reference", "ref eager", 0.004, 128),
                    row("torch", "loader:naive", "-", 0.004, 128),
                    row("torch", "loader:fast", "-", 0.001, 128),
                    # every mode against every reference; the target is held to the strongest one's ratio
                    paired("ratio", "compiled", vs="ref compiled", median=1.2, ci=[1.1, 1.3], strongest=False),
                    # the paired per-round ratio, not the quotient of the medians (0.004 / 0.005 = 0.8)
                    paired("ratio", "compiled", vs="ref eager", median=0.75, ci=[0.7, 0.9], strongest=True),
                    paired("ratio", "eager", vs="ref compiled", median=0.4, ci=[0.38, 0.41], strongest=True),
                    # Keras fit in the same rounds: the best mode's paired ratio, its interval above 2
                    paired("vs_keras_fit", "compiled", vs="keras fit", median=4.5, ci=[4.1, 4.9]),
                    paired("vs_keras_fit", "eager", vs="keras fit", median=1.5, ci=[1.4, 1.6]),
                    overhead("eager", 1.5, [1.2, 1.8], 0.15, [0.12, 0.18]),
                    overhead("compiled", 0.4, [0.1, 0.7], 0.08, [0.02, 0.14]),
                ],
            },
        ],
    }
    (entry,) = ratios(bench)
    assert entry["best_mode"] == "compiled"
    assert (entry["vs_keras_fit"], entry["vs_keras_fit_ci"], entry["vs_keras_fit_verdict"]) == (
        4.5,
        [4.1, 4.9],
        "meets",
    )
    assert entry["compiled_vs_reference"] == 0.75 and entry["compiled_vs_reference_ci"] == [0.7, 0.9]
    assert (entry["compiled_reference"], entry["eager_reference"]) == ("ref eager", "ref compiled")
    # target ≥ 0.9: the interval [0.7, 0.9] reaches it (undecided), [0.38, 0.41] lies below it
    assert entry["compiled_vs_reference_verdict"] == "undecided" and entry["eager_vs_reference_verdict"] == "misses"
    assert (entry["eager_loader_share"], entry["eager_loader_ms"]) == (0.15, 1.5)
    # target ≤ 10% at batch 32: [12%, 18%] misses it, [2%, 14%] leaves it open
    assert entry["eager_loader_verdict"] == "misses" and entry["compiled_loader_verdict"] == "undecided"
    assert entry["naive_loader_slowdown"] == pytest.approx(4.0)
    bench |= {"spec": {"name": "mlp"}, "device": "cpu", "notes": [], "ratios": [entry]}
    report = markdown(bench, rows_of(bench))
    assert "| torch | 32 | compiled | ref compiled | 1.2 [1.1, 1.3] |" in report
    assert "| torch | 32 | compiled | ref eager (strongest) | 0.75 [0.7, 0.9] |" in report


def _bench(out, *args) -> dict:
    """`parity bench` ARGS at CI size (batch 32, two windows, three paired rounds, one thread, CPU) into `out`;
    its bench.json."""
    command = [sys.executable, "-m", "benchmarks", "bench", *args, "--batch-sizes", "32", "--windows", "2"]
    command += ["--budget", "0.02", "--rounds", "3", "--threads", "1", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "bench.json").read_text())


@pytest.mark.cross
@needs_all_frameworks
@pytest.mark.parametrize(
    ("workload", "timed"),
    # JAX's op-by-op eager compiles every primitive per bucket shape (27 s here): bucketed runs the compiled modes
    [("seq", ("eager", "compiled")), ("seq-bucketed", ("compiled",))],
)
def test_bench_sequence_workloads(tmp_path, workload, timed):
    """The RNN on token batches, padded to max_len or bucketed: the modes of every backend pass their equivalence
    check and are timed with their loader overhead and against the Keras fit peer (which pads the tokens once,
    masking zeros); fused modes and the feature-only references are noted, not timed; the FLOPs count the RNN's
    products per kept token."""
    modes = ",".join((*timed, "fused"))
    bench = _bench(tmp_path, "--workload", workload, "--set", "data.params.n=300", "--modes", modes)
    rows = [r for res in bench["results"] for r in res["rows"]]
    checks = [r for r in rows if r["kind"] == "equivalence"]
    for backend in ("torch", "tf", "jax"):
        mine = [r for r in rows if r["backend"] == backend]
        assert {(r["mode"], r["equivalent"]) for r in checks if r["backend"] == backend} == {
            (mode, True) for mode in timed
        }, backend
        notes = {r["mode"] for r in mine if r["kind"] == "note"}
        assert "fused" in notes and all(n.startswith("ref ") for n in notes - {"fused"}), backend
        for kind in ("end_to_end", "placed", "loader_overhead", "vs_keras_fit"):
            assert {r["mode"] for r in mine if r["kind"] == kind} == set(timed), (backend, kind)
        assert not [r for r in mine if r["kind"] in ("ratio", "reference")], backend
        peer = [r for r in rows if r["backend"] == f"keras[{REGISTRY[backend].keras_backend}]"]
        assert [r["kind"] for r in peer] == ["keras_fit"] and peer[0]["items_per_s"] > 0, backend
    data = load_dataset(bench_spec(None, ["data.params.n=300"], workload))
    tokens = np.minimum(data.train_lengths, 32).mean()  # both workloads cap rows at 32 tokens
    for res in (r for r in bench["results"] if r["backend"] in ("torch", "tf", "jax")):
        # embedding 64 → 16 (a gather), rnn 16 → 32 per token: 2·(16·32 + 32·32), dense 32 → 4: 2·32·4
        assert res["flops_per_sample"] == pytest.approx(3 * (2 * tokens * (16 * 32 + 32 * 32) + 2 * 32 * 4))
    assert "| compiled |" in (tmp_path / "bench.md").read_text()


@pytest.mark.cross
@needs_all_frameworks
@pytest.mark.parametrize(
    "workload",
    [
        ["--set", "data.params.n=512"],  # the doughnuts MLP, cut to 512 rows
        # digits images (conv → batch_norm → pools → dense, every reference on the images), cut to 180 training rows
        ["--workload", "cnn", "--set", "data.test_fraction=0.9"],
    ],
    ids=["mlp", "cnn"],
)
def test_bench_smoke_all_backends(tmp_path, workload):
    """Every mode and every reference variant of every backend passes its equivalence check before it is timed,
    with the Keras fit peer in each backend's paired rounds."""
    bench = _bench(tmp_path, *workload)
    rows = [r for res in bench["results"] for r in res["rows"]]
    assert {"torch", "tf", "jax", "keras[torch]", "keras[tensorflow]", "keras[jax]"} <= {r["backend"] for r in rows}
    checks = [r for r in rows if r["kind"] == "equivalence"]
    assert checks and all(r["equivalent"] for r in checks)
    for backend in ("torch", "tf", "jax"):
        kinds = {r["kind"] for r in rows if r["backend"] == backend}
        assert {"step", "end_to_end", "reference", "loader:fast"} <= kinds, backend
        modes = {r["mode"] for r in rows if r["backend"] == backend and r["kind"] == "end_to_end"}
        assert modes <= {r["mode"] for r in checks if r["backend"] == backend}, backend
        references = [r for r in rows if r["backend"] == backend and r["kind"] == "reference"]
        (strongest,) = [r["mode"] for r in references if r["strongest"]]
        assert {r["mode"] for r in references} <= {r["mode"] for r in checks if r["backend"] == backend}, backend
        ratios = [r for r in rows if r["backend"] == backend and r["kind"] == "ratio"]
        assert {r["mode"] for r in ratios} == modes, backend  # every timed mode against the strongest reference
        peer = [r for r in rows if r["backend"] == backend and r["kind"] == "vs_keras_fit"]
        assert {r["mode"] for r in peer} == modes and {r["vs"] for r in peer} == {"keras fit"}, backend
        for r in ratios + peer:  # paired over the 3 rounds (none capped at these sizes)
            assert r["rounds"] == 3 and r["ci"][0] <= r["median"] <= r["ci"][1], r
        assert {(r["mode"], r["vs"]) for r in ratios} == {(m, r["mode"]) for m in modes for r in references}, backend
        assert {(r["mode"], r["vs"]) for r in ratios if r["strongest"]} == {(m, strongest) for m in modes}, backend
        overheads = [r for r in rows if r["backend"] == backend and r["kind"] == "loader_overhead"]
        assert (
            {r["mode"] for r in overheads}
            == modes
            == {r["mode"] for r in rows if r["backend"] == backend and r["kind"] == "placed"}
        ), backend
        for r in overheads:
            assert r["rounds"] == 3 and r["share_ci"][0] <= r["share"] <= r["share_ci"][1] < 1.0, r
    assert {e["backend"] for e in bench["ratios"]} == {"torch", "tf", "jax"}
    for res in (r for r in bench["results"] if r["backend"] in ("torch", "tf", "jax")):  # MFU of every epoch row
        assert res["flops_per_sample"] > 0 and res["peak_flops_per_s"] > 0, res["backend"]
        epochs = [r for r in res["rows"] if r["kind"] in ("end_to_end", "placed", "reference", "keras_fit")]
        assert epochs and all(0 < r["mfu"] < 1 for r in epochs), res["backend"]
    settings = {res["backend"]: res["settings"] for res in bench["results"]}  # every pool pinned to --threads 1
    peers = {b: settings[b].pop("keras fit") for b in ("torch", "tf", "jax")}  # Keras in the worker's process
    assert [peers[b]["KERAS_BACKEND"] for b in ("torch", "tf", "jax")] == ["torch", "tensorflow", "jax"]
    assert {s["threads"]["torch_num_threads"] for s in settings["torch"].values()} == {1}
    assert {(s["threads"]["intra_op"], s["threads"]["inter_op"]) for s in settings["tf"].values()} == {(1, 1)}
    assert all("intra_op_parallelism_threads=1" in s["threads"]["XLA_FLAGS"] for s in settings["jax"].values())
    assert all("vs_keras_fit" in e for e in bench["ratios"])
    assert (tmp_path / "bench.png").stat().st_size > 1000 and (tmp_path / "bench_mfu.png").stat().st_size > 1000
    report = (tmp_path / "bench.md").read_text()
    assert "Ratios" in report and "against its targets" in report and "against every reference" in report
