"""Sweeps: resumable append-only results, no run lost or duplicated after a kill; presets at CI size."""

import csv
import importlib.util
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.presets import expand, list_presets, load_preset
from benchmarks.resultlog import ResultLog
from tests.support import needs_all_frameworks

ROOT = Path(__file__).resolve().parent.parent


def test_result_log_drops_partial_runs_and_lines(tmp_path):
    log = ResultLog(tmp_path / "r.csv", ["run_key", "epoch"], {"a": 2, "b": 2, "c": 2})
    log.append([{"run_key": "a", "epoch": 1}, {"run_key": "a", "epoch": 2}])
    log.append([{"run_key": "b", "epoch": 1}])  # cut short: one of two rows
    with (tmp_path / "r.csv").open("a") as handle:
        handle.write("c,1\nc,")  # killed mid-line
    assert log.done_keys() == {"a"}
    assert (tmp_path / "r.csv").read_text().splitlines() == ["run_key,epoch", "a,1", "a,2"]


PRESETS = (
    "doughnuts-banding",
    "iris-dropout",
    "iris-l2",
    "iris-l1",
    "iris-minibatch",
    "digits-adam",
    "seq-rnn-batchsize",
    "digits-cnn-batchsize",
    "digits-cnn-last-batch",
    "digits-cnn-bn-traps",
    "iris-dp-ragged",
    "digits-accumulate",
)


def test_presets_expand_and_validate():
    assert set(list_presets()) >= set(PRESETS)
    for name in list_presets():
        for full in (False, True):
            raw, sweep, _ = load_preset(name, full)
            runs = expand(raw, sweep)
            assert runs and len({r.spec.name for r in runs}) == len(runs)
    raw, sweep, _ = load_preset("iris-dropout", True)
    assert [r.point["regularization.dropout"] for r in expand(raw, sweep)] == [i / 10 for i in range(10)]
    raw, sweep, _ = load_preset("digits-accumulate", False)  # a table value sets its keys together
    steps = [
        (r.spec.batching.batch_size, r.spec.batching.accumulate, r.spec.batching.reduction) for r in expand(raw, sweep)
    ]
    assert steps == [(32, 1, "global_mean"), (8, 4, "global_mean"), (8, 4, "mean_of_means")]


KILL_PRESET = """
name = "kill-test"
dtype = "float64"
[train]
epochs = 40
[batching]
batch_size = 4
[sweep]
grid = { "optimizer.lr" = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08] }
backends = []
"""


def _rows(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(
    "executor",
    [
        "local",
        pytest.param(
            "ray",
            marks=[
                pytest.mark.ray,
                pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed ('.[ray]')"),
                pytest.mark.xdist_group("ray"),
            ],
        ),
    ],
)
def test_killed_sweep_resumes_without_loss_or_duplicates(executor, tmp_path):
    """Killed (the whole process group: driver, workers, and a local Ray instance's processes) once 40 rows are in,
    then run again: every run once, with all its rows; what was finished before the kill is kept."""
    (tmp_path / "p.toml").write_text(KILL_PRESET)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "benchmarks", "sweep", str(tmp_path / "p.toml"), "--out", str(out), "--quiet"]
    cmd += ["--executor", executor, "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results = out / "results.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (results.exists() and len(_rows(results)) >= 40):
        time.sleep(0.05)
    import os
    import signal

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = Counter(r["run_key"] for r in _rows(results))
    assert 1 <= len(before) < 8, "the kill must land part-way through the sweep"
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0
    rows = _rows(results)
    counts = Counter(r["run_key"] for r in rows)
    assert len(counts) == 8 and set(counts.values()) == {40}
    assert all(
        Counter((r["run_key"], r["epoch"]) for r in rows)[k] == 1 for k in {(r["run_key"], r["epoch"]) for r in rows}
    )
    finished_first = {k for k, n in before.items() if n == 40}
    assert finished_first <= set(counts)  # nothing finished before the kill was lost


@pytest.mark.cross
@needs_all_frameworks
@pytest.mark.parametrize("preset", PRESETS)
def test_presets_run_at_ci_size_on_all_backends(preset, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "sweep", preset, "--out", str(tmp_path), "--quiet", "--workers", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _rows(tmp_path / "results.csv")
    assert {r["backend"] for r in rows} == {"numpy", "torch", "tf", "jax"}
    assert (tmp_path / f"{preset}.png").stat().st_size > 1000
    if load_preset(preset, False)[0].get("mode") == "native":
        return  # a native port is compared over seeds (tests/test_cross_images.py), not against the oracle
    # exact mode: every backend reproduces the oracle's final metrics
    final = {}
    for r in rows:
        final[(r["run_key"].split("|", 1)[1], r["epoch"], r["backend"])] = float(r["test_acc"])
    for (point, epoch, backend), acc in final.items():
        assert acc == pytest.approx(final[(point, epoch, "numpy")], abs=1e-9), (point, backend)


def test_a_preset_file_reads_as_its_spec():
    from benchmarks.presets import PRESET_DIR
    from common.spec import load_spec

    spec = load_spec(PRESET_DIR / "seq-rnn-batchsize.toml", ["batching.batch_size=5"])
    assert spec.model.kind == "rnn" and spec.sequence.buckets == (6, 12, 24)
    assert spec.batching.batch_size == 5 and "sweep" not in spec.to_dict()
