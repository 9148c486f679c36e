"""common.sequences: the synthetic generator's label rule and JSONL validation (groundwork, not wired in yet)."""

import json

import numpy as np
import pytest

from common import InputError
from common.padding import pad_batch
from common.sequences import majority_group, read_jsonl, synthetic

pytestmark = pytest.mark.framework_free  # no ML framework: runs once, in the torch env (tox.ini)


def test_synthetic_is_deterministic_and_labels_depend_on_the_whole_sequence():
    a, b = synthetic(300, 2, 20, 12, 3, seed=0), synthetic(300, 2, 20, 12, 3, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
    assert a.lengths.min() >= 2 and a.lengths.max() <= 20 and min(t.min() for t in a.tokens) >= 1
    assert set(a.labels.tolist()) == {0, 1, 2}
    for t, label in zip(a.tokens, a.labels, strict=True):
        counts = [(t % 3 == g).sum() for g in range(3)]
        assert counts[label] == max(counts) and label == counts.index(max(counts))
    truncated, _, _ = pad_batch(a.tokens, truncate="post", max_len=5)
    changed = sum(majority_group(row[row > 0], 3) != label for row, label in zip(truncated, a.labels, strict=True))
    assert changed > 0  # truncation changes some answers


def _write(tmp_path, rows):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize(
    "row, fragment",
    [
        ({"tokens": [], "label": 0}, "non-empty"),
        ({"tokens": [1, 99], "label": 0}, "0 is reserved"),
        ({"tokens": [0, 1], "label": 0}, "0 is reserved"),
        ({"tokens": [1, 2.5], "label": 0}, "integers"),
        ({"tokens": [1, 2], "label": 7}, "label"),
        ({"tokens": [1, 2]}, "'label'"),
        ("{not json", "JSON"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, row, fragment):
    path = _write(tmp_path, [{"tokens": [1, 2], "label": 1}, row])
    with pytest.raises(InputError, match="line 2") as info:
        read_jsonl(path, vocab=10, n_classes=2)
    assert fragment in str(info.value) and "d.jsonl" in str(info.value)


def test_jsonl_reads_valid_rows(tmp_path):
    data = read_jsonl(_write(tmp_path, [{"tokens": [3, 1], "label": 1}, {"tokens": [2], "label": 0}]), 10, 2)
    assert [t.tolist() for t in data.tokens] == [[3, 1], [2]] and data.labels.tolist() == [1, 0]
    with pytest.raises(InputError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl", 10, 2)
