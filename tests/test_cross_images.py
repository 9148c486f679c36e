"""The CNN across the four backends through the real harness (docs/design.md, "Images and BatchNorm"): exact mode
agrees with the oracle at every step, on the final parameters, on BatchNorm's running statistics and on every eval
metric, pad equals keep, and the native port of the traps preset is told apart with its traps named.

Needs torch, tensorflow and jax together (tox -e parity).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backends import FRAMEWORKS, REFERENCE
from benchmarks.runner import run_all
from common import record
from common.compare import compare
from common.tolerance import tolerance_for
from tests.support import CNN_RUNS, cnn_spec, divergences, needs_all_frameworks, worst_rel, worst_tolerance_used

pytestmark = [pytest.mark.cross, needs_all_frameworks]
ROOT = Path(__file__).resolve().parent.parent
CASES = [(run, dtype, last) for run in CNN_RUNS for dtype in ("float64", "float32") for last in ("keep", "pad")]


@pytest.fixture(scope="module")
def cnn_records(tmp_path_factory):
    """Every case, each backend process running all of them."""
    work = tmp_path_factory.mktemp("cnn")
    jobs = [
        (cnn_spec(run, dtype=dtype, batching={"last_batch": last}), work / f"{run}-{dtype}-{last}")
        for run, dtype, last in CASES
    ]
    results = run_all([REFERENCE, *FRAMEWORKS], jobs, work, progress=False)
    assert all(r.ok for r in results), [(r.backend, r.message) for r in results]
    return work


def _records(folder: Path) -> dict:
    return {name: record.read(folder, name) for name in (REFERENCE, *FRAMEWORKS)}


@pytest.mark.parametrize(("run", "dtype", "last"), CASES)
def test_every_backend_agrees_with_the_oracle_at_every_step(cnn_records, run, dtype, last):
    records = _records(cnn_records / f"{run}-{dtype}-{last}")
    assert len(records[REFERENCE][0]["steps"]) == 206  # 1438 rows at batch 7: 205 full batches and one of 3
    comparison = compare(records, REFERENCE, tolerance_for(dtype, "exact"))
    print(
        f"cnn {run} {dtype} {last}: worst relative difference {worst_rel(comparison):.3g}, "
        f"tolerance used {worst_tolerance_used(comparison):.3g}"
    )
    assert divergences(comparison) == []
    metrics = {p["metric"] for p in comparison["pairs"]}
    assert {"loss", "test_loss", "test_acc", "final/bn0.var", "final/bn1.mean", "final/conv1.weight"} <= metrics
    for name, (_, npz) in records.items():  # the running statistics moved: they were trained, not left at init
        assert not np.allclose(npz["final/bn1.var"], 1.0), name


@pytest.mark.parametrize("run", sorted(CNN_RUNS))
def test_pad_equals_keep_on_every_backend(cnn_records, run):
    keep, pad = _records(cnn_records / f"{run}-float64-keep"), _records(cnn_records / f"{run}-float64-pad")
    for name in (REFERENCE, *FRAMEWORKS):
        (rec_k, npz_k), (rec_p, npz_p) = keep[name], pad[name]
        assert [s["batch_ids"] for s in rec_k["steps"]] == [s["batch_ids"] for s in rec_p["steps"]]
        np.testing.assert_allclose(npz_p["losses"], npz_k["losses"], rtol=1e-9, atol=1e-12, err_msg=name)
        for key in (k for k in npz_k if k.startswith("final/")):
            np.testing.assert_allclose(npz_p[key], npz_k[key], rtol=1e-9, atol=1e-12, err_msg=f"{name} {key}")


def test_the_native_port_of_the_traps_preset_is_different_and_names_the_traps(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "run",
            str(ROOT / "benchmarks" / "presets" / "digits-cnn-bn-traps.toml"),
            "--seeds",
            "3",
            "--quiet",
            "--out",
            str(tmp_path / "traps"),
            "--set",
            "train.epochs=1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    comparison = json.loads((tmp_path / "traps" / "comparison.json").read_text())
    different = {(p["a"], p["b"]) for p in comparison["statistical"] if p["verdict"] == "different"}
    assert any("torch" in pair for pair in different), comparison["statistical"]
    for trap in ("bn-momentum-convention", "bn-eps-default", "bn-running-var", "flatten-order", "same-padding-stride2"):
        assert f"cause [{trap}]" in proc.stdout, proc.stdout
