"""JAX past one machine, tested on one (backends.host, backends.jax_backend.distributed.join_hosts): one process per
"host", `JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i python -m backends.host jax SPEC
OUT` (a free port, each process its own OUT), each with one host device and gloo collectives after
`jax.distributed.initialize`; the mesh spans both processes' devices, every process trains the spec in lockstep and
rank 0 alone writes the record, which equals the one-machine run's (`parity run`'s worker, two host devices in one
process) on the DP case r2-ragged, ≤ 1e-12 relative, shards and evaluation included; the other OUT stays empty. A
process count that does not divide the spec's replicas, and a process started without the launcher's environment,
are bad input: exit 2 and one line. A process killed mid-training ends the other within seconds (its gloo collective
fails; the coordination service's heartbeat, distributed.HEARTBEAT_S, bounds it otherwise), no record."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import record
from common.spec import load_spec, typed, validate
from tests.support import ROOT, dp_spec, free_ports, installed, max_rel_gap, run_in_worker, write_spec

pytestmark = pytest.mark.skipif(not installed("jax"), reason="needs jax, flax and optax (pip install -e '.[jax]')")

CASE = "r2-ragged"
TIMEOUT_S = 300  # every launched process, joining and training included
LAUNCHER = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS")


def environment(folder: Path, **extra: str) -> dict[str, str]:
    """This process's environment without the launcher's variables (nor an XLA_FLAGS device count), temporary files
    under `folder`, `extra` set."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER and k != "XLA_FLAGS"}
    return {**env, "TMPDIR": str(folder), "JAX_PLATFORMS": "cpu", **extra}


def host(spec_file: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "backends.host", "jax", str(spec_file), str(out)]


@pytest.fixture(scope="module")
def spec():
    return dp_spec(CASE)


@pytest.fixture(scope="module")
def spec_file(spec, tmp_path_factory):
    path = write_spec(spec, tmp_path_factory.mktemp("jax-multihost-spec") / f"{CASE}.toml")
    assert load_spec(path).to_dict() == spec.to_dict()
    return path


@pytest.fixture(scope="module")
def one_machine(spec, tmp_path_factory):
    """(record JSON, NPZ) of the spec trained by one jax worker on two host devices."""
    return run_in_worker("jax", spec, tmp_path_factory.mktemp("jax-one-machine"))


def launch(spec_file: Path, tmp_path: Path) -> tuple[dict[int, subprocess.Popen], dict[int, Path]]:
    """Processes 0 and 1 of a two-process run on a free port, each with its own OUT and log file under tmp_path."""
    port, outs = free_ports()[0], {i: tmp_path / f"out{i}" for i in (0, 1)}
    processes = {}
    for i in (1, 0):  # process 1 first: it waits for the coordinator, which process 0 starts
        outs[i].mkdir()
        with (tmp_path / f"process{i}.log").open("w") as log:  # a file, not a pipe: neither can block on it
            processes[i] = subprocess.Popen(
                host(spec_file, outs[i]),
                cwd=ROOT,
                env=environment(
                    tmp_path,
                    JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                    JAX_NUM_PROCESSES="2",
                    JAX_PROCESS_ID=str(i),
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    return processes, outs


def stop(processes: dict[int, subprocess.Popen]) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def test_two_processes_one_device_each_record_what_one_machine_records(spec_file, one_machine, tmp_path):
    processes, outs = launch(spec_file, tmp_path)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for i, process in processes.items():
            returncode = process.wait(timeout=max(1.0, deadline - time.monotonic()))
            log = (tmp_path / f"process{i}.log").read_text()
            assert returncode == 0, f"process {i} exited with {returncode}:\n{log[-6000:]}"
    finally:
        stop(processes)
    assert sorted(p.name for p in outs[0].iterdir()) == ["jax.json", "jax.npz"]
    assert list(outs[1].iterdir()) == []  # process 1 trained in lockstep and wrote nothing
    hosted = record.read(outs[0], "jax")
    losses, params = max_rel_gap(hosted, one_machine)
    assert losses <= 1e-12 and params <= 1e-12, (losses, params)
    assert [s["batch_ids"] for s in hosted[0]["steps"]] == [s["batch_ids"] for s in one_machine[0]["steps"]]
    # the shards as the two processes' devices held them (process 1's gathered), the ragged step's empty part too
    assert [s["shards"] for s in hosted[0]["steps"]] == [s["shards"] for s in one_machine[0]["steps"]]
    assert any(part == [] for s in hosted[0]["steps"] for replica in s["shards"] for part in replica)
    assert hosted[0]["epochs"] == one_machine[0]["epochs"]  # evaluation on the replicated parameters


def _bad(spec_file: Path, tmp_path: Path, **launcher: str) -> str:
    """The one stderr line of a process started with `launcher`'s variables, which must exit 2 and write nothing."""
    done = subprocess.run(
        host(spec_file, tmp_path / "out"),
        cwd=ROOT,
        env=environment(tmp_path, **launcher),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert not (tmp_path / "out").exists()
    return lines[0]


def test_a_process_count_other_than_the_replicas_is_bad_input(spec_file, tmp_path):
    """Three processes for a 2-replica spec: exit 2 and one line, before joining (the coordinator's port is free:
    nobody listens there)."""
    line = _bad(
        spec_file,
        tmp_path,
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_ports()[0]}",
        JAX_NUM_PROCESSES="3",
        JAX_PROCESS_ID="0",
    )
    assert line.startswith("parity: error: spec key 'distributed.replicas'"), line
    assert "2 replicas" in line and "3 processes" in line, line


def test_without_the_launchers_environment_it_says_how_to_start_it(spec_file, tmp_path):
    line = _bad(spec_file, tmp_path, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_ports()[0]}")
    assert "JAX_NUM_PROCESSES, JAX_PROCESS_ID are not set" in line and "JAX_PROCESS_ID=i" in line, line


def test_a_killed_process_ends_the_other(spec, tmp_path):
    """Process 1 killed while both train (after their first collective): process 0 fails within seconds, bounded
    by the heartbeat in any case, and writes no record."""
    body = spec.to_dict()
    body["train"]["epochs"] = 5000  # far longer than the test waits
    processes, outs = launch(write_spec(typed(validate(body)), tmp_path / "long.toml"), tmp_path)
    logs = {i: tmp_path / f"process{i}.log" for i in processes}
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not all("connected" in logs[i].read_text() for i in logs) and time.monotonic() < deadline:
            assert all(p.poll() is None for p in processes.values()), logs[0].read_text() + logs[1].read_text()
            time.sleep(0.2)
        time.sleep(3.0)  # training
        assert all(p.poll() is None for p in processes.values()), logs[0].read_text() + logs[1].read_text()
        os.kill(processes[1].pid, signal.SIGKILL)
        killed = time.monotonic()
        returncode = processes[0].wait(timeout=120)
        ended_in = time.monotonic() - killed
    finally:
        stop(processes)
    assert returncode != 0, logs[0].read_text()[-4000:]
    assert ended_in < 60, ended_in
    assert list(outs[0].iterdir()) == []
