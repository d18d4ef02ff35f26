"""What `specql run` shows: a live bar while the routine works, then the result.

Kept apart from specql/run.py (which only calls the routine and reports progress as
data) so the library can run an operation with no terminal at all.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn
from rich.table import Table

from .run import Progress


class LiveBar:
    """A rich progress bar fed by the routine's progress notices: records done of the total,
    records per second, an ETA and the errors so far."""

    def __init__(self, operation: str, enabled: bool):
        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self.bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[rate]} rec/s"), TimeRemainingColumn(),
                       TextColumn("{task.fields[errors]} errors"), console=self.console,
                       disable=not self.enabled, transient=False)
        self.operation = operation
        self.task = self.bar.add_task(operation, total=None, rate="-", errors=0)
        self.started = time.monotonic()

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def update(self, progress: Progress) -> None:
        done = progress.processed + progress.failed
        elapsed = max(time.monotonic() - self.started, 1e-6)
        # A multi-step operation's total grows as each step starts: the bar names the step.
        description = f"{self.operation} [{progress.step}]" if getattr(progress, "step", None) else self.operation
        self.bar.update(self.task, total=progress.total, completed=done, rate=f"{done / elapsed:,.0f}",
                        errors=progress.errors, description=description)

    def notice(self, message: str) -> None:
        self.console.print(f"NOTICE: {message}", highlight=False)


def show_result(result: dict, fmt: str, out=None) -> None:
    """The result row: one JSON object, or a two-column table."""
    out = out or sys.stdout
    printable = {k: (v.isoformat() if isinstance(v, datetime) else str(v) if not isinstance(
        v, (int, float, bool, type(None), list, dict)) else v) for k, v in result.items()}
    if fmt == "json":
        print(json.dumps(printable), file=out)
        return
    table = Table(show_header=False, box=None)
    for key, value in printable.items():
        table.add_row(key, "" if value is None else str(value))
    Console(file=out).print(table)
