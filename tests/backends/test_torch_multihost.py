"""torch past one machine, tested on one (backends.host, backends.torch_backend.distributed.join_hosts): torchrun
starts `python -m backends.host torch SPEC OUT` once per replica, every rank runs the driver in torchrun's gloo
group, rank 0 alone writes the record, which equals the one-machine run's (`parity run`'s worker, ranks spawned by
rank 0) on the DP case r2-ragged, ≤ 1e-12 relative. Launched as one machine with two processes (`--standalone`, a
c10d rendezvous on a free port) and as two "machines" of one process each (two torchrun launchers, a free port for
their static rendezvous, each its own OUT: the second's stays empty). A process count other than the spec's
replicas, and a process started without torchrun's environment, are bad input: exit 2 and one line."""

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

pytestmark = pytest.mark.skipif(not installed("torch"), reason="needs torch (pip install -e '.[torch]')")

CASE = "r2-ragged"
TIMEOUT_S = 300  # every launched process, rendezvous and training included
RENDEZVOUS = "parity-torch-ddp-*"  # the one-machine path's FileStore folders: torchrun's ranks must make none
LAUNCHER = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def environment(folder: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any launcher's variables, temporary files under `folder`, `extra` set."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER}
    return {**env, "TMPDIR": str(folder), **extra}


def torchrun(*options: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *options, "-m", "backends.host", "torch"]


def finished(returncode: int, output: str, what: str) -> None:
    assert returncode == 0, f"{what} exited with {returncode}:\n{output[-6000:]}"


@pytest.fixture(scope="module")
def spec():
    return dp_spec(CASE)


@pytest.fixture(scope="module")
def spec_file(spec, tmp_path_factory):
    path = write_spec(spec, tmp_path_factory.mktemp("torch-multihost-spec") / f"{CASE}.toml")
    assert load_spec(path).to_dict() == spec.to_dict()
    return path


@pytest.fixture(scope="module")
def one_machine(spec, tmp_path_factory):
    """(record JSON, NPZ) of the spec trained by one torch worker, ranks spawned by rank 0."""
    return run_in_worker("torch", spec, tmp_path_factory.mktemp("torch-one-machine"))


def assert_equal_records(hosted: tuple[dict, dict], one: tuple[dict, dict]) -> None:
    losses, params = max_rel_gap(hosted, one)
    assert losses <= 1e-12 and params <= 1e-12, (losses, params)
    assert [s["batch_ids"] for s in hosted[0]["steps"]] == [s["batch_ids"] for s in one[0]["steps"]]
    assert [s["shards"] for s in hosted[0]["steps"]] == [s["shards"] for s in one[0]["steps"]]
    assert hosted[0]["epochs"] == one[0]["epochs"]  # rank 0's own evaluation, as the one-machine run's rank 0


def test_torchrun_standalone_records_what_one_machine_records(spec_file, one_machine, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [*torchrun("--standalone", "--nproc-per-node", "2"), str(spec_file), str(out)],
        cwd=ROOT,
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    finished(done.returncode, done.stderr, "torchrun --standalone")
    assert sorted(p.name for p in out.iterdir()) == ["torch.json", "torch.npz"]  # one record, no temporaries
    assert_equal_records(record.read(out, "torch"), one_machine)
    assert not list(tmp_path.glob(RENDEZVOUS))  # the ranks joined torchrun's group: none spawned its own


def test_two_launchers_one_per_machine_rank_0_alone_records(spec_file, one_machine, tmp_path):
    """`torchrun --nnodes 2 --node-rank i --master-addr --master-port` as on two machines, each with its own OUT."""
    port, outs = free_ports()[0], {node: tmp_path / f"out{node}" for node in (0, 1)}
    launchers = {}
    for node in (1, 0):  # the second machine first: it waits for the first at the rendezvous
        outs[node].mkdir()
        options = ("--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1")
        options += ("--master-addr", "127.0.0.1", "--master-port", str(port))
        with (tmp_path / f"node{node}.log").open("w") as log:  # a file, not a pipe: neither can block on it
            launchers[node] = subprocess.Popen(
                [*torchrun(*options), str(spec_file), str(outs[node])],
                cwd=ROOT,
                env=environment(tmp_path),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for node, launcher in launchers.items():
            returncode = launcher.wait(timeout=max(1.0, deadline - time.monotonic()))
            finished(returncode, (tmp_path / f"node{node}.log").read_text(), f"torchrun --node-rank {node}")
    finally:
        for launcher in launchers.values():
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait()
    assert sorted(p.name for p in outs[0].iterdir()) == ["torch.json", "torch.npz"]
    assert list(outs[1].iterdir()) == []  # rank 1 trained in lockstep and wrote nothing
    assert_equal_records(record.read(outs[0], "torch"), one_machine)


def test_a_process_count_other_than_the_replicas_is_bad_input(spec_file, tmp_path):
    """What each of torchrun's processes is told (WORLD_SIZE = 3 for a 2-replica spec): exit 2 and one line, before
    any rendezvous (MASTER_PORT points nowhere); then under torchrun itself, which fails as its processes do."""
    env = environment(tmp_path, RANK="0", LOCAL_RANK="0", WORLD_SIZE="3", MASTER_ADDR="127.0.0.1")
    env["MASTER_PORT"] = str(free_ports()[0])
    done = subprocess.run(
        [sys.executable, "-m", "backends.host", "torch", str(spec_file), str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "spec key 'distributed.replicas'" in lines[0], done.stderr
    assert "2 replicas" in lines[0] and "3 processes" in lines[0], lines[0]

    launched = subprocess.run(
        [*torchrun("--standalone", "--nproc-per-node", "3"), str(spec_file), str(tmp_path / "out")],
        cwd=ROOT,
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert launched.returncode != 0
    # each rank refuses before joining; torchrun ends the others at the first exit, so 1 to 3 of them print it
    assert launched.stderr.count("parity: error: spec key 'distributed.replicas': 2 replicas") >= 1, launched.stderr
    assert not (tmp_path / "out").exists()


def test_without_torchruns_environment_it_says_how_to_start_it(spec_file, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "backends.host", "torch", str(spec_file), str(tmp_path / "out")],
        cwd=ROOT,
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "RANK and WORLD_SIZE are not set: start it with torchrun" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


def _rank_processes(tag: str) -> dict[int, int]:
    """{RANK: pid} of the processes whose environment holds PARITY_TEST_TAG=`tag` (Linux /proc)."""
    found = {}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = dict(
                item.split("=", 1) for item in environ.read_bytes().decode(errors="replace").split("\0") if "=" in item
            )
        except OSError:  # gone, or not ours
            continue
        if variables.get("PARITY_TEST_TAG") == tag and "RANK" in variables:
            found[int(variables["RANK"])] = int(environ.parent.name)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds torchrun's processes in /proc")
def test_a_killed_rank_ends_the_run_through_torchrun(spec, tmp_path):
    """torchrun is the failure monitor: rank 1 killed mid-training, it ends rank 0 and fails within seconds (no
    wait for the group's timeout), no record."""
    body = spec.to_dict()
    body["train"]["epochs"] = 5000  # far longer than the test waits
    path = write_spec(typed(validate(body)), tmp_path / "long.toml")
    tag = f"{os.getpid()}-{tmp_path.name}"
    log = (tmp_path / "torchrun.log").open("w")
    launcher = subprocess.Popen(
        [*torchrun("--standalone", "--nproc-per-node", "2"), str(path), str(tmp_path / "out")],
        cwd=ROOT,
        env=environment(tmp_path, PARITY_TEST_TAG=tag),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while len(ranks := _rank_processes(tag)) < 2 and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(ranks) == 2, (tmp_path / "torchrun.log").read_text()
        time.sleep(5.0)  # the ranks are in the group, training
        assert launcher.poll() is None, (tmp_path / "torchrun.log").read_text()
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.monotonic()
        returncode = launcher.wait(timeout=60)
        ended_in = time.monotonic() - killed
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        log.close()
    output = (tmp_path / "torchrun.log").read_text()
    assert returncode != 0 and "SIGKILL" in output, output[-4000:]
    assert ended_in < 30, ended_in
    assert not _rank_processes(tag)  # rank 0 ended too
    assert not (tmp_path / "out").exists()
