"""Progress display: the live table of `run` and the bar of `sweep`/`explain`, on a terminal, in plain logs, quiet."""

import io
import re
import threading

import pytest
from rich.console import Console

from benchmarks import progress
from benchmarks.progress import RunTable, TaskBar


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress, "monotonic", fake)
    return fake


def console(terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=100), buffer


def plain(table: RunTable) -> str:
    """The table as it stands, rendered without colours or live updates."""
    out, buffer = console(False)
    out.print(table)
    return buffer.getvalue()


def feed_run(table: RunTable, clock: Clock) -> None:
    """torch runs to epoch 3 of 5, tf fails, numpy finishes, jax never starts; log noise in between."""
    for backend in ("numpy", "torch", "tf"):
        table.started(backend)
    table.line("torch", "[torch] epoch 1/5 loss 0.9\n")
    table.line("torch", "2024-01-01 W tensorflow: some warning [torch] epoch 9/9 loss 7")  # noise, not a progress line
    table.line("torch", "[torch] epoch 3/5 loss 0.25\n")
    table.line("torch", "I0000 XLA service initialized")
    table.line("numpy", "[numpy] epoch 5/5 loss 0.125")
    clock.now = 112.5
    table.line("numpy", "done 0")
    table.finished("numpy", True)
    table.finished("tf", False, "backend 'tf' failed on spec 'iris': ValueError: boom")


def test_run_table_rows(clock):
    out, buffer = console(True)
    table = RunTable(["numpy", "torch", "tf", "jax"], epochs=5, console=out)
    with table:
        feed_run(table, clock)
    text = plain(table)
    assert re.search(r"numpy\s+done\s+━+\s+5/5\s+0\.125\s+12\.5 s", text), text
    assert re.search(r"torch\s+running\s+━+\s+3/5\s+0\.25\s+12\.5 s", text), text
    assert re.search(r"tf\s+failed\s+0/5\s+-\s+12\.5 s", text), text
    assert re.search(r"jax\s+waiting\s+0/5\s+-\s+-", text), text
    assert "tf failed: backend 'tf' failed on spec 'iris': ValueError: boom" in text
    assert "9/9" not in text and "XLA" not in text and "job" not in text  # noise ignored, one job: no job column
    live = buffer.getvalue()  # the live display drew the same table, in colour, on the console
    assert "\x1b[" in live and "3/5" in live and "0.25" in live and "ValueError: boom" in live
    assert "running" in live and "waiting" in live


def test_run_table_counts_jobs(clock):
    out, _ = console(True)
    table = RunTable(["torch", "jax"], epochs=2, console=out, jobs=3)
    table.started("torch")
    for job in range(2):
        table.line("torch", "[torch] epoch 1/2 loss 0.5")
        table.line("torch", "[torch] epoch 2/2 loss 0.4")
        table.line("torch", f"done {job}")
    table.line("torch", "[torch] epoch 1/2 loss 0.3")
    assert re.search(r"torch\s+running\s+━+\s+1/2\s+3/3\s+0\.3\s", plain(table))  # the third job of three
    assert re.search(r"jax\s+waiting\s+0/2\s+-\s+-\s+-", plain(table))
    table.started("jax")
    table.line("jax", "[jax] epoch 2/2 loss 0.7")
    assert re.search(r"jax\s+running\s+━+\s+2/2\s+1/3\s+0\.7\s", plain(table))
    table.line("jax", "done 0")
    assert re.search(r"jax\s+running\s+━+\s+2/2\s+2/3\s+0\.7\s", plain(table))
    table.finished("jax", True)  # a worker that exits 0 finished every job
    assert re.search(r"jax\s+done\s+━+\s+2/2\s+3/3\s+0\.7\s", plain(table))


def test_run_table_plain_lines(clock):
    out, buffer = console(False)
    with RunTable(["numpy", "torch", "tf", "jax"], epochs=5, console=out) as table:
        feed_run(table, clock)
    assert buffer.getvalue().splitlines() == [
        "parity: running numpy ...",
        "parity: running torch ...",
        "parity: running tf ...",
        "  [torch] epoch 1/5 loss 0.9",
        "  [torch] epoch 3/5 loss 0.25",
        "  [numpy] epoch 5/5 loss 0.125",
        "parity: numpy done (12.5 s)",
    ]  # tf's failure: the command's own line (`parity: backend 'tf' failed: ...`), not the table's
    assert "\x1b[" not in buffer.getvalue()


def test_run_table_plain_job_lines(clock):
    out, buffer = console(False)
    table = RunTable(["torch"], epochs=1, console=out, jobs=2)
    table.started("torch")
    table.line("torch", "[torch] epoch 1/1 loss 0.5")
    table.line("torch", "done 0")
    assert buffer.getvalue().splitlines()[-2:] == ["  [torch] epoch 1/1 loss 0.5", "  [torch] job 1/2 done"]


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "plain"])
def test_quiet_writes_nothing(clock, terminal):
    out, buffer = console(terminal)
    with RunTable(["numpy", "torch", "tf"], epochs=5, enabled=False, console=out) as table:
        feed_run(table, clock)
    with TaskBar(4, done=1, enabled=False, console=out) as bar:
        bar.advance("torch seed=0")
    assert buffer.getvalue() == ""
    assert bar.done == 2


def test_default_console_is_stderr(capsys):
    RunTable(["torch"], epochs=5).started("torch")
    TaskBar(2).advance("torch seed=0")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[0] == "parity: running torch ..."
    assert captured.err.splitlines()[1].startswith("[1/2 runs] torch seed=0 (eta ")


def test_task_bar_plain_lines_resume(clock):
    out, buffer = console(False)
    with TaskBar(10, done=4, console=out) as bar:  # a resumed sweep: 4 of 10 runs finished before
        clock.now = 110.0
        bar.advance("torch lr=0.01 seed=0")  # 10 s a run, 5 left
        clock.now = 130.0
        bar.advance("jax lr=0.01 seed=0")  # 15 s a run, 4 left
        clock.now = 1030.0
        bar.advance("tf lr=0.1 seed=1")  # 310 s a run, 3 left
    assert buffer.getvalue().splitlines() == [
        "[5/10 runs] torch lr=0.01 seed=0 (eta 50 s)",
        "[6/10 runs] jax lr=0.01 seed=0 (eta 60 s)",
        "[7/10 runs] tf lr=0.1 seed=1 (eta 16 min)",
    ]


def test_task_bar_terminal():
    out, buffer = console(True)
    with TaskBar(10, done=3, label="explain runs", console=out) as bar:
        bar.advance("torch lr=0.01 seed=0")
        bar.advance("jax [x] lr=0.01 seed=1")
    text = buffer.getvalue()
    assert "\x1b[" in text and "━" in text
    assert " 5/10" in text and "explain runs" in text and "jax [x] lr=0.01 seed=1" in text and "eta" in text
    assert " 3/10" in text and " 6/10" not in text


def test_threads(clock):
    backends = ["numpy", "torch", "tf", "jax"]
    out, buffer = console(False)
    table = RunTable(backends, epochs=50, console=out, jobs=2)

    def worker(backend):
        table.started(backend)
        for job in range(2):
            for epoch in range(1, 51):
                table.line(backend, f"[{backend}] epoch {epoch}/50 loss {epoch / 100}")
                table.line(backend, "W0000 noise")
            table.line(backend, f"done {job}")
        table.finished(backend, True)

    threads = [threading.Thread(target=worker, args=(b,)) for b in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 4 * (1 + 100 + 2 + 1)
    for backend in backends:  # every line whole and in its thread's order
        mine = [line for line in lines if f" {backend} " in line or line.startswith(f"  [{backend}]")]
        expected = [f"  [{backend}] epoch {e}/50 loss {e / 100}" for e in range(1, 51)]
        assert mine == [
            f"parity: running {backend} ...",
            *expected,
            f"  [{backend}] job 1/2 done",
            *expected,
            f"  [{backend}] job 2/2 done",
            f"parity: {backend} done (0.0 s)",
        ]
        assert re.search(rf"{backend}\s+done\s+━+\s+50/50\s+2/2\s+0\.5\s", plain(table))

    bar_out, bar_buffer = console(False)
    bar = TaskBar(203, done=3, console=bar_out)
    clock.now = 101.0
    threads = [threading.Thread(target=lambda: [bar.advance("run") for _ in range(25)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert bar.done == 203
    counts = [
        int(re.match(r"\[(\d+)/203 runs\] run \(eta \d+ (s|min)\)$", line)[1])
        for line in bar_buffer.getvalue().splitlines()
    ]
    assert counts == list(range(4, 204))
