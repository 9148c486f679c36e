"""An append-only CSV of sweep results that survives being killed (resume without loss or duplicates).

Each finished run appends all of its rows (one per epoch) in a single write, then flushes and fsyncs. On load,
a trailing partial line (killed mid-write) and the rows of any run with fewer rows than it should have are dropped
and the file is rewritten, so a resumed sweep redoes exactly the runs that did not finish.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from pathlib import Path


class ResultLog:
    def __init__(self, path: Path, columns: list[str], rows_per_run: dict[str, int]):
        """`rows_per_run` maps each run key to the number of rows a finished run writes."""
        self.path, self.columns, self.rows_per_run = path, columns, rows_per_run

    def load(self) -> list[dict]:
        """The complete runs' rows; repairs the file in place when a run was cut short."""
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8")
        complete_text = text if text.endswith("\n") or not text else text[: text.rfind("\n") + 1]
        rows = list(csv.DictReader(io.StringIO(complete_text)))
        if rows and list(rows[0].keys()) != self.columns:
            raise ValueError(f"{self.path}: columns differ from this sweep's; use another --out")
        counts = Counter(r["run_key"] for r in rows)
        keep = [r for r in rows if counts[r["run_key"]] == self.rows_per_run.get(r["run_key"], -1)]
        if len(keep) != len(rows) or complete_text != text:
            self._rewrite(keep)
        return keep

    def done_keys(self) -> set[str]:
        return {r["run_key"] for r in self.load()}

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, self.columns)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.path)

    def append(self, rows: list[dict]) -> None:
        """Append one run's rows in one write, durably."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.columns)
        if not self.path.exists() or self.path.stat().st_size == 0:
            writer.writeheader()
        writer.writerows(rows)
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())
