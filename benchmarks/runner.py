"""Run each backend in its own worker process (docs/design.md, "Architecture") and collect the records.

Separate processes keep global framework state apart (x64, thread pools, GPU pre-allocation), keep timings from
interfering, and let one backend crash without losing the others. The processes run on an executor
(benchmarks.executor: local or Ray), up to `--jobs` side by side (1: one after another, for timings taken alone),
each record saying how many ran at once (`timing.concurrent`); each one's progress lines, prefixed with its name,
are relayed to stderr as they come, and its full log is kept in `DIR/logs/<backend>.log`.

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
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from backends import REGISTRY
from benchmarks.executor import BackendResult, Display, Executor, Local, Task
from benchmarks.progress import RunTable
from common import InputError
from common.spec import Spec


def run_all(
    backends: list[str],
    specs_and_outs: list[tuple[Spec, Path]],
    work: Path,
    progress: bool = True,
    executor: Executor | None = None,
    display: Display | None = None,
    on_idle: Callable[[], object] | None = None,
) -> list[BackendResult]:
    """Run every backend over the same jobs (the jobs file holds each spec's JSON form, backends.worker), one task
    per backend on `executor` (default: local, one at a time); results in the order of `backends`. `display`
    (default: the live table of backends × epochs, benchmarks.progress.RunTable) shows their progress; `on_idle`:
    Executor.run's."""
    executor = executor or Local(1)
    work = Path(work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    jobs_file = work / "jobs.json"
    listing = [{"spec": spec.to_dict(), "out": str(Path(folder).absolute())} for spec, folder in specs_and_outs]
    jobs_file.write_text(json.dumps(listing), encoding="utf-8")
    # longest first (REGISTRY's start_seconds): on 2 cores tf's worker runs beside all the others, not after one
    order = sorted(backends, key=lambda b: -REGISTRY[b].start_seconds)
    tasks = [Task(b, jobs_file, work / "logs" / f"{b}.log", executor.gpus_for(b)) for b in order]
    if display is None:
        display = RunTable(backends, specs_and_outs[0][0].train.epochs, enabled=progress, jobs=len(listing))
    with display:
        results = dict(zip(order, executor.run(tasks, display, on_idle=on_idle), strict=True))
    return [results[b] for b in backends]


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
