"""PyTorch split steps (backends.torch_backend.distributed): R gloo processes under DistributedDataParallel with
`no_sync()` accumulation, and the same loop without DDP for R = 1, against the numpy oracle's serial split and
against the backend's own single-device twin (common.distributed.single_device), both reductions, float64 and
float32, the shards of a ragged step; a helper rank that fails, hangs or is killed ends the run with an error
naming it, and the rendezvous folder is removed. Native mode (common.native.SPLIT_IDIOMS, torch row): every case
runs and records its split and shards, and the DistributedSampler idiom is measured from the record against
torch's sampler algorithm written out here (padding to ⌈N/R⌉·R with the first rows, rank r every R-th row,
`set_epoch`, drop_last). batch_norm with sync = true beyond the shared cases (norm.py: all-reduces on the CPU):
on images, and without a process group (R = 1, K = 2), against the oracle.

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

from common.distributed import Layout
from common.spec import Spec, typed, validate
from tests.dp_acceptance import *  # noqa: F403  (the shared acceptance tests, collected on this module's `runs`)
from tests.support import (
    DP_CASES,
    ROOT,
    bn_spec,
    dp_jobs,
    dp_spec,
    installed,
    make_spec,
    max_rel_gap,
    prepared_adapter,
    run_in_process,
    worker_records,
)

pytestmark = pytest.mark.skipif(not installed("torch"), reason="needs torch (pip install -e '.[torch]')")

RENDEZVOUS = "parity-torch-ddp-*"
TORCH_SPLIT = {"sampler": "distributed_sampler", "loss": "part_mean", "accumulate": "loss_over_k"}
# Native sampler runs: iris with 29 test rows leaves N = 121 training rows over R = 3 ranks (⌈N/R⌉·R = 123, two
# rows repeated; ⌊N/R⌋·R = 120), c = 5 rows per rank and micro-batch, K = 2.
SAMPLER_N, SAMPLER_R, SAMPLER_C, SAMPLER_K = 121, 3, 5, 2


def sampler_spec(last_batch: str, epochs: int):
    return make_spec(
        dtype="float64",
        mode="native",
        data={"test_fraction": 29 / 150},
        distributed={"replicas": SAMPLER_R, "batch": "per_replica"},
        batching={"batch_size": SAMPLER_C, "accumulate": SAMPLER_K, "last_batch": last_batch},
        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9},
        train={"epochs": epochs},
    )


def synchronised(case: str, **changes: dict) -> Spec:
    """bn_spec(case) with every batch_norm layer synchronised, then `changes` ({section: {key: value}}) applied."""
    spec = bn_spec(case).to_dict()
    for layer in spec["model"]["layers"]:
        if layer["kind"] == "batch_norm":
            layer["sync"] = True
    for section, values in changes.items():
        spec[section].update(values)
    return typed(validate(spec))


SYNC_CASES = {  # the all-reduces over (N, H, W); plain BatchNorm per micro-batch without a group
    "img-sync": synchronised("bn-img-r2"),
    "r1-k2-sync": synchronised("bn-r2-sync", distributed={"replicas": 1}, batching={"accumulate": 2}),
}


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
    """(record JSON, NPZ) of every acceptance run (tests.support.dp_jobs), the native sampler runs and SYNC_CASES,
    trained by one torch worker, which leaves no rendezvous folder behind."""
    base = tmp_path_factory.mktemp("torch-dp")
    jobs = dp_jobs() | {("sampler", "keep"): sampler_spec("keep", 2), ("sampler", "drop"): sampler_spec("drop", 1)}
    jobs |= {("sync", case): spec for case, spec in SYNC_CASES.items()}
    records = worker_records("torch", jobs, base, env={"TMPDIR": str(base)})
    assert not list(base.glob(RENDEZVOUS))
    return records


@pytest.mark.parametrize("case", sorted(DP_CASES))
def test_native_runs_record_the_torch_idiom_and_the_rows_each_part_was_fed(runs, case):
    rec = runs[("native", case)][0]
    layout = Layout.from_spec(dp_spec(case))
    assert rec["split"] == TORCH_SPLIT
    for step in rec["steps"]:
        assert len(step["shards"]) == layout.replicas
        assert {len(replica) for replica in step["shards"]} <= set(range(1, layout.accumulate + 1))
        fed = [i for replica in step["shards"] for part in replica for i in part]
        assert sorted(fed) == sorted(step["batch_ids"]) and len(fed) == step["batch_size"]
    for epoch in (1, 2):  # 120 rows, a multiple of R: the sampler pads nothing, every row once
        fed = [i for s in rec["steps"] if s["epoch"] == epoch for i in s["batch_ids"]]
        assert sorted(fed) == list(range(120))


def _rank_rows(steps: list[dict], epoch: int) -> list[list[int]]:
    """Per rank, the rows its DataLoader fed in `epoch`, in order (its micro-batches concatenated)."""
    ranks = [[] for _ in range(SAMPLER_R)]
    for step in (s for s in steps if s["epoch"] == epoch):
        for r, replica in enumerate(step["shards"]):
            ranks[r] += [i for part in replica for i in part]
    return ranks


def _sampler_order(epoch: int, seed: int) -> list[int]:
    """torch's DistributedSampler, written out: randperm(N) of a Generator seeded seed + epoch."""
    import torch

    return torch.randperm(SAMPLER_N, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


def test_native_sampler_pads_with_the_first_rows_and_deals_every_rth_row_to_each_rank(runs):
    rec = runs[("sampler", "keep")][0]
    steps, per_rank = rec["steps"], -(-SAMPLER_N // SAMPLER_R)  # ⌈121/3⌉ = 41 rows each
    assert rec["split"] == TORCH_SPLIT
    orders = []
    for epoch in (1, 2):
        ranks = _rank_rows(steps, epoch)
        assert [len(rows) for rows in ranks] == [per_rank] * SAMPLER_R
        padded = [ranks[i % SAMPLER_R][i // SAMPLER_R] for i in range(per_rank * SAMPLER_R)]  # rank r: padded[r::R]
        assert sorted(padded[:SAMPLER_N]) == list(range(SAMPLER_N))  # every row once, then
        assert padded[SAMPLER_N:] == padded[: per_rank * SAMPLER_R - SAMPLER_N]  # the 2 extra: the first rows again
        assert padded[:SAMPLER_N] == _sampler_order(epoch - 1, rec["spec"]["seed"])  # set_epoch(e): seed + e
        assert sum(s["batch_size"] for s in steps if s["epoch"] == epoch) == 123
        # 41 rows by c = 5: 8 micro-batches of 5 and one of 1, two per step: 4 steps of 2 and a last one of 1
        epoch_steps = [s for s in steps if s["epoch"] == epoch]
        assert [[len(part) for part in s["shards"][0]] for s in epoch_steps] == [[5, 5]] * 4 + [[1]]
        orders.append(padded)
    assert orders[0] != orders[1]


def test_native_sampler_drops_the_tail_under_drop_last(runs):
    rec = runs[("sampler", "drop")][0]
    ranks = _rank_rows(rec["steps"], 1)
    kept = SAMPLER_N // SAMPLER_R * SAMPLER_R  # ⌊121/3⌋·3 = 120
    assert sum(s["batch_size"] for s in rec["steps"]) == kept
    assert [ranks[i % SAMPLER_R][i // SAMPLER_R] for i in range(kept)] == _sampler_order(0, rec["spec"]["seed"])[:kept]


@pytest.mark.parametrize("case", sorted(SYNC_CASES))
def test_synchronised_batch_norm_on_images_and_without_a_group_matches_the_oracle(runs, case):
    losses, params = max_rel_gap(runs[("sync", case)], run_in_process("numpy", SYNC_CASES[case]))
    assert losses <= 1e-9 and params <= 1e-9, (losses, params)


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
