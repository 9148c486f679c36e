"""Run each backend in its own subprocess (docs/design.md, "Architecture") and collect the records.

Separate processes keep global framework state apart (x64, thread pools, GPU pre-allocation), keep timings from
interfering, and let one backend crash without losing the others. Up to `jobs` backend processes run side by side
(`--jobs`; 1: one after another, for timings taken alone), each record saying how many ran at once
(`timing.concurrent`); each one's progress lines, prefixed with its name, are relayed to stderr as they come, and its
full log is kept in `DIR/logs/<backend>.log`.

Output folders (docs/design.md, "Records"): every path handed to a worker is absolute (workers run with the
repository root as their working folder). `OutputFolder` writes a run into a temporary sibling folder, holds a lock
file beside the target (`.<name>.lock`, holding the pid; a lock whose pid is dead is stale and taken over), and
moves the finished folder into place, replacing a previous one whole. `folder_lock` is the lock alone (sweeps keep
their resumable, append-only folder).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common import InputError
from common.spec import Spec


@dataclass
class BackendResult:
    backend: str
    returncode: int
    message: str  # killed by a signal, the install hint, or the worker's own error line when it failed
    seconds: float = 0.0  # the worker process's wall time

    @property
    def ok(self) -> bool:
        return self.returncode == 0


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


class Workers:
    """The worker processes of one command, so that an interrupt stops every one of them: `start` refuses to start
    a process once `stop_all` has run (a thread may be about to start one when the main thread is interrupted)."""

    def __init__(self):
        self.lock, self.procs, self.stopping = threading.Lock(), set(), False

    def start(self, cmd: list[str]) -> subprocess.Popen | None:
        with self.lock:
            if self.stopping:
                return None
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
            self.procs.add(proc)
            return proc

    def stop_all(self) -> None:
        with self.lock:
            self.stopping = True
            procs = list(self.procs)
        for proc in procs:
            stop(proc)


def run_backend(
    backend: str,
    jobs_file: Path,
    log_file: Path,
    progress: bool = True,
    concurrent: int = 1,
    workers: Workers | None = None,
) -> BackendResult:
    """`python -m backends.worker BACKEND JOBS` in a subprocess, relaying progress to stderr; `concurrent`: how many
    backend processes run side by side (recorded with the timings)."""
    cmd = [sys.executable, "-m", "backends.worker", backend, str(Path(jobs_file).absolute()), "--progress"]
    cmd += ["--concurrent", str(concurrent)]
    workers = workers or Workers()
    proc = workers.start(cmd)
    if proc is None:
        return BackendResult(backend, -signal.SIGINT, "not started (interrupted)")
    lines, started = [], time.perf_counter()
    with proc:
        try:
            for line in proc.stderr:
                lines.append(line)
                if progress and line.startswith(f"[{backend}]"):
                    print(f"  {line.rstrip()}", file=sys.stderr, flush=True)
            proc.wait()
        except BaseException:
            stop(proc)
            raise
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text("".join(lines), encoding="utf-8")
    message = failure_message(backend, proc.returncode, lines)
    return BackendResult(backend, proc.returncode, message, time.perf_counter() - started)


def cores() -> int:
    """The cores this process may use (the default of --jobs)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_all(
    backends: list[str], specs_and_outs: list[tuple[Spec, Path]], work: Path, progress: bool = True, jobs: int = 1
) -> list[BackendResult]:
    """Run every backend over the same jobs (the jobs file holds each spec's JSON form, backends.worker), up to
    `jobs` backend processes at a time; results in the order of `backends`. Progress lines carry their backend's
    name. An interrupt stops every running worker before it propagates."""
    work = Path(work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    jobs_file = work / "jobs.json"
    listing = [{"spec": spec.to_dict(), "out": str(Path(folder).absolute())} for spec, folder in specs_and_outs]
    jobs_file.write_text(json.dumps(listing), encoding="utf-8")
    concurrent, workers = max(1, min(jobs, len(backends))), Workers()

    def one(backend: str) -> BackendResult:
        if progress:
            print(f"parity: running {backend} ...", file=sys.stderr, flush=True)
        log = work / "logs" / f"{backend}.log"
        return run_backend(backend, jobs_file, log, progress, concurrent, workers)

    pool = ThreadPoolExecutor(max_workers=concurrent)
    try:
        futures = [pool.submit(one, backend) for backend in backends]
        return [future.result() for future in futures]
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        workers.stop_all()
        raise
    finally:
        pool.shutdown(wait=True)


def absolute(path: str | Path) -> Path:
    """`path` against the caller's working folder (no symlink resolution): what crosses to a worker."""
    return Path(os.path.abspath(path))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) holds nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _looks_like_output(folder: Path) -> bool:
    """An empty folder or one a parity command wrote (it may be replaced whole)."""
    names = {p.name for p in folder.iterdir()}
    return not names or bool(names & {"spec.json", "records", "comparison.json", "results.csv", "bench.json"})


def check_target(target: Path, option: str = "--out") -> None:
    """Refuse an output folder that cannot be one (exit 2, one line), and create its parent folder."""
    here = Path.cwd()
    if not target.name or target == here or target in here.parents:
        raise InputError(f"{option} '{target}': is the current folder or contains it; name a folder for this run")
    if target.exists() and not target.is_dir():
        raise InputError(f"{option} '{target}': exists and is not a folder")
    for ancestor in target.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise InputError(f"{option} '{target}': '{ancestor}' is a file, not a folder")
            break
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(target.parent, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise InputError(f"{option} '{target}': cannot write there ({exc.strerror or exc})") from None


def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


def _side(target: Path, kind: str, pid: int) -> Path:
    return target.parent / f".{target.name}.{kind}-{pid}"


def _restore(target: Path, pid: int) -> None:
    """Undo what a run of process `pid` left beside `target`: its temporary folder, a moved-aside old folder."""
    shutil.rmtree(_side(target, "tmp", pid), ignore_errors=True)
    old = _side(target, "old", pid)
    if old.exists():
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, target)


def _acquire(target: Path, option: str) -> None:
    """Take the lock file beside `target` (link(2) of a file holding our pid: atomic, never half-written); a lock
    whose process is gone is stale: its leftovers are undone and the lock taken over."""
    lock, mine = _lock_path(target), _side(target, "lockpid", os.getpid())
    for _ in range(3):
        try:
            mine.write_text(str(os.getpid()), encoding="utf-8")
            try:
                os.link(mine, lock)
                return
            except FileExistsError:
                pass
            finally:
                mine.unlink(missing_ok=True)
        except OSError as exc:
            raise InputError(f"{option} '{target}': cannot write there ({exc.strerror or exc})") from None
        try:
            text = lock.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            continue  # released meanwhile
        except OSError as exc:
            raise InputError(f"{option} '{target}': cannot read the lock file {lock} ({exc.strerror})") from None
        holder = int(text) if text.isdigit() else None
        if holder is not None and _alive(holder):
            raise InputError(f"{option} '{target}': in use by another parity run (pid {holder}, lock file {lock})")
        if holder is not None:
            _restore(target, holder)
        lock.unlink(missing_ok=True)
    raise InputError(f"{option} '{target}': could not take the lock file {lock}")


def _release(target: Path) -> None:
    lock = _lock_path(target)
    try:
        if lock.read_text(encoding="utf-8").strip() == str(os.getpid()):
            lock.unlink()
    except OSError:
        pass


@contextmanager
def folder_lock(target: Path, option: str = "--out"):
    """Hold the lock of an output folder written in place (sweeps: resumable, append-only)."""
    target = absolute(target)
    check_target(target, option)
    _acquire(target, option)
    try:
        yield target
    finally:
        _release(target)


class OutputFolder:
    """A run's output folder, written whole or not at all.

    `with OutputFolder(out) as work:` checks and locks `out`, and gives a fresh temporary sibling folder `work`
    (same file system) to write into; `commit()` moves it into place, replacing a previous folder whole (moved
    aside, then removed). Leaving the block without `commit()` (an error, Ctrl-C) removes `work` and leaves `out`
    as it was. An existing `out` that is not empty and was not written by parity is refused (exit 2).
    """

    def __init__(self, target: str | Path, option: str = "--out"):
        self.target, self.option = absolute(target), option
        self.work = _side(self.target, "tmp", os.getpid())

    def __enter__(self) -> Path:
        check_target(self.target, self.option)
        if self.target.is_dir() and not _looks_like_output(self.target):
            raise InputError(
                f"{self.option} '{self.target}': a folder parity did not write (it would be replaced whole); "
                "choose another"
            )
        _acquire(self.target, self.option)
        try:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work.mkdir()
        except OSError as exc:
            _release(self.target)
            raise InputError(f"{self.option} '{self.target}': cannot write there ({exc.strerror or exc})") from None
        return self.work

    def commit(self) -> None:
        old = _side(self.target, "old", os.getpid())
        if self.target.exists():
            os.rename(self.target, old)
        os.rename(self.work, self.target)
        shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, *exc) -> None:
        try:
            _restore(self.target, os.getpid())
        finally:
            _release(self.target)
