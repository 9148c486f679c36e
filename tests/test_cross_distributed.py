"""Split steps across the four backends through the real CLI (docs/design.md, "Data parallelism and
accumulation"): `parity run --against-single` proves each backend's data-parallel run equal to its single-device
twin, and names mean-of-means when the averaged part means part from it; a native data-parallel port records each
framework's split idiom.

Needs torch, tensorflow and jax together (tox -e parity).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backends import FRAMEWORKS, REFERENCE
from tests.support import needs_all_frameworks

pytestmark = [pytest.mark.cross, needs_all_frameworks]
ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "benchmarks" / "presets" / "iris-dp-ragged.toml"


def _run(tmp_path: Path, *sets: str) -> tuple[subprocess.CompletedProcess, dict]:
    argv = [sys.executable, "-m", "benchmarks", "run", str(PRESET), "--against-single", "--quiet"]
    argv += ["--out", str(tmp_path / "out"), "--set", "train.epochs=2", *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    comparison = json.loads((tmp_path / "out" / "comparison.json").read_text(encoding="utf-8"))
    return proc, comparison


def test_global_mean_equals_one_device_on_every_backend(tmp_path):
    proc, comparison = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert comparison["equivalent"] and comparison["against_single"]["equivalent"]
    backends = {p["a"] for p in comparison["against_single"]["pairs"]}
    assert backends == {REFERENCE, *FRAMEWORKS}
    worst = max(p["max_rel_diff"] for p in comparison["against_single"]["pairs"] if p["max_rel_diff"] is not None)
    assert worst <= 1e-12, worst
    assert "against single device: EQUAL" in proc.stdout


def test_mean_of_means_is_named_at_the_ragged_step(tmp_path):
    proc, comparison = _run(tmp_path, 'batching.reduction="mean_of_means"')
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert comparison["equivalent"]  # the four backends agree with each other on the averaged reduction
    causes = comparison["against_single"]["causes"]
    assert {c["a"] for c in causes if c["trap"] == "mean-of-means"} == {REFERENCE, *FRAMEWORKS}
    for backend in (REFERENCE, *FRAMEWORKS):
        assert f"cause [mean-of-means] {backend} vs {backend}-single" in proc.stdout
    assert "right after ragged step 8" in proc.stdout


def test_a_native_data_parallel_port_names_its_split_traps(tmp_path):
    """123 training rows (test_fraction 0.18) on R = 2: torch's DistributedSampler pads each epoch to 124 rows, and
    tf's last global batch of 11 rows splits 6 + 5 under compute_average_loss(global_batch_size = 16)."""
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "benchmarks", "run", str(PRESET), "--quiet", "--out", str(out)]
    argv += ["--set", 'mode="native"', "--set", "train.epochs=3", "--set", "data.test_fraction=0.18"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # native, no seeds: no claim
    torch_steps = json.loads((out / "records" / "torch.json").read_text(encoding="utf-8"))["steps"]
    assert sum(s["batch_size"] for s in torch_steps if s["epoch"] == 1) == 124
    causes = {(c["a"], c["b"], c["trap"]) for c in json.loads((out / "comparison.json").read_text())["causes"]}
    assert ("numpy", "torch", "sampler-padding") in causes
    assert ("numpy", "tf", "average-loss-global-batch") in causes
    assert not any(trap == "mean-of-means" for *_, trap in causes)  # the padded sampler gives torch equal parts


@pytest.mark.parametrize("sync", [False, True])
def test_batch_norm_over_replicas_against_one_device(tmp_path, sync):
    """iris on R = 2 with a batch_norm layer, full steps: per-replica statistics (8 rows) part from one device's
    (16 rows) from step 1 and the cause line says why; synchronised ones equal it on every backend."""
    norm = '{kind="batch_norm", sync=' + str(sync).lower() + "}"
    layers = f'model.layers=[{{kind="dense", units=8, bias=false}}, {norm}, {{kind="relu"}}, {{kind="dense"}}]'
    proc, comparison = _run(tmp_path, layers, 'batching.last_batch="drop"')
    assert proc.returncode == (0 if sync else 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert comparison["equivalent"]  # the four backends agree with each other either way
    named = {c["a"] for c in comparison["against_single"]["causes"] if c["trap"] == "batch-norm-statistics"}
    assert named == (set() if sync else {REFERENCE, *FRAMEWORKS})
