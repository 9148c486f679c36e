"""Non-finite training (issue #10, category 2): NaN and ±inf are results, compared honestly, drawn without a crash
and reported (docs/design.md, "Records" and "Tolerances")."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import plots, report
from common import record
from common.compare import compare, compare_values
from common.spec import load_spec
from common.tolerance import FLOAT64_EXACT, NATIVE
from tests.support import installed

NAN, INF = float("nan"), float("inf")
STEPS = [1, 2, 3, 4]


def _rec(name, losses, final=None, test_loss=0.5):
    """A hand-made record: per-step losses, one epoch, one final parameter tensor."""
    rec = {
        "backend": name,
        "steps": [
            {"epoch": 1, "step": i + 1, "batch_ids": [i], "batch_size": 1, "loss": v} for i, v in enumerate(losses)
        ],
        "epochs": [{"epoch": 1, "train_loss": losses[-1], "train_acc": 0.5, "test_loss": test_loss, "test_acc": 0.5}],
    }
    npz = {
        "losses": np.array(losses, dtype=np.float64),
        "final/layer0.weight": np.array([1.0, -0.5, 0.25] if final is None else final),
    }
    return rec, npz


def test_both_nan_at_the_same_steps_agree_and_say_so():
    a = np.array([1.0, 0.5, NAN, NAN])
    out = compare_values(a, a.copy(), STEPS, FLOAT64_EXACT)
    assert not out["divergent"] and out["first_divergent_step"] is None
    assert out["nonfinite_agree"] and out["first_nonfinite"] == [3, 3]
    assert math.isnan(out["max_abs_diff"]) and out["max_abs_diff_finite"] == 0.0


def test_one_nan_is_divergent_at_its_step_and_never_a_zero_difference():
    a = np.array([1.0, 0.5, 0.25, 0.125])
    b = a.copy()
    b[2:] = NAN
    out = compare_values(a, b, STEPS, FLOAT64_EXACT)
    assert out["divergent"] and out["first_divergent_step"] == 3
    assert math.isnan(out["max_abs_diff"]) and math.isnan(out["max_rel_diff"])
    assert out["tolerance_used"] == INF and not out["nonfinite_agree"]


def test_nan_at_different_steps_is_divergent_at_the_first():
    a = np.array([1.0, 0.5, NAN, NAN])
    b = np.array([1.0, 0.5, 0.25, NAN])
    out = compare_values(a, b, STEPS, FLOAT64_EXACT)
    assert out["divergent"] and out["first_divergent_step"] == 3 and out["first_nonfinite"] == [3, 4]


def test_inf_against_minus_inf_is_divergent_with_an_infinite_difference():
    a = np.array([1.0, INF])
    out = compare_values(a, np.array([1.0, -INF]), [1, 2], FLOAT64_EXACT)
    assert out["divergent"] and out["first_divergent_step"] == 2 and out["max_abs_diff"] == INF


def test_the_same_inf_agrees_and_inf_against_finite_does_not():
    a = np.array([1.0, INF])
    assert not compare_values(a, a.copy(), [1, 2], FLOAT64_EXACT)["divergent"]
    out = compare_values(a, np.array([1.0, 1e300]), [1, 2], FLOAT64_EXACT)
    assert out["divergent"] and out["first_divergent_step"] == 2 and out["max_abs_diff"] == INF


def test_nan_in_a_final_parameter_is_reported_as_nan_not_zero():
    a = np.array([1.0, -0.5, 0.25])
    out = compare_values(a, np.array([1.0, NAN, 0.25]), [], FLOAT64_EXACT, tensor=True)
    assert out["divergent"] and out["first_divergent_step"] == 1
    assert math.isnan(out["max_rel_diff"]) and math.isnan(out["max_abs_diff"])


def test_native_mode_tolerance_used_is_absent_not_zero_with_nan():
    out = compare_values(np.array([1.0, NAN]), np.array([1.0, 2.0]), [1, 2], NATIVE)
    assert out["tolerance_used"] is None and out["divergent"] and math.isnan(out["max_rel_diff"])


def test_every_backend_nan_at_the_same_step_is_equivalent_but_the_verdict_says_it_diverged():
    losses = [1.0, 0.5, NAN, NAN]
    nan_final = [NAN, NAN, NAN]
    records = {n: _rec(n, losses, nan_final, test_loss=NAN) for n in ("numpy", "torch", "jax")}
    comparison = compare(records, "numpy", FLOAT64_EXACT)
    assert comparison["equivalent"]
    assert comparison["nonfinite"]["torch"] == {
        "step": 3,
        "value": "nan",
        "epoch": 1,
        "params": ["final/layer0.weight"],
    }
    line = report.verdict_line(comparison, [])
    assert line.startswith("EQUIVALENT") and "but training diverged to nan at step 3 in every backend" in line
    warnings = report.nonfinite_warnings(comparison)
    assert len(warnings) == 3 and all(w.startswith("WARNING non-finite: ") for w in warnings)
    assert "torch: training loss became nan at step 3" in warnings[1]


def test_one_backend_nan_is_divergent_and_the_table_prints_nan_not_zero():
    records = {
        "numpy": _rec("numpy", [1.0, 0.5, 0.25, 0.125]),
        "torch": _rec("torch", [1.0, 0.5, NAN, NAN], [1.0, NAN, 0.25]),
    }
    comparison = compare(records, "numpy", FLOAT64_EXACT)
    assert not comparison["equivalent"] and list(comparison["nonfinite"]) == ["torch"]
    line = report.verdict_line(comparison, [])
    assert "first differ in loss at step 3" in line and "torch nan at step 3 (numpy finite)" in line
    table = report.verdict_table(comparison, [])
    row = next(r for r in table.splitlines() if r.startswith("numpy  torch"))
    assert "0.00e+00" not in row and row.split()[3:7] == ["nan", "nan", "nan", "inf"]
    assert report.TOL_USED_NOTE in table


def test_report_md_names_the_backend_and_its_first_nonfinite_step(tmp_path):
    records = {
        "numpy": _rec("numpy", [1.0, 0.5, 0.25, 0.125]),
        "torch": _rec("torch", [1.0, 0.5, INF, NAN]),
    }
    comparison = compare(records, "numpy", FLOAT64_EXACT)
    comparison["failed"] = {}
    for rec, _ in records.values():
        rec.update(versions={}, device="cpu", timing={"train_s": 0.1})
        rec["epochs"][0]["eval_batch_sizes"] = {"train": [4], "test": [4]}
    text = report.markdown(load_spec(None, []), records, comparison, {}, "loss.png")
    assert "## Non-finite training" in text and "| torch | 3 | inf | 1 | finite |" in text
    assert "training diverged: torch inf at step 3 (numpy finite)" in text
    assert report.TOL_USED_NOTE in text and "1.0 = at the limit" in text


def test_record_marks_the_first_nonfinite_step_and_epoch():
    spec = load_spec(None, [])
    body = {
        "steps": [
            {"epoch": 1, "step": s, "batch_ids": [s], "batch_size": 1, "loss": v} for s, v in [(1, 1.0), (2, INF)]
        ],
        "epochs": [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "test_loss": NAN, "test_acc": 0.5}],
        "timing": {},
        "idioms": [],
    }
    rec = record.build("torch", {}, "cpu", spec, body)
    assert rec["first_nonfinite_step"] == 2 and rec["first_nonfinite_epoch"] == 1
    body["steps"][1]["loss"] = 0.5
    body["epochs"][0]["test_loss"] = 0.4
    rec = record.build("torch", {}, "cpu", spec, body)
    assert rec["first_nonfinite_step"] is None and rec["first_nonfinite_epoch"] is None
    assert json.loads(json.dumps(rec))["first_nonfinite_step"] is None


def _explosion(n=32):
    """A loss growing ~1e11 per step (iris at lr 1e6), NaN from step 28; the other backend 1e-15 apart, inf there."""
    k = np.arange(n)
    ref = np.full(n, NAN)
    ref[:27] = 0.9 * 10.0 ** (11.2 * k[:27])
    other = ref * (1 + 3e-15 * np.sin(k))
    other[27] = INF
    return ref.tolist(), other.tolist()


@pytest.mark.parametrize(
    "case",
    [
        "explosion",  # up to 1e302 with distances up to 1e288: matplotlib's log axis overflowed (old traceback)
        "mixed",
        "all-nan",
    ],
)
def test_loss_plot_with_nonfinite_and_huge_points_writes_the_png(tmp_path, case):
    reference, torch_losses = _explosion()
    if case == "mixed":
        torch_losses = [0.9, 0.8, INF, -INF, NAN, *reference[5:]]
    elif case == "all-nan":
        torch_losses = [NAN] * len(reference)
    records = {"numpy": _rec("numpy", reference), "torch": _rec("torch", torch_losses)}
    comparison = compare(records, "numpy", FLOAT64_EXACT)
    path = tmp_path / "loss.png"
    plots.loss_plot(records, "numpy", path, comparison)
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_loss_plot_colours_are_one_per_backend_in_both_panels(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    saved = {}
    monkeypatch.setattr(plt, "close", lambda fig: saved.setdefault("fig", fig))
    records = {n: _rec(n, [1.0, 0.5, 0.25, 0.125]) for n in ("numpy", "torch", "jax")}
    comparison = compare(records, "numpy", FLOAT64_EXACT)
    comparison["failed"] = {}
    plots.loss_plot(records, "numpy", tmp_path / "loss.png", comparison)
    top, bottom = saved["fig"].axes
    colour = {line.get_label(): line.get_color() for line in top.lines}
    assert len(set(colour.values())) == 3
    for line in bottom.lines:
        assert line.get_color() == colour[line.get_label().split(" − ")[0]]
    title = saved["fig"]._suptitle.get_text()
    assert title.startswith("EQUIVALENT") and "rtol 1e-09, atol 1e-12" in title
    notes = [t.get_text() for t in bottom.texts]
    assert any("exactly equal losses drawn at 1e-18" in t for t in notes)
    plt.close(saved["fig"])


@pytest.mark.skipif(not installed("torch"), reason="the run uses the torch backend (tox -e torch, parity)")
def test_run_whose_training_explodes_keeps_records_warns_and_does_not_crash(tmp_path):
    """float64 iris at lr 1e6: the loss grows ~1e12 per step, overflows and is NaN from step 28 in the oracle and
    torch alike: equivalent (exit 0, documented), with the warning line, the records and the plot."""
    out = tmp_path / "out"
    argv = ["run", "--backends", "torch", "--set", "optimizer.lr=1e6", "--set", "train.epochs=4", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *argv, "--quiet"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "WARNING non-finite: torch: training loss became nan at step 28" in proc.stdout
    assert "EQUIVALENT within rtol 1e-09 at every step, but training diverged to nan at step 28 in every backend" in (
        proc.stdout
    )
    for name in ("numpy", "torch"):
        rec = json.loads((out / "records" / f"{name}.json").read_text())
        assert rec["first_nonfinite_step"] == 28 and rec["first_nonfinite_epoch"] == 4
        assert math.isnan(rec["steps"][27]["loss"]) and math.isfinite(rec["steps"][26]["loss"])
    assert (out / "loss.png").stat().st_size > 1000
    assert "| torch | 28 | nan | 4 |" in (out / "report.md").read_text()
