"""Malformed specs, data and arguments: exit 2, one line naming the key or file, no traceback, nothing written."""

import subprocess
import sys

import numpy as np
import pytest

from benchmarks.cli import main

BAD_SPECS = {
    "unknown_top": ("nmae = 'x'\n", "nmae"),
    "unknown_nested": ("[optimizer]\nlearning_rate = 0.1\n", "optimizer.learning_rate"),
    "wrong_type": ("[batching]\nbatch_size = 'sixteen'\n", "batching.batch_size"),
    "float_for_int": ("[batching]\nbatch_size = 16.5\n", "batching.batch_size"),
    "zero_batch": ("[batching]\nbatch_size = 0\n", "batching.batch_size"),
    "bad_policy": ("[batching]\nlast_batch = 'wrap'\n", "batching.last_batch"),
    "dropout_one": ("[regularization]\ndropout = 1.0\n", "regularization.dropout"),
    "negative_l2": ("[regularization]\nl2 = -0.1\n", "regularization.l2"),
    "bad_dtype": ("dtype = 'float16'\n", "dtype"),
    "bad_mode": ("mode = 'fast'\n", "mode"),
    "bad_optimizer": ("[optimizer]\nname = 'rmsprop'\n", "optimizer.name"),
    "zero_lr": ("[optimizer]\nlr = 0.0\n", "optimizer.lr"),
    "bool_for_float": ("[optimizer]\nlr = true\n", "optimizer.lr"),
    "adamw_coupled": ("[optimizer]\nname = 'adamw'\n", "regularization.decay"),
    "nesterov_no_momentum": ("[optimizer]\nnesterov = true\n", "optimizer.nesterov"),
    "hidden_not_list": ("[model]\nhidden = 32\n", "model.hidden"),
    "hidden_negative": ("[model]\nhidden = [32, -1]\n", "model.hidden"),
    "bad_activation": ("[model]\nactivation = 'gelu'\n", "model.activation"),
    "section_not_table": ("model = 3\n", "model"),
    "test_fraction_one": ("[data]\ntest_fraction = 1.0\n", "data.test_fraction"),
    "csv_without_path": ("[data]\nname = 'csv'\n", "data.path"),
    "doughnut_param": ("[data]\nname = 'doughnuts'\n[data.params]\nn = 'many'\n", "data.params.n"),
    "iris_param": ("[data]\nname = 'iris'\n[data.params]\nn = 10\n", "data.params.n"),
    "drop_too_big": ("[batching]\nbatch_size = 500\nlast_batch = 'drop'\n", "batching.batch_size"),
    "invalid_toml": ("name = \n", "spec file"),
    "zero_epochs": ("[train]\nepochs = 0\n", "train.epochs"),
    "bad_aggregation": ("[metrics]\naggregation = 'mean'\n", "metrics.aggregation"),
}


def _write_data(tmp_path, kind):
    """Malformed data files; returns (spec text, expected fragment)."""
    if kind == "missing_csv":
        return f"[data]\nname = 'csv'\npath = '{tmp_path / 'nope.csv'}'\n", "nope.csv"
    if kind == "nan_csv":
        (tmp_path / "d.csv").write_text("a,b,label\n1,2,0\nnan,1,1\n3,4,1\n")
        return "[data]\nname = 'csv'\npath = 'd.csv'\n", "NaN"
    if kind == "label_range":
        np.savez(tmp_path / "d.npz", x=np.ones((6, 2)), y=np.array([0, 1, 2, -1, 0, 1]))
        return "[data]\nname = 'npz'\npath = 'd.npz'\n", "labels"
    if kind == "mismatch":
        np.savez(tmp_path / "d.npz", x=np.ones((6, 2)), y=np.array([0, 1, 0]))
        return "[data]\nname = 'npz'\npath = 'd.npz'\n", "6 feature rows but 3 labels"
    if kind == "empty_csv":
        (tmp_path / "d.csv").write_text("")
        return "[data]\nname = 'csv'\npath = 'd.csv'\n", "empty"
    if kind == "unreadable_npz":
        (tmp_path / "d.npz").write_bytes(b"not a zip at all")
        return "[data]\nname = 'npz'\npath = 'd.npz'\n", "unreadable"
    if kind == "no_label_column":
        (tmp_path / "d.csv").write_text("a,b,y\n1,2,0\n3,4,1\n")
        return "[data]\nname = 'csv'\npath = 'd.csv'\n", "label"
    if kind == "non_numeric_csv":
        (tmp_path / "d.csv").write_text("a,label\n1,0\nx,1\n2,1\n")
        return "[data]\nname = 'csv'\npath = 'd.csv'\n", "non-numeric"
    raise AssertionError(kind)


BAD_DATA = ["missing_csv", "nan_csv", "label_range", "mismatch", "empty_csv", "unreadable_npz",
            "no_label_column", "non_numeric_csv"]


def _check(capsys, tmp_path, argv, fragment):
    out = tmp_path / "out"
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("parity: error:") and "\n" not in err, err
    assert fragment in err, err
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec(case, tmp_path, capsys):
    text, fragment = BAD_SPECS[case]
    (tmp_path / "s.toml").write_text(text)
    _check(capsys, tmp_path, ["run", str(tmp_path / "s.toml")], fragment)


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data(case, tmp_path, capsys):
    text, fragment = _write_data(tmp_path, case)
    (tmp_path / "s.toml").write_text(text)
    _check(capsys, tmp_path, ["run", str(tmp_path / "s.toml")], fragment)


@pytest.mark.parametrize("argv, fragment", [
    (["run", "missing.toml"], "missing.toml"),
    (["run", "--set", "optimizer.lr"], "optimizer.lr"),
    (["run", "--set", "optimizer.lrr=0.1"], "optimizer.lrr"),
    (["run", "--backends", "torch,mxnet"], "mxnet"),
    (["run", "--bogus"], "arguments"),
    (["fly"], "arguments"),
])
def test_bad_arguments(argv, fragment, tmp_path, capsys):
    _check(capsys, tmp_path, argv, fragment)


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    (tmp_path / "s.toml").write_text("[optimizer]\nlr = -1\n")
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "run", str(tmp_path / "s.toml"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "optimizer.lr" in proc.stderr and not (tmp_path / "out").exists()
