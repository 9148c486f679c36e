"""`parity run --jobs N` (docs/design.md, "Architecture"): backend processes side by side give the records of one
after another, apart from the timings, and each record says how many processes ran at once."""

import importlib.util

import numpy as np
import pytest

from benchmarks.cli import main
from common import record

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the runs here use torch")
RUN = ["run", "--backends", "torch", "--set", "train.epochs=2", "--quiet"]


def test_side_by_side_records_equal_one_after_another(tmp_path):
    assert main([*RUN, "--jobs", "1", "--out", str(tmp_path / "alone")]) == 0
    assert main([*RUN, "--jobs", "2", "--out", str(tmp_path / "together")]) == 0
    for backend in ("numpy", "torch"):
        (alone, alone_npz), (together, together_npz) = (
            record.read(tmp_path / run / "records", backend) for run in ("alone", "together")
        )
        assert alone["timing"]["concurrent"] == 1 and together["timing"]["concurrent"] == 2
        for key in ("steps", "epochs", "spec", "idioms"):
            assert alone[key] == together[key], key
        assert set(alone_npz) == set(together_npz)
        for name, value in alone_npz.items():
            np.testing.assert_array_equal(value, together_npz[name], err_msg=name)


def test_jobs_beyond_the_backends_run_them_all_at_once(tmp_path):
    assert main([*RUN, "--jobs", "8", "--out", str(tmp_path / "out")]) == 0
    assert record.read(tmp_path / "out" / "records", "torch")[0]["timing"]["concurrent"] == 2  # numpy and torch


def test_jobs_must_be_positive(tmp_path, capsys):
    assert main([*RUN, "--jobs", "0", "--out", str(tmp_path / "out")]) == 2
    assert "--jobs" in capsys.readouterr().err and not (tmp_path / "out").exists()
