"""JAX split steps (backends.jax_backend.distributed): a Mesh of host devices, the micro-batch sharded over it (jit
for global_mean, shard_map + pmean for mean_of_means) and optax.MultiSteps accumulation, against the numpy oracle's
serial split and against the backend's own single-device twin (common.distributed.single_device), both reductions,
eager and compiled, the shards of a ragged step, one compile per micro-batch shape, and the device reservation.

The runs train in one worker process (`python -m backends.worker`, which reserves the host devices first)."""

import dataclasses
import json
import subprocess
import sys

import pytest

from common import record
from common.distributed import Layout, single_device
from tests.support import DP_CASES, ROOT, dp_spec, installed, max_rel_gap, prepared_adapter, run_in_process

pytestmark = pytest.mark.skipif(not installed("jax"), reason="needs jax, flax and optax (pip install -e '.[jax]')")

REDUCTIONS = ("global_mean", "mean_of_means")
FLOAT32 = ("r2-ragged", "k4")


def _jobs() -> dict[tuple[str, ...], object]:
    """Every run this file compares, by key: split runs (case, dtype, reduction, execution) and twins."""
    jobs = {
        ("split", case, "float64", r, "default"): dp_spec(case, "float64", r) for case in DP_CASES for r in REDUCTIONS
    }
    jobs |= {("twin", case, "float64"): single_device(dp_spec(case)) for case in DP_CASES}
    jobs |= {("split", case, "float32", "global_mean", "default"): dp_spec(case, "float32") for case in FLOAT32}
    jobs |= {("twin", case, "float32"): single_device(dp_spec(case, "float32")) for case in FLOAT32}
    jobs[("split", "r2-ragged", "float64", "global_mean", "eager")] = dataclasses.replace(
        dp_spec("r2-ragged"), execution="eager"
    )
    return jobs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(record JSON, NPZ) of every job of `_jobs`, trained by one jax worker."""
    base = tmp_path_factory.mktemp("jax-dp")
    jobs = _jobs()
    folders = {key: base / "-".join(key) for key in jobs}
    listing = [{"spec": spec.to_dict(), "out": str(folders[key].resolve())} for key, spec in jobs.items()]
    (base / "jobs.json").write_text(json.dumps(listing), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "backends.worker", "jax", str(base / "jobs.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return {key: record.read(folder, "jax") for key, folder in folders.items()}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", sorted(DP_CASES))
def test_split_steps_match_the_oracle(runs, case, reduction):
    oracle = run_in_process("numpy", dp_spec(case, "float64", reduction))
    losses, params = max_rel_gap(runs[("split", case, "float64", reduction, "default")], oracle)
    assert losses <= 1e-9 and params <= 1e-9, (losses, params)


@pytest.mark.parametrize("case", sorted(DP_CASES))
def test_global_mean_matches_the_single_device_twin(runs, case):
    split = runs[("split", case, "float64", "global_mean", "default")]
    losses, params = max_rel_gap(split, runs[("twin", case, "float64")])
    assert losses <= 1e-9 and params <= 1e-9, (losses, params)


@pytest.mark.parametrize("case", FLOAT32)
def test_float32_global_mean_matches_the_twin(runs, case):
    split = runs[("split", case, "float32", "global_mean", "default")]
    losses, params = max_rel_gap(split, runs[("twin", case, "float32")])
    assert losses <= 1e-4 and params <= 1e-4, (losses, params)


def test_eager_replicas_match_the_compiled_ones(runs):
    """execution = "eager": the same step dispatched op by op on the sharded arrays."""
    eager = runs[("split", "r2-ragged", "float64", "global_mean", "eager")]
    losses, params = max_rel_gap(eager, runs[("split", "r2-ragged", "float64", "global_mean", "default")])
    assert losses <= 1e-9 and params <= 1e-9, (losses, params)


def _first_ragged(case: str, rec: dict) -> int:
    """The 1-based number of the first step with fewer real rows than the layout's S."""
    rows = Layout.from_spec(dp_spec(case)).step_rows
    return next(s["step"] for s in rec["steps"] if s["batch_size"] < rows)


@pytest.mark.parametrize("case", sorted(DP_CASES))
def test_reductions_part_right_after_the_first_ragged_step(runs, case):
    means = runs[("split", case, "float64", "mean_of_means", "default")][0]["steps"]
    global_ = runs[("split", case, "float64", "global_mean", "default")][0]["steps"]
    first = _first_ragged(case, runs[("twin", case, "float64")][0])
    if case in FLOAT32:
        assert first == 8  # 120 rows, 16 per step
    gaps = [abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(means, global_, strict=True)]
    assert max(gaps[:first]) <= 1e-12, gaps[:first]
    assert gaps[first] > 1e-6, gaps[first]


@pytest.mark.parametrize("case", FLOAT32)
def test_records_carry_the_shards_of_the_ragged_step(runs, case):
    rec = runs[("split", case, "float64", "global_mean", "default")][0]
    layout = Layout.from_spec(dp_spec(case))
    assert all(len(s["shards"]) == layout.replicas for s in rec["steps"])
    step = rec["steps"][_first_ragged(case, rec) - 1]
    shards = [ids for replica in step["shards"] for ids in replica]
    assert [] in shards and all(len(ids) in (0, layout.shard) for ids in shards), shards
    in_row_order = [i for k in range(layout.accumulate) for replica in step["shards"] for i in replica[k]]
    assert in_row_order == step["batch_ids"]


def test_one_compile_and_the_devices_own_shards_on_a_one_device_mesh():
    """k4 (R = 1, K = 4): the same engine on a one-device mesh; every micro-batch has one shape (one compile), and
    the shards read back from the device are the plan's split, filler included."""
    spec = dp_spec("k4")
    adapter, _ = prepared_adapter("jax", spec)
    run = adapter.run_epoch(0, 1)
    assert adapter.compile_count == 1
    layout = Layout.from_spec(spec)
    for got, batch in zip(run.shards, adapter.plan.batches(0), strict=True):
        assert [[ids.tolist() for ids in replica] for replica in got] == [
            [part.ids.tolist() for part in replica] for replica in layout.split(batch)
        ]


def test_reserving_devices_after_the_backend_started_is_a_clear_error():
    import jax

    from backends.jax_backend.distributed import reserve_devices

    started = len(jax.devices("cpu"))
    reserve_devices(started)  # what exists already: nothing to do
    with pytest.raises(RuntimeError, match="already started"):
        reserve_devices(started + 1)
