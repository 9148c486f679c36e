"""Executors: where a command's backend worker processes run (docs/design.md, "Executors").

A task is one backend's worker process over a list of jobs (`python -m backends.worker`: one framework import for
all of them). `Local` starts the processes on this machine. `Ray` runs each one inside a Ray task (`ray.init()`: a
local instance, or the cluster at `--address` / RAY_ADDRESS); the task streams the worker's output lines back, and
after each `done <i>` line the files of job i's records folder, which the driver writes where the job asked. Either
way only the driver writes outputs, as results arrive, so an interrupted command resumes the same way on both. Up to
`jobs` tasks run at a time; an interrupt stops every running one before it propagates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from backends import REFERENCE
from common import InputError

ROOT = Path(__file__).resolve().parent.parent  # workers run here (the repository root)
EXECUTORS = ("local", "ray")
RAY_HINT = "pip install -c constraints.txt -e '.[ray]'"


@dataclass
class Task:
    """One worker process: `backend` over `jobs` ([{"spec": JSON form, "out": absolute records folder}]), as the
    caller wrote them to `jobs_file`; its merged stdout and stderr are kept in `log`; `gpus`: the GPUs it needs."""

    backend: str
    jobs_file: Path
    log: Path
    gpus: float = 0.0

    def jobs(self) -> list[dict]:
        return json.loads(self.jobs_file.read_text(encoding="utf-8"))


@dataclass
class BackendResult:
    backend: str
    returncode: int
    message: str  # killed by a signal, the install hint, or the worker's own error line when it failed
    seconds: float = 0.0  # the task's wall time

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Display(Protocol):
    """What a command shows while its tasks run (benchmarks.progress), called from the tasks' threads."""

    def started(self, backend: str) -> None: ...

    def line(self, backend: str, text: str) -> None: ...

    def finished(self, backend: str, ok: bool, message: str = "") -> None: ...


LineHandler = Callable[[Task, str], None]  # one line of a task's output, called from the task's thread


def signal_message(returncode: int) -> str | None:
    """`killed by SIGKILL` for a negative return code (the process died of that signal), else None."""
    if returncode >= 0:
        return None
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def failure_message(backend: str, returncode: int, lines: list[str]) -> str:
    """Why a worker failed: its signal, else the install hint, else the exception line after its own
    `parity: backend ... failed` header, never a line of the framework's log noise."""
    if returncode == 0:
        return ""
    killed = signal_message(returncode)
    if killed:
        return killed
    stripped = [line.strip() for line in lines]
    missing = [line for line in stripped if "is not available" in line]
    if missing:
        return missing[0]
    headers = [i for i, line in enumerate(stripped) if line.startswith(f"parity: backend '{backend}' failed")]
    if headers:  # the exception line ends the traceback after the header: the first unindented line after it
        start, exc, in_traceback = headers[-1], "", False
        for line in lines[start + 1 :]:
            if line.startswith("Traceback (most recent call last):"):
                in_traceback = True
            elif in_traceback and line.strip() and not line[0].isspace():
                exc, in_traceback = line.strip(), False
        return f"{stripped[start].removeprefix('parity: ').rstrip(':')}: {exc}" if exc else stripped[start]
    return f"exit {returncode} (see the log)"


def stop(proc: subprocess.Popen) -> None:
    """Terminate a worker (an interrupt must not leave it writing) and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cores() -> int:
    """The cores this process may use (the default of --jobs, and of bench's --threads)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_command(python: str, backend: str, jobs_file: Path, concurrent: int) -> list[str]:
    return [python, "-m", "backends.worker", backend, str(jobs_file), "--progress", "--concurrent", str(concurrent)]


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    """A worker with stdout and stderr merged into one line stream (`done <i>` lines and progress in order)."""
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)


class Executor:
    """Runs tasks up to `jobs` at a time; `run` returns their results in the tasks' order. `gpus`: the GPUs each
    framework task declares (`--gpus-per-task`; the numpy oracle needs none)."""

    name = ""

    def __init__(self, jobs: int, gpus: float = 0.0):
        self.jobs, self.gpus = jobs, gpus

    def gpus_for(self, backend: str) -> float:
        return 0.0 if backend == REFERENCE else self.gpus

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def run(
        self,
        tasks: list[Task],
        display: Display | None = None,
        on_line: LineHandler | None = None,
        on_idle: Callable[[], object] | None = None,
    ) -> list[BackendResult]:
        """Every task; `display` told as each one starts, prints a line and ends; `on_line` for each line. `on_idle`
        runs once, in a thread of its own, when a task ends with none left waiting: a slot stays free from then on,
        so the caller can prepare what it does after the tasks (with one slot, that is when the last one ends)."""
        concurrent = max(1, min(self.jobs, len(tasks)))
        pool = ThreadPoolExecutor(max_workers=concurrent)
        idle = _Idle(len(tasks), on_idle)
        try:
            futures = [pool.submit(self._task, task, concurrent, on_line, display, idle) for task in tasks]
            return [future.result() for future in futures]
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            self.stop_all()
            raise
        finally:
            pool.shutdown(wait=True)

    def _task(
        self, task: Task, concurrent: int, on_line: LineHandler | None, display: Display | None, idle: _Idle
    ) -> BackendResult:
        lines, started = [], time.perf_counter()
        idle.started()
        if display:
            display.started(task.backend)

        def seen(line: str) -> None:
            lines.append(line)
            if on_line:
                on_line(task, line)
            if display:
                display.line(task.backend, line)

        code = self.execute(task, concurrent, seen)
        task.log.parent.mkdir(parents=True, exist_ok=True)
        task.log.write_text("".join(lines), encoding="utf-8")
        result = BackendResult(
            task.backend, code, failure_message(task.backend, code, lines), time.perf_counter() - started
        )
        if display:
            display.finished(task.backend, result.ok, result.message)
        idle.ended()
        return result

    def execute(self, task: Task, concurrent: int, seen: Callable[[str], None]) -> int:
        """Run one task, passing each output line to `seen`; its exit code (−signal when killed)."""
        raise NotImplementedError

    def stop_all(self) -> None:
        """Stop every running task, and start none after this."""
        raise NotImplementedError


class _Idle:
    """Starts `then` in a daemon thread the first time a task ends with none of the `waiting` ones left to start.
    `then` only prepares (an import, say): what it raises is left for the caller's own call to raise again."""

    def __init__(self, waiting: int, then: Callable[[], object] | None):
        self.waiting, self.then, self.lock = waiting, then, threading.Lock()

    def started(self) -> None:
        with self.lock:
            self.waiting -= 1

    def ended(self) -> None:
        with self.lock:
            then, self.then = (self.then, None) if self.waiting == 0 else (None, self.then)
        if then is not None:
            threading.Thread(target=_quietly, args=(then,), daemon=True).start()


def _quietly(call: Callable[[], object]) -> None:
    with contextlib.suppress(Exception):
        call()


class Local(Executor):
    """Worker processes on this machine. `start` refuses to start one once `stop_all` has run (a thread may be
    about to start one when the main thread is interrupted)."""

    name = "local"

    def __init__(self, jobs: int = 1, gpus: float = 0.0):
        super().__init__(jobs, gpus)
        self.lock, self.procs, self.stopping = threading.Lock(), set(), False

    def execute(self, task: Task, concurrent: int, seen: Callable[[str], None]) -> int:
        with self.lock:
            if self.stopping:
                return -signal.SIGINT
            proc = _start(worker_command(sys.executable, task.backend, task.jobs_file, concurrent), ROOT)
            self.procs.add(proc)
        with proc:
            try:
                for line in proc.stdout:
                    seen(line)
                return proc.wait()
            except BaseException:
                stop(proc)
                raise

    def stop_all(self) -> None:
        with self.lock:
            self.stopping = True
            procs = list(self.procs)
        for proc in procs:
            stop(proc)


def ray_task(backend: str, jobs: list[dict], concurrent: int, root: str) -> Iterator[tuple]:
    """The body of a Ray task (a generator: Ray streams what it yields): the worker runs in this node's temporary
    folder; yields ("files", i, {relative path: bytes}) when job i is done, then ("line", text) for every output
    line, and ("exit", code) last. The repository root is `root` where this node has it, else the task's working
    folder (a cluster's runtime_env working_dir)."""
    here = Path(root) if (Path(root) / "backends" / "worker.py").is_file() else Path.cwd()
    with tempfile.TemporaryDirectory(prefix="parity-ray-") as tmp:
        outs = [Path(tmp) / str(i) for i in range(len(jobs))]
        jobs_file = Path(tmp) / "jobs.json"
        jobs_file.write_text(
            json.dumps([{**job, "out": str(out)} for job, out in zip(jobs, outs, strict=True)]), encoding="utf-8"
        )
        proc = _start(worker_command(sys.executable, backend, jobs_file, concurrent), here)
        try:
            for line in proc.stdout:
                if line.startswith("done "):
                    out = outs[int(line.split()[1])]
                    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
                    yield ("files", int(line.split()[1]), files)
                yield ("line", line)
            yield ("exit", proc.wait())
        finally:  # cancelled (KeyboardInterrupt in this task) or done: no worker left writing
            stop(proc)


def _reachable(address: str) -> None:
    """Refuse at once an address where nothing listens (ray.init would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        raise InputError(f"--address / RAY_ADDRESS '{address}': not host:port")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        raise InputError(
            f"--address / RAY_ADDRESS '{address}': no Ray cluster answers ({exc.strerror or exc})"
        ) from None


class Ray(Executor):
    """Each task a Ray task with its resources declared (1 CPU, `Task.gpus` GPUs). With no address, `ray.init()`
    starts a local instance (shut down on exit); RAY_ADDRESS or `address` connects to a running cluster, which
    gets this repository as the tasks' working_dir. `jobs` None: as many tasks at a time as the cluster has CPUs."""

    name = "ray"

    def __init__(self, jobs: int | None, address: str | None, gpus: float = 0.0):
        super().__init__(jobs or 1, gpus)
        self.address, self.requested = address or os.environ.get("RAY_ADDRESS") or None, jobs
        self.lock, self.running, self.stopping, self.started = threading.Lock(), set(), False, False

    def __enter__(self) -> Ray:
        try:
            import ray
        except ImportError:
            raise InputError(f"--executor ray: ray is not installed; install it with: {RAY_HINT}") from None
        self.ray = ray
        if self.address:
            _reachable(self.address)
        options = {"logging_level": logging.WARNING, "log_to_driver": False, "include_dashboard": False}
        if self.address:
            options["runtime_env"] = {"working_dir": str(ROOT), "excludes": [".venv", ".tox", "runs"]}
        else:
            options["num_cpus"] = cores()
        try:  # "local": a new instance even where a `ray start` cluster runs (ray.init(None) would join it)
            ray.init(address=self.address or "local", **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"--address / RAY_ADDRESS '{self.address}'" if self.address else "--executor ray"
            raise InputError(f"{where}: cannot start or reach Ray ({str(exc).splitlines()[0]})") from None
        self.started = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.jobs = self.requested or max(1, cpus)
        self.remote = ray.remote(ray_task)
        where = "the cluster" if self.address else "a new local instance"
        print(
            f"parity: ray: {where} at {ray.get_runtime_context().gcs_address} ({len(ray.nodes())} node(s), {cpus} "
            f"CPUs), {self.jobs} task(s) at a time",
            file=sys.stderr,
            flush=True,
        )
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.ray.shutdown()  # disconnects from a cluster; stops a local instance it started

    def execute(self, task: Task, concurrent: int, seen: Callable[[str], None]) -> int:
        jobs = task.jobs()
        with self.lock:
            if self.stopping:
                return -signal.SIGINT
            stream = self.remote.options(num_cpus=1, num_gpus=task.gpus).remote(
                task.backend, jobs, concurrent, str(ROOT)
            )
            self.running.add(stream)
        try:
            for ref in stream:
                kind, *rest = self.ray.get(ref)
                if kind == "files":
                    out = Path(jobs[rest[0]]["out"])
                    for name, data in rest[1].items():
                        (out / name).parent.mkdir(parents=True, exist_ok=True)
                        (out / name).write_bytes(data)
                elif kind == "line":
                    seen(rest[0])
                else:
                    return rest[0]
            return -signal.SIGKILL  # the stream ended without an exit code: the task's process died
        except self.ray.exceptions.RayError as exc:  # the task's node or process died, or it was cancelled
            seen(f"parity: backend '{task.backend}' failed as a Ray task: {type(exc).__name__}\n")
            return 3
        finally:
            with self.lock:
                self.running.discard(stream)

    def stop_all(self) -> None:
        with self.lock:
            self.stopping = True
            streams = list(self.running)
        for stream in streams:
            self.ray.cancel(stream)


def make(name: str, jobs: int | None, address: str | None = None, gpus: float = 0.0) -> Executor:
    """The executor `--executor NAME` asks for (`address` only with ray); use it as a context manager. `jobs`
    None: the usable cores (local), the cluster's CPUs (ray)."""
    if name not in EXECUTORS:
        raise InputError(f"--executor: unknown executor '{name}' (choose from {', '.join(EXECUTORS)})")
    if jobs is not None and jobs < 1:
        raise InputError(f"--jobs: {jobs} must be at least 1")
    if gpus < 0:
        raise InputError(f"--gpus-per-task: {gpus} must not be negative")
    if address and name != "ray":
        raise InputError("--address: only with --executor ray")
    return Ray(jobs, address, gpus) if name == "ray" else Local(jobs or cores(), gpus)
