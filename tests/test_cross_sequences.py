"""Sequences across the three frameworks and the oracle, through the real harness (one subprocess per backend).

Acceptance of the sequences issue: every step's loss agrees (float64 rtol 1e-9, float32 1e-4) for post- and
pre-padding with masks, truncation at both ends, with and without length buckets and with a ragged last batch; the
batch ids and padded lengths are identical; masked pre- and post-padding give the same run; with masks off the
harness reports that pre- and post-padding diverge and names the trap. Needs torch, tensorflow and jax together.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backends import FRAMEWORKS, REFERENCE
from benchmarks.runner import run_all
from common import record
from common.batching import BatchPlan
from common.compare import compare
from common.datasets import load_dataset
from common.spec import Spec, typed
from common.tolerance import tolerance_for
from tests.support import divergences, needs_all_frameworks, seq_spec, worst_rel, worst_tolerance_used

pytestmark = [
    pytest.mark.cross,
    needs_all_frameworks,
]
ROOT = Path(__file__).resolve().parent.parent
EVERYONE = (REFERENCE, *FRAMEWORKS)

# 72 training rows of 2..10 tokens, batch 7: the unbucketed plan leaves a ragged last batch of 2
SEQ_MATRIX = {
    "pool-post-keep-momentum-wd-drop": dict(
        sequence={"pad": "post"}, optimizer={"momentum": 0.9}, regularization={"weight_decay": 1e-3, "dropout": 0.3}
    ),
    "pool-pre-truncpre-maxlen6-adam-l1-pertoken": dict(
        sequence={"pad": "pre", "truncate": "pre", "max_len": 6, "loss_norm": "per_token"},
        optimizer={"name": "adam", "lr": 0.01},
        regularization={"l1": 1e-3},
        model={"activation": "tanh"},
    ),
    "rnn-post-buckets-pad-pertoken-l2": dict(
        model={"kind": "rnn"},
        sequence={"buckets": [4, 7, 10], "loss_norm": "per_token"},
        batching={"last_batch": "pad"},
        regularization={"l2": 1e-3},
    ),
    "rnn-pre-truncpost-maxlen6-adamw-drop-bias": dict(
        model={"kind": "rnn", "init": "glorot_uniform"},
        sequence={"pad": "pre", "truncate": "post", "max_len": 6},
        optimizer={"name": "adamw", "lr": 0.01},
        regularization={"weight_decay": 1e-2, "decay": "decoupled", "regularize_bias": True, "dropout": 0.3},
    ),
    "rnn-pre-buckets-keep-truncpre-sgd": dict(
        model={"kind": "rnn", "init": "lecun_normal"},
        sequence={"pad": "pre", "truncate": "pre", "buckets": [3, 6]},
        optimizer={"lr": 0.2},
    ),
    "rnn-post-longest-keep-nesterov-drop-noshuffle": dict(
        model={"kind": "rnn"},
        batching={"shuffle": False},
        optimizer={"momentum": 0.9, "nesterov": True},
        regularization={"dropout": 0.5, "l2": 1e-3},
    ),
}
FLOAT32_CASES = (
    "rnn-post-buckets-pad-pertoken-l2",
    "rnn-pre-truncpost-maxlen6-adamw-drop-bias",
    "pool-pre-truncpre-maxlen6-adam-l1-pertoken",
)
SIDE_CASE = dict(model={"kind": "rnn"}, sequence={"buckets": [4, 10]}, optimizer={"lr": 0.2})


def _jobs(work: Path) -> list[tuple[Spec, Path]]:
    jobs = [
        (seq_spec("float64", name=case, **sections), work / "float64" / case) for case, sections in SEQ_MATRIX.items()
    ]
    jobs += [(seq_spec("float32", name=case, **SEQ_MATRIX[case]), work / "float32" / case) for case in FLOAT32_CASES]
    for pad in ("post", "pre"):
        for mask in (True, False):
            sections = {**SIDE_CASE, "sequence": {**SIDE_CASE["sequence"], "pad": pad, "mask": mask}}
            jobs.append((seq_spec("float64", name=f"side-{pad}-{mask}", **sections), work / "side" / f"{pad}-{mask}"))
    return jobs


@pytest.fixture(scope="module")
def seq_records(tmp_path_factory):
    """Every case, each backend run once over all of them."""
    work = tmp_path_factory.mktemp("sequences")
    results = run_all(list(EVERYONE), _jobs(work), work, progress=False)
    assert all(r.ok for r in results), [(r.backend, r.message) for r in results]
    return work


def _records(folder: Path) -> dict:
    return {name: record.read(folder, name) for name in EVERYONE}


@pytest.mark.parametrize("dtype, case", [("float64", c) for c in SEQ_MATRIX] + [("float32", c) for c in FLOAT32_CASES])
def test_every_backend_agrees_with_the_oracle_at_every_step(seq_records, dtype, case):
    records = _records(seq_records / dtype / case)
    comparison = compare(records, REFERENCE, tolerance_for(dtype, "exact"))
    print(
        f"{dtype} {case}: worst relative difference {worst_rel(comparison):.3g}, "
        f"tolerance used {worst_tolerance_used(comparison):.3g}"
    )
    assert divergences(comparison) == []
    steps = records[REFERENCE][0]["steps"]
    assert len(steps) >= 20


@pytest.mark.parametrize("case", SEQ_MATRIX)
def test_batch_ids_and_padded_lengths_are_the_plans(seq_records, case):
    records = _records(seq_records / "float64" / case)
    spec = typed(records[REFERENCE][0]["spec"])
    data = load_dataset(spec)
    plan = BatchPlan.from_spec(spec, data.train_x.shape[0], data.train_lengths)
    planned = [(b.real_ids.tolist(), b.length) for e in range(spec.train.epochs) for b in plan.batches(e)]
    for name, (rec, _) in records.items():
        assert [(s["batch_ids"], s["padded_length"]) for s in rec["steps"]] == planned, name
    cap = spec.sequence.max_len or (spec.sequence.buckets or [0])[-1]
    lengths = {s["padded_length"] for s in records[REFERENCE][0]["steps"]}
    if spec.sequence.buckets:
        assert lengths <= set(spec.sequence.buckets)
    elif cap:
        assert lengths == {cap}
    else:
        assert len(lengths) > 1  # padded to the longest in each batch


def test_masked_pre_and_post_padding_give_the_same_run(seq_records):
    post, pre = _records(seq_records / "side" / "post-True"), _records(seq_records / "side" / "pre-True")
    for name in EVERYONE:
        assert post[name][0]["padding"]["pad"] == "post" and pre[name][0]["padding"]["pad"] == "pre"
        comparison = compare({"post": post[name], "pre": pre[name]}, "post", tolerance_for("float64", "exact"))
        assert divergences(comparison) == [], name


def test_unmasked_pre_and_post_padding_diverge_in_every_backend(seq_records):
    post, pre = _records(seq_records / "side" / "post-False"), _records(seq_records / "side" / "pre-False")
    for name in EVERYONE:
        comparison = compare({"post": post[name], "pre": pre[name]}, "post", tolerance_for("float64", "exact"))
        assert any(
            p["metric"] == "loss" and p["first_divergent_step"] == 1 for p in comparison["pairs"] if p["divergent"]
        ), name
        # each side on its own is still equivalent across the frameworks
    for side in (post, pre):
        assert divergences(compare(side, REFERENCE, tolerance_for("float64", "exact"))) == []


def _parity(tmp_path, *overrides):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "run",
            "--quiet",
            "--out",
            str(tmp_path / "out"),
            "--set",
            'data.name="sequences"',
            "--set",
            'model.kind="rnn"',
            "--set",
            "model.hidden=[6]",
            "--set",
            "model.embed_dim=4",
            "--set",
            "train.epochs=1",
            "--set",
            "batching.batch_size=16",
            "--set",
            "sequence.buckets=[5, 12]",
            "--set",
            'sequence.pad="native"',
            *[a for o in overrides for a in ("--set", o)],
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_harness_names_the_unmasked_padding_side_trap(tmp_path):
    # sequence.pad = "native": Keras pad_sequences pads pre, torch pad_sequence and jax post
    proc = _parity(tmp_path, "sequence.mask=false")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "DIVERGENT" in proc.stdout
    causes = json.loads((tmp_path / "out" / "comparison.json").read_text())["causes"]
    named = {(c["a"], c["b"]) for c in causes if c["trap"] == "pad-side-unmasked"}
    assert named == {("jax", "tf"), ("numpy", "tf"), ("tf", "torch")}
    assert (
        "cause [pad-side-unmasked]" in proc.stdout
        and "cause [pad-side-unmasked]" in (tmp_path / "out" / "report.md").read_text()
    )
    records = {n: record.read(tmp_path / "out" / "records", n) for n in EVERYONE}
    assert records["tf"][0]["padding"]["pad"] == "pre" and records["torch"][0]["padding"]["pad"] == "post"


def test_with_masks_each_frameworks_own_padding_side_agrees(tmp_path):
    proc = _parity(tmp_path, "sequence.mask=true")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "EQUIVALENT" in proc.stdout and "cause [" not in proc.stdout
