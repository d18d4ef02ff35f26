"""What `specql run --csv` (csvimport.py) and `specql run --json` (jsonimport.py) share around a
staged load: the connection that stages it, and the load a run was started on (what a resume
reads again instead of the file)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import psycopg

from .run import open_connection


def staging_connection(url: str, op) -> psycopg.Connection:
    """An autocommit connection for staging (each COPY commits: the routine and a resume read
    the staged rows from another session)."""
    return open_connection(url, f"specql run {op.name} (staging)")


def staged_load(conn: psycopg.Connection, op, operation_id: str) -> str | None:
    """The staging_id a run of the operation was started on (None: no such run, or a run not
    given a staged load)."""
    row = conn.execute("SELECT params ->> 'staging_id' FROM specql.batch_operation_runs "
                       "WHERE operation_id = %s AND operation = %s", (operation_id, op.name)).fetchone()
    return row[0] if row else None


@contextmanager
def after_the_run(result: dict, staging_id: str, echo: Callable[[str], None]):
    """The steps after the routine returned (the summary, --rejects, removing a finished load):
    a Ctrl-C interrupts them (exit 130) and says what became of the run."""
    try:
        yield
    except KeyboardInterrupt:
        echo(f"specql run: interrupted after the run {result.get('operation_id')} ended {result.get('status')} "
             f"(its load: staging_id {staging_id})")
        raise


def write_rejects_file(rejects: str, operation_id, write: Callable[[], int], echo: Callable[[str], None]) -> None:
    """--rejects FILE after an import: `write()` writes it and says how many records; a file
    that cannot be written now (checked before the run by launch.check; gone or full since) is
    said in one line, the rejected records being kept in specql.batch_operation_errors."""
    try:
        n = write()
    except OSError as exc:
        echo(f"specql run: --rejects {rejects}: cannot write: {exc.strerror}; the rejected records "
             f"stay in specql.batch_operation_errors under operation_id {operation_id}")
        return
    echo(f"wrote {n:,} rejected record(s) to {rejects}")
