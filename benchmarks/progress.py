"""Progress display for the commands that run workers, on stderr through rich (stdout stays for results).

`RunTable` is the live table of `parity run`: one row per backend with its state, the epoch of its current job as
a bar, the job count when a worker runs several jobs (`--seeds`), the last training loss and the seconds since its
process started; it reads the worker's own lines (`[torch] epoch 3/5 loss 0.4321` on stderr, `done <index>` on
stdout). `TaskBar` is the bar with ETA of `sweep` and `explain`: finished runs out of the total. Both are thread-safe
(one thread per worker feeds them). On a terminal they render live; anywhere else (CI logs, pipes, captured output)
they write plain lines without ANSI codes, one per progress line or state change; disabled (`--quiet`) they write
nothing.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from time import monotonic

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

EPOCH_LINE = re.compile(r"\[(?P<backend>[^\]]+)\] epoch (?P<epoch>\d+)/(?P<epochs>\d+) loss (?P<loss>\S+)")
DONE_LINE = re.compile(r"done \d+")
STATE_STYLES = {"waiting": "dim", "running": "yellow", "done": "green", "failed": "bold red"}


def duration(seconds: float) -> str:
    """`12 s`, `4 min`, `1.5 h`: a plain-text length of time."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class _Row:
    """One backend's state in a `RunTable`."""

    epochs: int
    state: str = "waiting"
    epoch: int = 0
    loss: float | None = None
    jobs_done: int = 0
    start: float | None = None
    end: float | None = None
    message: str = ""

    def seconds(self) -> float | None:
        """Seconds since the process started (until it finished); None before it starts."""
        if self.start is None:
            return None
        return (self.end if self.end is not None else monotonic()) - self.start


class RunTable:
    """Live table for `parity run`: one row per backend: state (waiting/running/done/failed), epoch e/E as a bar,
    the job j/J when each worker runs `jobs` jobs, last loss, seconds since its process started.

    On a terminal, `with RunTable(...)` keeps the table live (rich.live.Live; the final table stays on screen) and
    lines written to sys.stderr meanwhile appear above it; elsewhere each progress line is written as
    `  [torch] epoch 3/5 loss 0.4321` and each state change as one `parity: ...` line."""

    def __init__(
        self,
        backends: list[str],
        epochs: int,
        enabled: bool = True,
        console: Console | None = None,
        jobs: int = 1,
    ):
        self.console = console or Console(stderr=True)
        self.enabled, self.jobs = enabled, jobs
        self.live_mode = enabled and self.console.is_terminal
        self.rows = {backend: _Row(epochs) for backend in backends}
        self.lock = threading.Lock()
        self.live: Live | None = None

    def __enter__(self) -> RunTable:
        if self.live_mode:
            self.live = Live(self, console=self.console, refresh_per_second=4, redirect_stdout=False)
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _say(self, text: str) -> None:
        """A plain line (not a terminal, not quiet); the caller holds the lock, so lines never interleave."""
        if self.enabled and not self.live_mode:
            self.console.out(text, highlight=False)

    def started(self, backend: str) -> None:
        """The backend's worker process has started."""
        with self.lock:
            row = self.rows[backend]
            row.state, row.start = "running", monotonic()
            self._say(f"parity: running {backend} ...")

    def line(self, backend: str, text: str) -> None:
        """One line of the backend's worker output: an epoch line moves its epoch and loss, a `done <index>` line
        counts a finished job, any other line (framework log noise) is ignored."""
        text = text.strip()
        with self.lock:
            row = self.rows[backend]
            progress = EPOCH_LINE.fullmatch(text)
            if progress and progress["backend"] == backend:
                try:
                    loss = float(progress["loss"])
                except ValueError:
                    return
                row.epoch, row.epochs, row.loss = int(progress["epoch"]), int(progress["epochs"]), loss
                self._say(f"  {text}")
            elif DONE_LINE.fullmatch(text):
                row.jobs_done += 1
                if self.jobs > 1:
                    self._say(f"  [{backend}] job {row.jobs_done}/{self.jobs} done")

    def finished(self, backend: str, ok: bool, message: str = "") -> None:
        """The backend's worker process has ended: done (every job finished) or failed with `message`."""
        with self.lock:
            row = self.rows[backend]
            row.state, row.end, row.message = ("done" if ok else "failed"), monotonic(), message
            if ok:  # a failure is reported by the command itself, with its message, even when quiet
                row.jobs_done = self.jobs
                seconds = row.seconds()
                self._say(f"parity: {backend} done" + (f" ({seconds:.1f} s)" if seconds is not None else ""))

    def __rich__(self) -> RenderableType:
        """The table as it stands (rendered again on each refresh of the live display), failure messages below."""
        table = Table(box=None, padding=(0, 2), header_style="bold")
        for name, justify in [("backend", "left"), ("state", "left"), ("epoch", "left")]:
            table.add_column(name, justify=justify, no_wrap=True)
        if self.jobs > 1:
            table.add_column("job", justify="right", no_wrap=True)
        table.add_column("loss", justify="right", no_wrap=True)
        table.add_column("time", justify="right", no_wrap=True)
        failures = []
        with self.lock:
            for backend, row in self.rows.items():
                epoch = Table.grid(padding=(0, 1))
                epoch.add_row(
                    ProgressBar(total=max(row.epochs, 1), completed=row.epoch, width=20),
                    f"{row.epoch}/{row.epochs}",
                )
                cells: list[RenderableType] = [backend, Text(row.state, style=STATE_STYLES[row.state]), epoch]
                if self.jobs > 1:
                    cells.append("-" if row.state == "waiting" else f"{min(row.jobs_done + 1, self.jobs)}/{self.jobs}")
                seconds = row.seconds()
                cells.append("-" if row.loss is None else f"{row.loss:.6g}")
                cells.append("-" if seconds is None else f"{seconds:.1f} s")
                table.add_row(*cells)
                if row.state == "failed":
                    failures.append(Text(f"{backend} failed: {row.message}", style="red"))
        return Group(table, *failures)


class TaskBar:
    """A progress bar with ETA for `sweep` and `explain`: finished runs out of the total (`done` of them finished
    before, when a sweep resumes; the ETA counts only the runs finished since).

    On a terminal, `with TaskBar(...)` keeps a rich bar live with M/N, elapsed time, ETA and the last finished run;
    elsewhere each finished run writes one line, `[4/10 runs] torch lr=0.01 seed=0 (eta 12 s)`."""

    def __init__(self, total: int, done: int = 0, label: str = "runs", enabled: bool = True, console=None):
        self.console = console or Console(stderr=True)
        self.total, self.done, self.label, self.enabled = total, done, label, enabled
        self.live_mode = enabled and self.console.is_terminal
        self.lock = threading.Lock()
        self.first_done, self.start = done, monotonic()
        self.progress: Progress | None = None

    def __enter__(self) -> TaskBar:
        if self.live_mode:
            self.progress = Progress(
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}", markup=False),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[last]}", markup=False),
                console=self.console,
                redirect_stdout=False,
            )
            self.task = self.progress.add_task(self.label, total=self.total, completed=self.done, last="")
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def advance(self, last: str) -> None:
        """One run finished; `last` names it (e.g. `torch lr=0.01 seed=0`)."""
        with self.lock:
            self.done += 1
            if not self.enabled:
                return
            if self.progress is not None:
                self.progress.update(self.task, advance=1, last=last)
            elif not self.live_mode:
                rate = (monotonic() - self.start) / (self.done - self.first_done)
                eta = duration(rate * max(self.total - self.done, 0))
                self.console.out(f"[{self.done}/{self.total} {self.label}] {last} (eta {eta})", highlight=False)


class JobBar(TaskBar):
    """A `TaskBar` fed like a `RunTable` (`started`, `line`, `finished`): every backend runs the same jobs, and each
    `done <index>` line of a worker advances the bar by one run, named `<backend> <labels[index]>` (`explain`)."""

    def __init__(self, backends: list[str], labels: list[str], enabled: bool = True, console=None):
        super().__init__(len(backends) * len(labels), 0, "runs", enabled, console)
        self.labels = labels

    def started(self, backend: str) -> None:
        """Nothing to show: the bar counts finished runs."""

    def line(self, backend: str, text: str) -> None:
        done = DONE_LINE.fullmatch(text.strip())
        if done:
            self.advance(f"{backend} {self.labels[int(text.split()[1])]}")

    def finished(self, backend: str, ok: bool, message: str = "") -> None:
        """A failure is reported by the command with its message; the bar just stops counting that backend."""
