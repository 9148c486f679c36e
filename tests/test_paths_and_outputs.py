"""Issue #10, categories 1, 4 and 5: paths from any folder, output folders written whole or not at all (lock,
temporary sibling, replace-whole, Ctrl-C), failures reported by signal, exit codes; `parity` alone, `presets`.

The `parity` runs use `--backends torch` and 1-epoch iris specs so each stays a few seconds; signals are real.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import runner
from benchmarks.cli import main
from benchmarks.executor import Local, failure_message, signal_message
from benchmarks.presets import list_presets
from common.traps import CATALOGUE

ROOT = Path(__file__).resolve().parent.parent
PARITY = [sys.executable, "-m", "benchmarks"]
FAST = ["--backends", "torch", "--set", "train.epochs=1", "--quiet"]
LONG = ["--backends", "torch", "--set", "train.epochs=100000", "--set", "data.name=iris"]
SWEEP_PRESET = """
name = "path-sweep"
dtype = "float64"
[train]
epochs = 1
[sweep]
grid = { "optimizer.lr" = [0.01] }
backends = []
"""

pytestmark = pytest.mark.skipif(
    __import__("importlib").util.find_spec("torch") is None, reason="the runs here use the torch backend"
)


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def interruptible() -> None:
    """In a child before exec: SIGINT back to its default, so that Python turns it into KeyboardInterrupt even
    when these tests run with SIGINT ignored (a background job of a non-interactive shell, tox under it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def long_run(cwd: Path) -> subprocess.Popen:
    """A run that trains until interrupted, into `cwd/out`, its progress lines on a pipe."""
    return subprocess.Popen(
        [*PARITY, "run", *LONG, "--out", "out"],
        cwd=cwd,
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )


def parity(args, cwd, timeout=180):
    return subprocess.run([*PARITY, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def one_line_error(text: str, fragment: str) -> None:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("parity: error: ") and fragment in lines[0], text
    assert "Traceback" not in text


def leftovers(folder: Path) -> list[str]:
    """Temporary folders, moved-aside folders and lock files a run leaves beside its output (must be none)."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name.startswith(".")
        and (".tmp-" in p.name or ".old-" in p.name or p.name.endswith(".lock") or ".lockpid-" in p.name)
    )


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_previous_run(folder: Path) -> dict[str, bytes]:
    """A folder as an earlier parity run left it, plus a file of another experiment."""
    (folder / "records").mkdir(parents=True)
    (folder / "spec.json").write_text('{"name": "old"}')
    (folder / "records" / "tf.json").write_text("{}")
    (folder / "other-experiment.txt").write_text("old")
    return tree(folder)


def workers_of(pid: int) -> list[int]:
    """The child processes of `pid`, started by any of its threads (the runner starts workers from a thread pool)."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


# 1. Paths ------------------------------------------------------------------------------------------------------


def test_relative_out_from_another_folder(tmp_path):
    caller = tmp_path / "elsewhere"
    caller.mkdir()
    proc = parity(["run", *FAST, "--out", "rel/out"], caller)
    assert proc.returncode == 0, proc.stderr
    out = caller / "rel" / "out"
    assert (out / "records" / "torch.json").exists() and (out / "records" / "numpy.json").exists()
    assert not (ROOT / "rel").exists()
    assert f"in {out}" in proc.stdout
    jobs = json.loads((out / "jobs.json").read_text())
    assert all(Path(j["out"]).is_absolute() and Path(j["out"]).exists() for j in jobs)
    assert leftovers(caller / "rel") == []


def test_default_out_spec_file_and_set_data_path_are_read_from_the_caller_folder(tmp_path):
    caller = tmp_path / "caller"
    caller.mkdir()
    rows = ["a,b,label"] + [f"{i % 7},{(i * 3) % 5},{i % 2}" for i in range(40)]
    (caller / "data.csv").write_text("\n".join(rows) + "\n")
    (caller / "exp.toml").write_text('name = "paths-from-caller"\n[train]\nepochs = 1\n')
    args = ["run", "exp.toml", "--backends", "torch", "--quiet"]
    args += ["--set", 'data.name="csv"', "--set", "data.path=data.csv", "--set", 'data.label_column="label"']
    proc = parity(args, caller)
    assert proc.returncode == 0, proc.stderr
    out = caller / "runs" / "paths-from-caller"
    assert (out / "records" / "torch.json").exists()
    assert json.loads((out / "spec.json").read_text())["data"]["path"] == str(caller / "data.csv")
    assert not (ROOT / "runs" / "paths-from-caller").exists()


@pytest.mark.parametrize("name", ["a/b", "..", "../escape", "/abs/name", "a\\b", "."])
def test_name_is_not_a_path(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", *FAST, "--set", f"name={json.dumps(name)}"]) == 2
    one_line_error(capsys.readouterr().err, "spec key 'name'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["run", *FAST], ["sweep", "iris-dropout"], ["bench"]])
def test_empty_out_is_refused(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--out", ""]) == 2
    one_line_error(capsys.readouterr().err, "--out")
    assert list(tmp_path.iterdir()) == []


def test_sweep_preset_name_is_not_a_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "../presets/iris-dropout"]) == 2
    one_line_error(capsys.readouterr().err, "unknown")
    assert list(tmp_path.iterdir()) == []


def test_sweep_from_another_folder_with_relative_out(tmp_path):
    caller = tmp_path / "caller"
    caller.mkdir()
    (caller / "p.toml").write_text(SWEEP_PRESET)
    proc = parity(["sweep", "p.toml", "--out", "sw", "--quiet"], caller)
    assert proc.returncode == 0, proc.stderr
    assert (caller / "sw" / "results.csv").read_text().count("numpy|") == 1
    assert not (ROOT / "sw").exists()
    assert leftovers(caller) == []


# 4. Output folders ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where, fragment",
    [
        ("file/out", "is a file, not a folder"),
        ("/proc/parity-out", "cannot write there"),
        (".", "current folder"),
    ],
)
def test_unusable_out_is_refused(where, fragment, tmp_path, monkeypatch, capsys):
    # /proc refuses even root (tests run as root, where a chmod'ed read-only folder would still be writable)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    assert main(["run", *FAST, "--out", where]) == 2
    one_line_error(capsys.readouterr().err, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_bench_out_under_a_file_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    assert main(["bench", "--backends", "torch", "--out", "file/bench"]) == 2
    one_line_error(capsys.readouterr().err, "is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_out_under_a_file_in_a_real_process(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = parity(["run", *FAST, "--out", "file/sub/out"], tmp_path)
    assert proc.returncode == 2
    one_line_error(proc.stderr, "is a file, not a folder")
    assert (tmp_path / "file").read_text() == "x" and proc.stdout == ""


def test_a_folder_parity_did_not_write_is_not_replaced(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    assert main(["run", *FAST, "--out", "mine"]) == 2
    one_line_error(capsys.readouterr().err, "a folder parity did not write")
    assert tree(tmp_path / "mine") == {"thesis.tex": b"precious"}


def test_reused_out_is_replaced_whole(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fake_previous_run(tmp_path / "out")
    assert main(["run", *FAST, "--out", "out"]) == 0
    files = set(tree(tmp_path / "out"))
    assert "other-experiment.txt" not in files and "records/tf.json" not in files
    assert {"spec.json", "records/torch.json", "records/numpy.json", "comparison.json", "report.md"} <= files
    assert json.loads((tmp_path / "out" / "spec.json").read_text())["name"] == "iris-mlp"
    assert leftovers(tmp_path) == []


def test_lock_held_by_a_live_process_refuses_a_second_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = fake_previous_run(tmp_path / "out")
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / ".out.lock").write_text(str(holder.pid))
        assert main(["run", *FAST, "--out", "out"]) == 2
        one_line_error(capsys.readouterr().err, f"in use by another parity run (pid {holder.pid}")
        assert main(["sweep", "iris-dropout", "--out", "out"]) == 2
        one_line_error(capsys.readouterr().err, "in use by another parity run")
    finally:
        holder.kill()
        holder.wait()
    assert tree(tmp_path / "out") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]


def test_stale_lock_is_taken_over_and_its_leftovers_undone(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / ".out.lock").write_text(str(dead.pid))
    (tmp_path / f".out.tmp-{dead.pid}").mkdir()  # the half-written folder of a run killed by SIGKILL
    assert main(["run", *FAST, "--out", "out"]) == 0
    assert (tmp_path / "out" / "records" / "torch.json").exists()
    assert leftovers(tmp_path) == []


def test_concurrent_run_into_the_same_folder_is_refused(tmp_path):
    first = long_run(tmp_path)
    try:
        for line in first.stderr:
            if "[numpy] epoch" in line:
                break
        second = parity(["run", *FAST, "--out", "out"], tmp_path)
        assert second.returncode == 2
        one_line_error(second.stderr, f"in use by another parity run (pid {first.pid}")
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 130
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_sigint_exits_130_and_leaves_the_previous_folder_intact(tmp_path):
    before = fake_previous_run(tmp_path / "out")
    proc = long_run(tmp_path)
    for line in proc.stderr:
        if "[numpy] epoch" in line:
            break
    assert (tmp_path / ".out.lock").exists() and (tmp_path / f".out.tmp-{proc.pid}").is_dir()
    worker = workers_of(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "parity: interrupted" in err and "Traceback" not in err
    assert tree(tmp_path / "out") == before
    assert leftovers(tmp_path) == []
    time.sleep(0.5)
    assert all(not Path(f"/proc/{w}").exists() for w in worker)  # no worker left writing
    assert tree(tmp_path / "out") == before


# 5. Failures and exit codes ------------------------------------------------------------------------------------


def test_workers_killed_by_sigkill_are_reported_by_signal_and_no_verdict_is_given(tmp_path):
    """Every worker is SIGKILLed after its first progress line: each is reported "killed by SIGKILL" (not a line of
    its log), and with no backend run the verdict is no verdict (exit 3), never DIVERGENT."""
    fake_previous_run(tmp_path / "out")
    proc = subprocess.Popen(
        [*PARITY, "run", *LONG, "--out", "out"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    err = []
    for line in proc.stderr:
        err.append(line)
        if line.lstrip().startswith(("[numpy] epoch 1/", "[torch] epoch 1/")):
            for worker in workers_of(proc.pid):
                os.kill(worker, signal.SIGKILL)
    out, rest = proc.communicate(timeout=60)
    err = "".join(err) + rest
    assert proc.returncode == 3, err
    assert "parity: backend 'numpy' failed: killed by SIGKILL" in err
    assert "parity: backend 'torch' failed: killed by SIGKILL" in err
    assert "NO VERDICT: no backend ran" in out and "DIVERGENT" not in out and "Traceback" not in err
    report = (tmp_path / "out" / "report.md").read_text()
    assert "no backend ran" in report and "DIVERGENT" not in report
    assert json.loads((tmp_path / "out" / "comparison.json").read_text())["equivalent"] is False
    assert not (tmp_path / "out" / "other-experiment.txt").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("code, name", [(-9, "SIGKILL"), (-15, "SIGTERM"), (-11, "SIGSEGV"), (-6, "SIGABRT")])
def test_signal_names(code, name):
    assert signal_message(code) == f"killed by {name}"
    assert failure_message("tf", code, ["W0000 some tensorflow log noise\n"]) == f"killed by {name}"


def test_log_noise_never_stands_in_for_the_error():
    lines = [
        "parity: backend 'tf' failed on spec 'x':\n",
        "Traceback (most recent call last):\n",
        '  File "w.py", line 1, in <module>\n',
        "ValueError: boom\n",
        "I0000 00:00:1700000000.0 1234 service.cc:145] XLA service initialized\n",
        "W0000 tensorflow noise after the error\n",
    ]
    assert failure_message("tf", 3, lines) == "backend 'tf' failed on spec 'x': ValueError: boom"
    message = failure_message("tf", 3, [*lines[:4], "[tf] epoch 1/2 loss 1\n"])
    assert message == "backend 'tf' failed on spec 'x': ValueError: boom"
    assert failure_message("tf", 3, ["W0000 noise only\n"]) == "exit 3 (see the log)"


# CLI usability -------------------------------------------------------------------------------------------------


def test_parity_alone_prints_usage(tmp_path):
    proc = parity([], tmp_path)
    assert proc.returncode == 2
    assert proc.stdout.startswith("usage: parity") and "{run,explain,sweep,bench,conformance,presets}" in proc.stdout
    assert "exit codes:" in proc.stdout and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_presets_lists_presets_and_traps(tmp_path):
    proc = parity(["presets"], tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    for name in list_presets():
        assert f"  {name} " in proc.stdout
    assert "iris 4-32-3 MLP, batch 16, SGD" in proc.stdout  # iris-dropout's description line
    for trap in CATALOGUE:
        assert trap.id in proc.stdout and trap.title in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_help_documents_set_out_and_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "override one spec key" in text and "replaced whole" in text
    assert '"inconclusive"' in text and "130" in text
    readme = (ROOT / "README.md").read_text()
    design = (ROOT / "docs" / "design.md").read_text()
    assert '"inconclusive" both exit 1' in readme.split("Exit codes (")[1].split("\n\n")[0]
    assert '"inconclusive" both give 1' in design.split("## Exit codes")[1].split("## ")[0]


def test_runner_hands_workers_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = []
    monkeypatch.setattr(Local, "execute", lambda self, task, concurrent, line: seen.append(task.jobs_file) or 0)
    from common.spec import load_spec

    runner.run_all(["torch"], [(load_spec(None), Path("rel/records"))], Path("work"), progress=False)
    jobs_file = seen[0]
    assert jobs_file.is_absolute() and jobs_file == tmp_path / "work" / "jobs.json"
    assert json.loads(jobs_file.read_text())[0]["out"] == str(tmp_path / "rel" / "records")


def test_native_mode_with_seeds_inconclusive_exits_1_as_documented(tmp_path, capsys):
    argv = ["run", *FAST, "--seeds", "2", "--set", 'mode="native"', "--out", str(tmp_path / "out")]
    code = main(argv)
    out = capsys.readouterr().out
    assert "inconclusive" in out and "NOT SHOWN EQUIVALENT" in out
    assert code == 1
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert 'with --seeds (either mode), a pair not shown "equivalent"' in capsys.readouterr().out
    assert (tmp_path / "out" / "seeds" / "seed-1" / "records" / "torch.json").exists()
