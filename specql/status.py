"""`specql status`: the recent runs of a database, read from `specql.batch_operation_status`.

Why so little here: whether a run is still `running` or `abandoned` (its backend died, was
terminated, or its statement was cancelled) is decided by the view, from the server's own
state, so every client (this command, psql, a dashboard) sees the same answer. This module
only reads the view and shows it; the click command in specql/cli.py is a thin wrapper.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

from .contract import SCHEMA, STATUS_COLUMNS, STATUS_VIEW
from .database import DatabaseError, connect, redact_url

__all__ = ["StatusError", "recent_runs", "render_json", "render_table"]


class StatusError(Exception):
    """Worth one line to the user: server unreachable, no runtime installed."""


def recent_runs(url: str, *, limit: int = 20, operation: str | None = None) -> list[dict[str, Any]]:
    """The *limit* most recent runs (of *operation* when given), newest first, as dicts."""
    try:
        conn = connect(url, autocommit=True, application_name="specql status")
    except DatabaseError as exc:
        raise StatusError(str(exc)) from None
    with conn:
        view = f"{SCHEMA}.{STATUS_VIEW}"
        if conn.execute("SELECT to_regclass(%s)", [view]).fetchone()[0] is None:
            raise StatusError(f"no specql runtime in {redact_url(url)} (view {view} not found): "
                              "apply the migrations first (specql migrate)")
        query = sql.SQL("SELECT {columns} FROM {view} {where} ORDER BY started_at DESC LIMIT %s").format(
            columns=sql.SQL(", ").join(map(sql.Identifier, STATUS_COLUMNS)),
            view=sql.Identifier(SCHEMA, STATUS_VIEW),
            where=sql.SQL("WHERE operation = %s" if operation else ""))
        args = [operation, limit] if operation else [limit]
        try:
            cursor = conn.execute(query, args)
        except psycopg.errors.UndefinedColumn as exc:  # a view of an older runtime
            raise StatusError(f"the specql runtime in {redact_url(url)} is older than this specql: "
                              f"apply its runtime migration ({str(exc).splitlines()[0]})") from None
        names = [c.name for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, UUID):
        return str(value)
    return value


def render_json(runs: list[dict[str, Any]]) -> str:
    """A JSON list, one object per run, with every column of the view."""
    return json.dumps([{k: _plain(v) for k, v in run.items()} for run in runs], indent=2)


_STATE_STYLE = {"running": "bold cyan", "completed": "green", "abandoned": "bold red", "failed": "red",
                "timed_out": "yellow", "cancelled": "yellow", "completed_with_errors": "yellow"}


def _progress(run: dict[str, Any]) -> str:
    done = run["processed_records"] + run["failed_records"]  # records handled; the failed ones under errors
    total = run["total_records"]
    if total is None:
        return f"{done:,}"
    percent = f" ({run['percent_done']}%)" if run["percent_done"] is not None else ""
    return f"{done:,}/{total:,}{percent}"


def _running_note(run: dict[str, Any]) -> str:
    """What a running run's state adds: a parallel run's live workers (none: waiting for one),
    a cancel requested. The state itself stays the view's."""
    if run["state"] != "running":
        return ""
    notes = []
    workers = run.get("workers")  # NULL but for a running parallel run
    if workers == 0:
        notes.append("waiting for workers")
    elif workers is not None:
        notes.append(f"{workers} worker{'s' if workers != 1 else ''}")
    if run["cancel_requested"]:
        notes.append("cancel requested")
    return f" ({', '.join(notes)})" if notes else ""


def _eta(seconds: Decimal | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else ""


def render_table(runs: list[dict[str, Any]], console: Console | None = None) -> None:
    """Print the runs as a table: operation, state, progress, rate, ETA, errors, started, heartbeat."""
    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 200)  # piped or captured: never cut an operation id
    if not runs:
        console.print("no runs recorded")
        return
    table = Table(show_edge=False, header_style="bold")
    for header in ("operation id", "operation", "state", "progress", "rec/s", "eta", "errors", "started",
                   "last heartbeat"):
        table.add_column(header, no_wrap=True, justify="right" if header in ("rec/s", "errors") else "left")
    for run in runs:
        state = run["state"] + _running_note(run)
        rate = run["records_per_second"]
        operation = run["operation"] + (f" [{run['step']}]" if run.get("step") else "")  # a multi-step run's step
        table.add_row(str(run["operation_id"]), operation,
                      f"[{_STATE_STYLE.get(run['state'], '')}]{state}[/]" if run["state"] in _STATE_STYLE else state,
                      _progress(run), f"{rate:,.1f}" if rate is not None else "",
                      _eta(run["eta_seconds"]) if run["state"] == "running" else "",
                      f"{run['error_count']}" + (f" ({run['failed_records']:,} rec)" if run["failed_records"] else ""),
                      _when(run["started_at"]), _when(run["heartbeat_at"]))
    console.print(table)
    if any(run["state"] == "running" and run.get("workers") == 0 for run in runs):
        console.print("waiting for workers: a parallel run that no worker is working on (started with <op>_start, "
                      "no worker called yet); start them with CALL <op>_worker(operation_id => 'ID') in as many "
                      "sessions as wanted, or `specql run OPERATION --resume ID [--workers N]` with its parameters.")
    if any(run["state"] == "abandoned" for run in runs):
        console.print("abandoned: the run's backend is gone (server crash or restart, terminated, or its statement "
                      "cancelled); its committed batches stay. A commit_per_batch run resumes with "
                      "`specql run OPERATION --resume ID` (or CALL op(resume => 'ID')).")
