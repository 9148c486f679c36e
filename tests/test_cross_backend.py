"""Cross-backend equivalence through the real harness: one subprocess per backend, records on disk.

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
from tests.support import EXACT_MATRIX, divergences, matrix_spec, needs_all_frameworks, worst_rel, worst_tolerance_used

pytestmark = [
    pytest.mark.cross,
    needs_all_frameworks,
]
DTYPES = ("float64", "float32")


@pytest.fixture(scope="module")
def matrix_records(tmp_path_factory):
    """Every matrix case in both dtypes, each backend run once over all of them."""
    work = tmp_path_factory.mktemp("matrix")
    jobs = [(matrix_spec(case, dtype), work / dtype / case) for dtype in DTYPES for case in EXACT_MATRIX]
    results = run_all([REFERENCE, *FRAMEWORKS], jobs, work, progress=False)
    assert all(r.ok for r in results), [(r.backend, r.message) for r in results]
    return work


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(EXACT_MATRIX))
def test_all_backends_agree_with_the_oracle_at_every_step(matrix_records, case, dtype):
    folder = matrix_records / dtype / case
    records = {name: record.read(folder, name) for name in (REFERENCE, *FRAMEWORKS)}
    assert len(records[REFERENCE][0]["steps"]) >= 100
    comparison = compare(records, REFERENCE, tolerance_for(dtype, "exact"))
    print(
        f"{dtype} {case}: worst relative difference {worst_rel(comparison):.3g}, "
        f"tolerance used {worst_tolerance_used(comparison):.3g}"
    )
    assert divergences(comparison) == []
    ids = [[s["batch_ids"] for s in rec["steps"]] for rec, _ in records.values()]
    assert all(i == ids[0] for i in ids)


def _parity(tmp_path, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--quiet", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
    )


def test_default_run_writes_everything_and_is_equivalent(tmp_path):
    proc = _parity(tmp_path, "--out", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "EQUIVALENT" in proc.stdout
    for name in (REFERENCE, *FRAMEWORKS):
        assert (tmp_path / "a" / "records" / f"{name}.json").exists()
        assert (tmp_path / "a" / "records" / f"{name}.npz").exists()
    comparison = json.loads((tmp_path / "a" / "comparison.json").read_text())
    assert comparison["equivalent"] is True and comparison["tolerance"]["rtol"] == 1e-9
    assert {p["metric"] for p in comparison["pairs"]} >= {"loss", "batch_ids", "test_acc", "final/layer0.weight"}
    assert (tmp_path / "a" / "loss.png").stat().st_size > 1000
    assert "EQUIVALENT" in (tmp_path / "a" / "report.md").read_text()

    # two identical CPU runs give identical records (timing aside)
    proc = _parity(tmp_path, "--out", str(tmp_path / "b"))
    assert proc.returncode == 0
    for name in (REFERENCE, *FRAMEWORKS):
        (ra, na), (rb, nb) = (record.read(tmp_path / run / "records", name) for run in ("a", "b"))
        ra.pop("timing"), rb.pop("timing")
        assert ra == rb, name
        assert na.keys() == nb.keys() and all(np.array_equal(na[k], nb[k]) for k in na), name


def test_missing_framework_gives_exit_3_and_the_others_still_compare(tmp_path):
    blocker = tmp_path / "blocker" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named tensorflow', name='tensorflow')\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "blocker")}
    proc = _parity(tmp_path, "--out", str(tmp_path / "out"), "--set", "train.epochs=1", env=env)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "pip install" in proc.stderr and "'.[tf]'" in proc.stderr
    comparison = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert set(comparison["backends"]) == {"numpy", "torch", "jax"}
    assert not any(p["divergent"] for p in comparison["pairs"])


def test_divergence_exit_code_and_first_step(tmp_path):
    """Native mode has no per-step claim; an exact run compared with a native one diverges where masks first differ."""
    proc = _parity(tmp_path, "--out", str(tmp_path / "n"), "--set", 'mode="native"', "--set", "train.epochs=1")
    assert proc.returncode == 0 and "NO PER-STEP CLAIM" in proc.stdout
    exact = record.read(tmp_path / "n" / "records", "numpy")
    other = json.loads(json.dumps(exact[0]))
    other["steps"][3]["loss"] *= 1.0 + 1e-6
    comparison = compare({"numpy": exact, "torch": (other, exact[1])}, "numpy", tolerance_for("float64", "exact"))
    assert not comparison["equivalent"]
    bad = [p for p in comparison["pairs"] if p["divergent"]]
    assert [(p["metric"], p["first_divergent_step"]) for p in bad] == [("loss", 4)]


def test_tost_verdict_on_iris_in_native_mode(tmp_path):
    """Native mode over seeds: every backend pair gets a TOST verdict with intervals; the report shows them."""
    proc = _parity(
        tmp_path, "--out", str(tmp_path / "t"), "--seeds", "3", "--set", 'mode="native"', "--set", "train.epochs=3"
    )
    assert proc.returncode in (0, 1), proc.stderr
    comparison = json.loads((tmp_path / "t" / "comparison.json").read_text())
    assert comparison["seeds"] == [0, 1, 2]
    pairs = {(p["a"], p["b"], p["metric"]) for p in comparison["statistical"]}
    assert len(pairs) == 6 * 2  # 4 backends → 6 pairs, accuracy and loss each
    for p in comparison["statistical"]:
        assert p["verdict"] in (f"equivalent within ±{p['margin']:g}", "different", "inconclusive")
        lo, hi = p["ci_equivalence"]
        assert lo <= p["difference"] <= hi and p["n_a"] == p["n_b"] == 3
    assert comparison["equivalent"] == all(p["verdict"].startswith("equivalent") for p in comparison["statistical"])
    assert proc.returncode == (0 if comparison["equivalent"] else 1)
    seeds_on_disk = sorted(p.name for p in (tmp_path / "t" / "seeds").iterdir())
    assert seeds_on_disk == ["seed-0", "seed-1", "seed-2"]
    assert "Multi-seed equivalence" in (tmp_path / "t" / "report.md").read_text()
