"""Executor.run's `on_idle`: once, when a task ends with none left waiting (a slot stays free from then on)."""

import threading
from pathlib import Path

import pytest

from benchmarks.executor import Executor, Task

pytestmark = pytest.mark.framework_free  # no ML framework: runs once, in the torch env (tox.ini)


class Scripted(Executor):
    """Tasks that end when their event is set (or after 10 s, exit code 1); `order` records starts and ends."""

    def __init__(self, jobs: int, events: dict[str, threading.Event]):
        super().__init__(jobs)
        self.events, self.order, self.lock = events, [], threading.Lock()

    def execute(self, task, concurrent, seen):
        with self.lock:
            self.order.append(f"start {task.backend}")
        ok = self.events[task.backend].wait(10)
        with self.lock:
            self.order.append(f"end {task.backend}")
        return 0 if ok else 1


def _tasks(names, tmp_path: Path) -> list[Task]:
    return [Task(name, tmp_path / "jobs.json", tmp_path / f"{name}.log") for name in names]


def test_with_two_slots_it_runs_while_the_long_task_still_runs(tmp_path):
    events = {name: threading.Event() for name in ("long", "a", "b")}
    events["a"].set()
    events["b"].set()
    idle = threading.Event()
    ex = Scripted(2, events)

    def on_idle():
        with ex.lock:
            ex.order.append("idle")
        idle.set()
        events["long"].set()  # the long task ends only once on_idle has run

    results = ex.run(_tasks(["long", "a", "b"], tmp_path), on_idle=on_idle)
    assert [r.returncode for r in results] == [0, 0, 0]
    assert idle.is_set() and ex.order.count("idle") == 1
    # "b" starts when "a" ends (no task waits after that): idle comes after the end of "b", before the end of "long"
    assert ex.order.index("start b") < ex.order.index("idle") < ex.order.index("end long")
    assert ex.order.index("end b") < ex.order.index("idle")


def test_with_one_slot_it_runs_once_after_the_last_task(tmp_path):
    events = {name: threading.Event() for name in ("x", "y")}
    for event in events.values():
        event.set()
    calls = []
    ex = Scripted(1, events)
    done = threading.Event()

    def on_idle():
        with ex.lock:
            calls.append(list(ex.order))
        done.set()

    ex.run(_tasks(["x", "y"], tmp_path), on_idle=on_idle)
    assert done.wait(5)
    assert calls == [["start x", "end x", "start y", "end y"]]


def test_a_failing_on_idle_does_not_fail_the_run(tmp_path):
    events = {"x": threading.Event()}
    events["x"].set()
    raised = threading.Event()

    def on_idle():
        raised.set()
        raise RuntimeError("prepared nothing")

    results = Scripted(2, events).run(_tasks(["x"], tmp_path), on_idle=on_idle)
    assert raised.wait(5) and [r.returncode for r in results] == [0]
