"""`parity explain` through the real CLI (docs/design.md, "parity explain"): a hand port of an iris experiment (l2,
Adam, dropout, biases left undecayed by the spec), torch against tf. The torch–tf gap is attributed to named idioms:
the semantic ones ranked by the gap each makes alone, checked here against the raw records of those single-idiom
runs, with their first divergent steps; the random ones shown as a noise floor.

Needs torch and tensorflow (tox -e parity).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common import record
from tests.support import make_spec, needs_all_frameworks, write_spec

pytestmark = [pytest.mark.cross, needs_all_frameworks]
ROOT = Path(__file__).resolve().parent.parent
PORT = {
    "name": "iris-port",
    "regularization": {"l2": 0.01, "dropout": 0.3},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 4},
}


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("explain")
    spec = write_spec(make_spec(**PORT), folder / "port.toml")
    argv = [sys.executable, "-m", "benchmarks", "explain", str(spec), "--pair", "torch,tf", "--seeds", "3"]
    proc = subprocess.run([*argv, "--out", str(folder / "out")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, folder / "out"


def test_the_gap_is_attributed_to_named_idioms(explained):
    proc, out = explained
    result = json.loads((out / "explain.json").read_text(encoding="utf-8"))
    assert (out / "explain.md").read_text(encoding="utf-8").startswith("# Parity explain: iris-port")
    assert (out / "explain.png").stat().st_size > 0
    (pair,) = result["pairs"]
    assert (pair["a"], pair["b"]) == ("torch", "tf")
    rows = {r["id"]: r for r in pair["idioms"]}
    assert set(rows) == {
        "order",
        "default_init",
        "dropout_rng",
        "l2_as_written",
        "bias_decay",
        "keras_adam_eps",
        "fit_epoch_loss",
    }

    # the single-idiom gaps (the mean over a random idiom's seeds), read from the raw records of those runs
    def gap(key: str, seed: int) -> float:
        torch_, tf_ = (record.read(out / "records" / f"{key}-s{seed}", b)[0] for b in ("torch", "tf"))
        return torch_["epochs"][-1]["test_loss"] - tf_["epochs"][-1]["test_loss"]

    alone = {}
    for idiom in pair["ranking"]["semantic"]:
        seeds = range(3) if "spread" in rows[idiom] else range(1)
        alone[idiom] = abs(np.mean([gap(f"exact+{idiom}", s) for s in seeds]) - gap("exact", 0))
    assert pair["ranking"]["semantic"] == sorted(alone, key=alone.get, reverse=True)
    assert alone["l2_as_written"] > 1e-6 and alone["keras_adam_eps"] > 1e-6
    # torch's weight_decay = l2 changes the first update: the losses part at step 2. Keras's ε-hat changes it too,
    # but by less than float32's tolerance (rtol 1e-4) at first: it crosses later (at step 2 in float64,
    # tests/test_cross_idioms.py)
    assert rows["l2_as_written"]["first_step"] == 2 and rows["keras_adam_eps"]["first_step"] > 2
    assert rows["l2_as_written"]["touches"] == ["torch"] and rows["keras_adam_eps"]["touches"] == ["tf"]
    assert rows["fit_epoch_loss"]["first_step"] is None  # it changes the reported epoch loss only
    assert rows["fit_epoch_loss"]["on"]["test_loss"] == 0.0
    # the random idioms: a noise floor, each with a positive seed-to-seed spread; those whose draws do not move the
    # mean are "noise"
    random = {"order", "default_init", "dropout_rng"}
    assert set(pair["ranking"]["noise"]) <= random and pair["ranking"]["noise"]
    assert all(rows[i]["spread"]["test_loss"] > 0.0 for i in random)
    assert all(rows[i]["class"] == "semantic" for i in set(rows) - random)
    assert pair["native_gap"]["test_loss"]["n"] == 3
    assert "1. " + pair["ranking"]["semantic"][0] in proc.stdout and "[noise]" in proc.stdout


def test_a_native_run_points_at_explain(tmp_path):
    argv = [sys.executable, "-m", "benchmarks", "run", "--backends", "torch", "--quiet", "--set", 'mode="native"']
    proc = subprocess.run(
        [*argv, "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hint: `parity explain --set 'mode=\"native\"'`" in proc.stdout
