"""Values that would be silently wrong (issue 10, category 3): labels, features, token ids and sizes beyond sane
limits, non-contiguous classes, a duplicated label column and keys that do not apply to the data. Each is exit 2
with one line naming the file or key and the value, no traceback, nothing written."""

import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.cli import main
from common.datasets import load_dataset, standardize
from common.spec import MAX_CLASSES, MAX_ELEMENTS, load_spec
from tests.test_bad_input import _check

U64_MAX = np.iinfo(np.uint64).max


def _csv(tmp_path, text, extra=""):
    (tmp_path / "d.csv").write_text(text)
    return f"[data]\nname = 'csv'\npath = '{tmp_path / 'd.csv'}'\n{extra}"


def _npz(tmp_path, x, y, extra=""):
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return f"[data]\nname = 'npz'\npath = '{tmp_path / 'd.npz'}'\n{extra}"


def _jsonl(tmp_path, rows, params=""):
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f"[data]\nname = 'jsonl'\npath = '{tmp_path / 'd.jsonl'}'\n{params}[model]\nkind = 'seq_pool'\n"


GOOD = "a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n9,1,0\n"


def _csv_label(label):
    return GOOD + f"2,3,{label}\n"


ROWS = [{"tokens": [1, 2], "label": 0}, {"tokens": [3], "label": 1}] * 3  # a valid jsonl body
X6 = np.arange(12, dtype=np.float64).reshape(6, 2)

CASES = {
    # labels: exact non-negative integers below MAX_CLASSES, named with the file, line or row, and the value
    "csv_label_1e300": (lambda t: _csv(t, _csv_label("1e300")), ["d.csv", "line 7", "label 1e300"]),
    "csv_label_1e12": (lambda t: _csv(t, _csv_label("1e12")), ["d.csv", "line 7", "label 1e12"]),
    "csv_label_u64_max": (lambda t: _csv(t, _csv_label(str(U64_MAX))), ["line 7", str(U64_MAX)]),
    "csv_label_fraction": (lambda t: _csv(t, _csv_label("1.5")), ["line 7", "label 1.5"]),
    "csv_label_negative": (lambda t: _csv(t, _csv_label("-1")), ["line 7", "label -1"]),
    "csv_label_nan": (lambda t: _csv(t, _csv_label("nan")), ["line 7", "label nan"]),
    "npz_label_u64_max": (
        lambda t: _npz(t, X6, np.array([0, 1, 0, 1, 0, U64_MAX], dtype=np.uint64)),
        ["d.npz", str(U64_MAX), "row 5"],
    ),
    "npz_label_1e300": (lambda t: _npz(t, X6, np.array([0, 1, 0, 1, 1e300, 0])), ["d.npz", "1e+300", "row 4"]),
    "npz_label_1e12_int": (lambda t: _npz(t, X6, np.array([0, 1, 10**12, 1, 0, 1])), ["d.npz", str(10**12)]),
    "npz_label_nan": (lambda t: _npz(t, X6, np.array([0, 1, np.nan, 1, 0, 1])), ["d.npz", "found nan"]),
    # classes must be exactly 0..C-1: refused, not re-indexed
    "csv_labels_1_2_3": (
        lambda t: _csv(t, "a,label\n1,1\n2,2\n3,3\n4,1\n5,2\n6,3\n"),
        ["d.csv", "label 0 never occurs", "re-index them to 0..2"],
    ),
    "npz_labels_0_7": (
        lambda t: _npz(t, X6, np.array([0, 7, 0, 7, 0, 7])),
        ["d.npz", "label 1 never occurs", "re-index them to 0..1"],
    ),
    "jsonl_labels_0_7": (
        lambda t: _jsonl(t, [{"tokens": [1, 2], "label": 0}, {"tokens": [3], "label": 7}] * 3),
        ["d.jsonl", "label 1 never occurs"],
    ),
    "jsonl_label_1e12": (
        lambda t: _jsonl(t, [*ROWS, {"tokens": [2], "label": 10**12}]),
        ["d.jsonl", "line 7", f"label {10**12}"],
    ),
    # token ids
    "jsonl_token_1e12": (
        lambda t: _jsonl(t, [*ROWS, {"tokens": [2, 10**12], "label": 1}]),
        ["d.jsonl", "line 7", f"token {10**12}"],
    ),
    # features: within the spec dtype's range
    "csv_feature_beyond_float32": (
        lambda t: "dtype = 'float32'\n" + _csv(t, GOOD + "1e39,3,1\n"),
        ["d.csv", "1e+39", "float32"],
    ),
    "npz_feature_1e300_float32": (
        lambda t: "dtype = 'float32'\n" + _npz(t, np.where(X6 == 5, 1e300, X6), np.array([0, 1] * 3)),
        ["d.npz", "1e+300", "row 2, column 1", "float32"],
    ),
    "csv_duplicated_label_column": (
        lambda t: _csv(t, "a,label,label\n1,0,1\n2,1,0\n3,0,1\n4,1,0\n"),
        ["d.csv", "label column 'label' 2 times"],
    ),
    # sizes: refused before allocation, naming the key
    "hidden_too_wide": (lambda t: "[model]\nhidden = [2000000]\n", ["model.hidden", "2000000"]),
    "hidden_product_too_big": (lambda t: "[model]\nhidden = [65536, 65536]\n", ["model.hidden", "layer1.weight"]),
    "layer_units_too_big": (
        lambda t: "[data]\nname = 'digits'\n[model]\nlayers = [{kind = 'dense', units = 16777216}, {kind = 'dense'}]\n",
        ["model.layers[0]", "above the limit 268,435,456"],
    ),
    "vocab_times_embed_dim": (
        lambda t: (
            "[data]\nname = 'sequences'\n[data.params]\nvocab = 16777216\n[model]\nkind = 'seq_pool'\nembed_dim = 64\n"
        ),
        ["model.embed_dim", "embed.weight", "vocab 16777216"],
    ),
    "sequences_n_times_max_len": (
        lambda t: "[data]\nname = 'sequences'\n[data.params]\nn = 10000000\nmax_len = 1000\n[model]\nkind = 'rnn'\n",
        ["data.params.n", str(MAX_ELEMENTS)],
    ),
    "sequences_classes": (
        lambda t: "[data]\nname = 'sequences'\n[data.params]\nclasses = 100000000\n[model]\nkind = 'rnn'\n",
        ["data.params.classes", str(MAX_CLASSES)],
    ),
    "jsonl_vocab_param": (
        lambda t: _jsonl(t, ROWS, "[data.params]\nvocab = 1000000000000\n"),
        ["data.params.vocab"],
    ),
    # keys that do not apply to the data
    "sequence_pad_on_features": (lambda t: "[sequence]\npad = 'pre'\n", ["sequence.pad", "iris"]),
    "sequence_buckets_on_features": (
        lambda t: "[data]\nname = 'digits'\n[sequence]\nbuckets = [4, 8]\n",
        ["sequence.buckets", "digits"],
    ),
    "sequence_mask_on_csv": (lambda t: _csv(t, GOOD, "[sequence]\nmask = false\n"), ["sequence.mask"]),
    "embed_dim_on_mlp": (lambda t: "[model]\nembed_dim = 16\n", ["model.embed_dim"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused(case, tmp_path, capsys):
    make, fragments = CASES[case]
    (tmp_path / "s.toml").write_text(make(tmp_path))
    _check(capsys, tmp_path, ["run", str(tmp_path / "s.toml")], fragments[0])  # exit 2, one line, nothing written
    # the same run again, to hold the one line to every fragment (the file or key, and the value)
    assert main(["run", str(tmp_path / "s.toml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("parity: error:") and "\n" not in err and "Traceback" not in err, err
    assert all(f in err for f in fragments), err
    assert not (tmp_path / "out").exists()


def test_huge_label_in_a_real_process_is_exit_2_not_memory_error(tmp_path):
    (tmp_path / "s.toml").write_text(_csv(tmp_path, _csv_label("1e12")))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", str(tmp_path / "s.toml"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "MemoryError" not in proc.stderr and "label 1e12" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_standardize_keeps_a_column_of_huge_values():
    train = np.array([[1e300, 1.0], [-1e300, 2.0], [5e299, 3.0], [0.0, 4.0]])
    test = np.array([[1e300, 5.0]])
    a, b = standardize(train, test)
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    assert np.allclose(a.mean(axis=0), 0.0) and np.allclose(a.std(axis=0), 1.0)  # not zeroed
    assert np.ptp(a[:, 0]) > 1.0 and b[0, 0] > 1.0
    plain = np.array([[1.0, 2.0], [3.0, 5.0], [4.0, 9.0]])  # ordinary data: unchanged arithmetic
    c, _ = standardize(plain, plain[:1])
    assert np.array_equal(c, (plain - plain.mean(axis=0)) / plain.std(axis=0))


def test_float64_csv_with_huge_feature_loads_standardised(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,label\n1e300,1,0\n-1e300,2,1\n2e299,3,0\n0,4,1\n1e299,5,0\n-3e299,6,1\n")
    spec = load_spec(None, ['data.name="csv"', f'data.path="{tmp_path / "d.csv"}"', 'dtype="float64"'])
    data = load_dataset(spec)
    col = np.concatenate([data.train_x[:, 0], data.test_x[:, 0]])
    assert np.all(np.isfinite(col)) and np.ptp(col) > 1.0


def test_float32_values_within_range_load(tmp_path):
    (tmp_path / "d.csv").write_text(GOOD + "3e38,3,1\n")
    spec = load_spec(None, ['data.name="csv"', f'data.path="{tmp_path / "d.csv"}"', 'dtype="float32"'])
    assert load_dataset(spec).n_classes == 2


def test_csv_label_written_as_float_integer_loads(tmp_path):
    (tmp_path / "d.csv").write_text("a,label\n1,0.0\n2,1.0\n3,0\n4,1\n5,2\n")
    spec = load_spec(None, ['data.name="csv"', f'data.path="{tmp_path / "d.csv"}"'])
    data = load_dataset(spec)
    assert data.n_classes == 3 and data.train_y.dtype == np.int64


def test_jsonl_with_declared_classes_may_miss_one(tmp_path):
    """classes given in data.params: the user declared C, a class absent from the file is allowed."""
    rows = [{"tokens": [1, 2], "label": 0}, {"tokens": [3], "label": 2}] * 3
    spec_text = _jsonl(tmp_path, rows, "[data.params]\nclasses = 3\n")
    (tmp_path / "s.toml").write_text(spec_text)
    assert load_dataset(load_spec(tmp_path / "s.toml")).n_classes == 3


SINGLE_CLASS = {
    "csv": lambda t: _csv(t, "a,label\n1,5\n2,5\n3,5\n"),
    "jsonl": lambda t: _jsonl(t, [{"tokens": [1, 2], "label": 5}] * 6),
}


@pytest.mark.parametrize("name", sorted(SINGLE_CLASS))
def test_a_single_class_above_zero_is_refused(name, tmp_path, capsys):
    """labels all 5: one class, not six (today's code trains a 6-class model on it)."""
    (tmp_path / "s.toml").write_text(SINGLE_CLASS[name](tmp_path))
    _check(capsys, tmp_path, ["run", str(tmp_path / "s.toml")], "need at least 2 classes, labels are all 5")
