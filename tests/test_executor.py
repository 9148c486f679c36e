"""Executors (docs/design.md, "Executors"): Ray tasks give the rows and records local processes give, and
RAY_ADDRESS joins a running cluster instead of starting an instance. The kill-and-resume test of both executors is
in tests/test_sweep.py."""

import csv
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cli import main
from common import record
from tests.support import free_ports, needs_all_frameworks

ROOT = Path(__file__).resolve().parent.parent
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed ('.[ray]')")
pytestmark = [pytest.mark.ray, needs_ray, pytest.mark.xdist_group("ray")]  # one Ray instance at a time on this machine
SMALL = """
name = "small"
dtype = "float64"
[train]
epochs = 2
[sweep]
grid = { "optimizer.lr" = [0.01, 0.02, 0.03] }
backends = []
"""


def _rows(path: Path) -> list[tuple]:
    with path.open() as handle:
        return sorted(tuple(sorted(row.items())) for row in csv.DictReader(handle))


def _sweep(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", "sweep", *args, "--quiet"],
        cwd=cwd,
        env={**(env or os.environ), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.cross
@needs_all_frameworks
def test_preset_sweep_on_ray_gives_the_local_rows(tmp_path):
    for executor in ("local", "ray"):
        proc = _sweep(["iris-l2", "--out", executor, "--workers", "2", "--executor", executor], tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    local, ray = _rows(tmp_path / "local" / "results.csv"), _rows(tmp_path / "ray" / "results.csv")
    assert len(local) > 0 and {dict(r)["backend"] for r in local} == {"numpy", "torch", "tf", "jax"}
    assert ray == local  # every column of every row, values included


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the run uses torch")
def test_run_on_ray_gives_the_local_records(tmp_path):
    run = ["run", "--backends", "torch", "--set", "train.epochs=2", "--quiet", "--jobs", "2"]
    assert main([*run, "--out", str(tmp_path / "local")]) == 0
    assert main([*run, "--executor", "ray", "--out", str(tmp_path / "ray")]) == 0
    for backend in ("numpy", "torch"):
        (local, local_npz), (ray, ray_npz) = (record.read(tmp_path / r / "records", backend) for r in ("local", "ray"))
        for key in ("steps", "epochs", "spec", "idioms"):
            assert ray[key] == local[key], key
        assert ray["timing"]["concurrent"] == 2 and set(ray_npz) == set(local_npz)
        for name, value in local_npz.items():
            np.testing.assert_array_equal(value, ray_npz[name], err_msg=name)
    assert (tmp_path / "ray" / "logs" / "torch.log").read_text().count("[torch] epoch") == 2


def test_ray_address_joins_the_running_cluster(tmp_path):
    """A head started apart (`ray start --head`, token authentication as Ray's default) is used through
    RAY_ADDRESS: the sweep reports that cluster's address and finishes every run on it."""
    (tmp_path / "home").mkdir()
    (tmp_path / "s.toml").write_text(SMALL)
    env = {**os.environ, "HOME": str(tmp_path / "home"), "RAY_AUTH_MODE": "token"}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray_cli, "get-auth-token", "--generate"], env=env, capture_output=True, check=True, timeout=60)
    port = free_ports()[0]
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--port", str(port), "--num-cpus", "2", "--include-dashboard=false"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while (
            time.time() < deadline
            and subprocess.run(
                [ray_cli, "status", "--address", f"127.0.0.1:{port}"], env=env, capture_output=True, timeout=60
            ).returncode
        ):
            time.sleep(1)
        proc = _sweep(
            ["s.toml", "--out", "out", "--executor", "ray"], tmp_path, {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
        )
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "parity: ray: the cluster at" in proc.stderr and f":{port} (1 node(s), 2 CPUs)" in proc.stderr
    assert len({dict(r)["run_key"] for r in _rows(tmp_path / "out" / "results.csv")}) == 3


def test_unreachable_address_is_one_line_exit_2(tmp_path):
    (tmp_path / "s.toml").write_text(SMALL)
    proc = _sweep(
        ["s.toml", "--out", "out", "--executor", "ray", "--address", f"127.0.0.1:{free_ports()[0]}"], tmp_path
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--address" in proc.stderr and "no Ray cluster answers" in proc.stderr
    assert not (tmp_path / "out").exists()
