"""TensorFlow past one machine, on one machine (backends.host, backends.tf_backend.distributed.join_hosts): two
worker processes, each with its TF_CONFIG, train r2-ragged under MultiWorkerMirroredStrategy (one CPU replica per
worker, collective all-reduces over localhost); worker 0's record equals the one-machine run's (MirroredStrategy
over two logical devices in one worker process) and worker 1 writes nothing. A TF_CONFIG whose workers are not the
spec's replicas, or none, is bad input: exit 2, one line.

Each run is a subprocess (`python -m backends.host tf SPEC OUT`), since MultiWorkerMirroredStrategy must be made
before any TensorFlow op of its process; every wait is bounded by TIMEOUT_S, the ports are free ones."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common import record
from tests.support import ROOT, dp_spec, free_ports, installed, max_rel_gap, run_in_worker, write_spec

pytestmark = pytest.mark.skipif(not installed("tf"), reason="needs tensorflow and keras (pip install -e '.[tf]')")

TIMEOUT_S = 300


def tf_config(workers: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def host_command(spec_file: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "backends.host", "tf", str(spec_file), str(out)]


def launch(spec_file: Path, folder: Path, workers: int) -> list[subprocess.CompletedProcess]:
    """One `backends.host tf` process per worker on localhost, worker i writing into folder/out{i}; each one's
    (returncode, output) once all ended, within TIMEOUT_S."""
    hosts = [f"localhost:{port}" for port in free_ports(workers)]
    procs = []
    for index in range(workers):
        env = {**os.environ, "TF_CONFIG": tf_config(hosts, index)}
        log = (folder / f"log{index}").open("w", encoding="utf-8")
        procs.append(
            (
                subprocess.Popen(
                    host_command(spec_file, folder / f"out{index}"),
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        codes = [proc.wait(timeout=max(deadline - time.monotonic(), 1)) for proc, _ in procs]
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return [(code, (folder / f"log{i}").read_text(encoding="utf-8")) for i, code in enumerate(codes)]


def test_two_workers_record_the_one_machine_run(tmp_path):
    """r2-ragged (R = 2, a ragged last step leaving replica 1 empty): worker 0's losses at every step and final
    parameters equal the one-machine run's to 1e-12 relative, its shards (the ids every replica was fed, gathered
    over the workers) too; worker 1 writes nothing."""
    spec = dp_spec("r2-ragged")
    ends = launch(write_spec(spec, tmp_path / "spec.toml"), tmp_path, workers=2)
    for code, log in ends:
        assert code == 0, log[-4000:]
    assert not (tmp_path / "out1").exists() or not any((tmp_path / "out1").iterdir())
    multi = record.read(tmp_path / "out0", "tf")
    one = run_in_worker("tf", spec, tmp_path / "one")
    losses, params = max_rel_gap(multi, one)
    assert losses <= 1e-12 and params <= 1e-12, (losses, params)
    assert [s["shards"] for s in multi[0]["steps"]] == [s["shards"] for s in one[0]["steps"]]


def _bad(tmp_path, env: dict) -> tuple[int, list[str]]:
    spec_file = write_spec(dp_spec("r2-ragged"), tmp_path / "spec.toml")
    environ = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    done = subprocess.run(
        host_command(spec_file, tmp_path / "out"),
        cwd=ROOT,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("parity: error")]
    assert not (tmp_path / "out").exists()
    return done.returncode, errors


def test_three_workers_for_two_replicas_is_bad_input(tmp_path):
    """TF_CONFIG lists 3 workers, the spec asks for 2 replicas: exit 2 and one line naming the key, before any
    peer is waited for."""
    hosts = [f"localhost:{port}" for port in free_ports(3)]
    code, errors = _bad(tmp_path, {"TF_CONFIG": tf_config(hosts, 0)})
    assert code == 2 and len(errors) == 1, errors
    assert "'distributed.replicas': 2 replicas but TF_CONFIG lists 3 workers" in errors[0]


def test_no_tf_config_is_bad_input(tmp_path):
    code, errors = _bad(tmp_path, {})
    assert code == 2 and len(errors) == 1 and "TF_CONFIG is not set" in errors[0], errors
