"""PyTorch split steps (backends.torch_backend.distributed): R gloo processes under DistributedDataParallel with
`no_sync()` accumulation, and the same loop without DDP for R = 1, against the numpy oracle's serial split and
against the backend's own single-device twin (common.distributed.single_device), both reductions, float64 and
float32, the shards of a ragged step; a helper rank that fails, hangs or is killed ends the run with an error
naming it, and the rendezvous folder is removed.

The runs train in one worker process (`python -m backends.worker`), as `parity run` runs them."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from common import record
from common.distributed import Layout, single_device
from tests.support import DP_CASES, ROOT, dp_spec, installed, max_rel_gap, prepared_adapter, run_in_process

pytestmark = pytest.mark.skipif(not installed("torch"), reason="needs torch (pip install -e '.[torch]')")

REDUCTIONS = ("global_mean", "mean_of_means")
FLOAT32 = ("r2-ragged", "k4")
RENDEZVOUS = "parity-torch-ddp-*"


def _jobs() -> dict[tuple[str, ...], object]:
    """Every run this file compares, by key: split runs (case, dtype, reduction) and twins (case, dtype)."""
    jobs = {("split", case, "float64", r): dp_spec(case, "float64", r) for case in DP_CASES for r in REDUCTIONS}
    jobs |= {("twin", case, "float64"): single_device(dp_spec(case)) for case in DP_CASES}
    jobs |= {("split", case, "float32", "global_mean"): dp_spec(case, "float32") for case in FLOAT32}
    jobs |= {("twin", case, "float32"): single_device(dp_spec(case, "float32")) for case in FLOAT32}
    return jobs


def _worker(jobs: list[dict], folder: Path, *options: str) -> subprocess.Popen:
    """A torch worker over `jobs`, its temporary files (the rendezvous folders) under `folder`."""
    (folder / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
    return subprocess.Popen(
        [sys.executable, "-m", "backends.worker", "torch", str(folder / "jobs.json"), *options],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(folder)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def distributed():
    """backends.torch_backend.distributed (imported once torch is known to be installed)."""
    from backends.torch_backend import distributed

    return distributed


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(record JSON, NPZ) of every job of `_jobs`, trained by one torch worker, which leaves no rendezvous folder."""
    base = tmp_path_factory.mktemp("torch-dp")
    jobs = _jobs()
    folders = {key: base / "-".join(key) for key in jobs}
    worker = _worker([{"spec": spec.to_dict(), "out": str(folders[key])} for key, spec in jobs.items()], base)
    _, stderr = worker.communicate(timeout=600)
    assert worker.returncode == 0, stderr[-4000:]
    assert not list(base.glob(RENDEZVOUS))
    return {key: record.read(folder, "torch") for key, folder in folders.items()}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", sorted(DP_CASES))
def test_split_steps_match_the_oracle(runs, case, reduction):
    oracle = run_in_process("numpy", dp_spec(case, "float64", reduction))
    losses, params = max_rel_gap(runs[("split", case, "float64", reduction)], oracle)
    assert losses <= 1e-9 and params <= 1e-9, (losses, params)


@pytest.mark.parametrize("case", sorted(DP_CASES))
def test_global_mean_matches_the_single_device_twin(runs, case):
    losses, params = max_rel_gap(runs[("split", case, "float64", "global_mean")], runs[("twin", case, "float64")])
    assert losses <= 1e-9 and params <= 1e-9, (losses, params)


@pytest.mark.parametrize("case", FLOAT32)
def test_float32_global_mean_matches_the_twin(runs, case):
    losses, params = max_rel_gap(runs[("split", case, "float32", "global_mean")], runs[("twin", case, "float32")])
    assert losses <= 1e-4 and params <= 1e-4, (losses, params)


def _first_ragged(case: str, steps: list[dict]) -> int:
    """The 1-based number of the first recorded step with fewer real rows than the layout's S."""
    rows = Layout.from_spec(dp_spec(case)).step_rows
    return next(s["step"] for s in steps if s["batch_size"] < rows)


@pytest.mark.parametrize("case", sorted(DP_CASES))
def test_reductions_agree_up_to_the_first_ragged_step_and_part_right_after(runs, case):
    means = runs[("split", case, "float64", "mean_of_means")][0]["steps"]
    global_ = runs[("split", case, "float64", "global_mean")][0]["steps"]
    first = _first_ragged(case, global_)
    if case in FLOAT32:
        assert first == 8  # 120 rows, 16 per step
    assert [s["loss"] for s in means[:first]] == [s["loss"] for s in global_[:first]]
    after = abs(means[first]["loss"] - global_[first]["loss"]) / abs(global_[first]["loss"])
    assert after > 1e-6, after


@pytest.mark.parametrize("case", FLOAT32)
def test_records_carry_the_shards_of_the_ragged_step(runs, case):
    steps = runs[("split", case, "float64", "global_mean")][0]["steps"]
    layout = Layout.from_spec(dp_spec(case))
    assert all(len(s["shards"]) == layout.replicas for s in steps)
    step = steps[_first_ragged(case, steps) - 1]
    parts = [ids for replica in step["shards"] for ids in replica]
    assert [] in parts and all(len(ids) in (0, layout.shard) for ids in parts), parts
    assert [i for k in range(layout.accumulate) for replica in step["shards"] for i in replica[k]] == step["batch_ids"]


def test_one_replica_accumulates_without_a_process_group():
    """R = 1, K = 4: no helper, no DDP; the loader yields the K parts of every step, c rows each."""
    adapter, _ = prepared_adapter("torch", dp_spec("k4"))
    assert adapter.group is None and adapter.net is adapter.model
    parts = list(adapter.pipeline.epoch(0))
    assert len(parts) == 4 * 8 and {p.ids.shape[0] for p in parts} == {4}


# Helper targets for the group machinery (run in the spawned helper as `target(rank)`).
def _fails(rank: int) -> None:
    raise ValueError(f"rank {rank} cannot go on")


def _hangs(rank: int) -> None:
    time.sleep(600)


@pytest.mark.parametrize(
    ("target", "timeout", "message"),
    [
        (_fails, 60, "torch DDP rank 1 exited with code 1: ValueError: rank 1 cannot go on"),
        (_hangs, 5, "torch DDP rank 1 did not answer within 5 s"),
    ],
)
def test_a_helper_that_fails_or_hangs_is_named_within_the_timeout(
    distributed, tmp_path, monkeypatch, target, timeout, message
):
    """The monitor on rank 0 (this process): the rendezvous or the collective fails (the helper's connection
    closes) or times out (a loaded machine may not even bring the helper up within 5 s: the same error), and the
    error names the helper; the helpers are ended, the group destroyed, the rendezvous folder removed."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=message):
        group = distributed.Replicas.start(2, target, (), timeout=timeout)
        with group.guard():
            distributed.gather(None)
    assert time.monotonic() - started < 30
    assert not multiprocessing.active_children() and not distributed.dist.is_initialized()
    assert not list(tmp_path.glob(RENDEZVOUS))


def test_a_killed_helper_ends_the_worker_with_an_error_naming_its_rank(tmp_path):
    """Killed once rank 0 has reported its first epoch (`--progress`): training in lockstep, rank 0 evaluating or
    in the next collective. The worker fails the job (exit 3) at once, naming the rank."""
    spec = replace(dp_spec("r2-ragged"), train=replace(dp_spec("r2-ragged").train, epochs=2000))
    worker = _worker([{"spec": spec.to_dict(), "out": str(tmp_path / "out")}], tmp_path, "--progress")
    helper = _helper_of(worker.pid)
    assert "epoch 1/2000" in worker.stderr.readline()
    os.kill(helper, signal.SIGKILL)
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 3
    assert f"torch DDP rank 1 exited with code -{signal.SIGKILL.value}: no error written" in stderr, stderr[-4000:]
    assert not list(tmp_path.glob(RENDEZVOUS))


def _helper_of(pid: int, within: float = 60.0) -> int:
    """The pid of the spawned helper process of worker `pid` (a child with `--multiprocessing-fork`)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"--multiprocessing-fork" in cmdline:
                return int(child)
        time.sleep(0.05)
    raise AssertionError(f"worker {pid} started no helper within {within} s")


def test_reserve_devices_needs_gloo(distributed, monkeypatch):
    distributed.reserve_devices(2)  # this torch has torch.distributed with gloo
    monkeypatch.setattr(distributed.dist, "is_gloo_available", lambda: False)
    with pytest.raises(RuntimeError, match="with the gloo backend"):
        distributed.reserve_devices(2)
