"""Progress reporting for runs: a silent reporter for library use and a rich one for the terminal."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


class Reporter:
    """Receives progress from the engine. The base class ignores everything."""

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator["callable"]:
        yield lambda n=1: None

    def info(self, message: str) -> None:
        pass

    def summary(self, manifest: dict) -> None:
        pass


class RichReporter(Reporter):
    """Progress bars with rows/s per step and a summary table at the end."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)

    @contextmanager
    def task(self, description: str, total: int | None):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        from rich.text import Text

        class RowsPerSecond(ProgressColumn):
            def render(self, task):
                speed = task.finished_speed or task.speed
                return Text(f"{speed:,.0f} rows/s" if speed else "", style="progress.data.speed")

        if not self.console.is_terminal:
            # Logs (CI, nohup) get one line per finished task instead of a redrawn bar; a failed task
            # prints nothing here, so an error stays the only line.
            done = [0]
            start = time.perf_counter()
            yield lambda n=1: done.__setitem__(0, done[0] + n)
            secs = time.perf_counter() - start
            rate = f", {done[0] / secs:,.1f} rows/s" if done[0] and secs > 0 else ""
            self.console.print(f"{description}: done in {secs:.1f}s ({done[0]:,} rows{rate})", highlight=False)
            return
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RowsPerSecond(),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False) as prog:
            tid = prog.add_task(description, total=total)
            yield lambda n=1: prog.advance(tid, n)
            prog.update(tid, completed=total if total is not None else prog.tasks[0].completed)

    def info(self, message: str) -> None:
        self.console.print(message)

    def summary(self, manifest: dict) -> None:
        from rich.table import Table

        table = Table(title=f"dqf run {manifest['name']!r}")
        for col, just in (("step", "left"), ("kind", "left"), ("plugin", "left"), ("rows in", "right"),
                          ("rows out", "right"), ("cached", "right"), ("time", "right"), ("rows/s", "right")):
            table.add_column(col, justify=just)
        for s in manifest["steps"]:
            rate = s["rows_in"] / s["seconds"] if s["seconds"] > 0 else float("inf")
            cached = s.get("cache", {}).get("hits")
            table.add_row(s["id"], s["kind"], s["plugin"], f"{s['rows_in']:,}", f"{s['rows_out']:,}",
                          "" if cached is None else f"{cached:,}", f"{s['seconds']:.2f}s",
                          "∞" if rate == float("inf") else f"{rate:,.0f}")
        self.console.print(table)
        c = manifest["counts"]
        self.console.print(
            f"read {c['rows_read']:,} rows ({c['unique_rows']:,} unique, {c['quarantined']:,} quarantined) → "
            f"selected {c['selected']:,} → {manifest['output']['selected_file']}"
        )


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
