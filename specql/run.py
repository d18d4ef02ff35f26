"""`specql run`: call a generated routine from the command line, with its parameters bound
by their declared types, a progress bar that moves while it works, and a clean cancel.

The routine tells its caller how far it got with one NOTICE per batch (`specql:progress`
and a JSON object), sent only when the session asks for them (`SET specql.progress = on`):
NOTICEs reach the caller at once, even from a per_batch function whose rows no other session
can see before it commits. Ctrl-C asks the routine to stop after its current batch
(`specql.cancel_operation`, from a second connection); it ends `cancelled`, and a
commit_per_batch run can be resumed with `--resume`.
"""

from __future__ import annotations

import json
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psycopg
from psycopg import sql

from .diagnostics import did_you_mean
from .model import Operation, Project

PROGRESS_PREFIX = "specql:progress "


class RunError(Exception):
    """A misuse of `specql run` worth one line: unknown operation, bad parameter, refused run."""


# --------------------------------------------------------------------------- finding and binding


def find_operation(project: Project, name: str) -> Operation:
    ops = {op.name: op for e in project.entities for op in e.operations}
    ops.update({f"{op.schema}.{op.name}": op for op in list(ops.values())})
    if name not in ops:
        raise RunError(f"unknown operation '{name}'{did_you_mean(name, ops)}")
    return ops[name]


@dataclass
class Bound:
    """A parameter's value as text (or JSON text) for PostgreSQL to cast to its declared type."""

    name: str
    sql_type: str
    text: str | None


def bind_params(op: Operation, raw: list[str]) -> list[Bound]:
    """`NAME=VALUE` / `NAME=@FILE` pairs -> every routine parameter bound (missing: NULL only where
    the routine gives the argument a default)."""
    given: dict[str, str] = {}
    for item in raw:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise RunError(f"--param {item!r}: write NAME=VALUE or NAME=@FILE")
        if name in given:
            raise RunError(f"--param {name} is given twice")
        given[name] = value
    by_name = {p.name: p for p in op.params}
    for name in given:
        if name not in by_name:
            hint = did_you_mean(name, by_name) or f" (its parameters: {', '.join(by_name) or 'none'})"
            raise RunError(f"--param {name}: {op.name} has no parameter '{name}'{hint}")
    bound = []
    for p in op.params:
        if p.name not in given:
            raise RunError(f"missing --param {p.name}=... ({p.sql_type})")
        bound.append(Bound(p.name, p.sql_type, _value_text(p.name, p.sql_type, given[p.name])))
    return bound


def _value_text(name: str, sql_type: str, value: str) -> str:
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            value = path.read_text("utf-8")
        except OSError as exc:
            raise RunError(f"--param {name}: cannot read {path}: {exc.strerror}") from None
        from_file = True
    else:
        from_file = False
    if sql_type == "jsonb":
        try:
            json.loads(value)
        except ValueError as exc:
            raise RunError(f"--param {name}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
        return value
    if sql_type.endswith("[]"):
        return _array_literal(name, value, from_file)
    return value.strip() if from_file else value


def _array_literal(name: str, value: str, from_file: bool) -> str:
    """A JSON array, or one value a line (a file) / comma-separated values, as a PostgreSQL array literal."""
    stripped = value.strip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except ValueError as exc:
            raise RunError(f"--param {name}: not a JSON array ({exc.msg})") from None
        if not isinstance(items, list) or any(isinstance(i, (list, dict)) for i in items):
            raise RunError(f"--param {name}: expected a JSON array of values")
        items = [None if i is None else str(i) for i in items]
    elif from_file:
        items = [line.strip() for line in stripped.splitlines() if line.strip()]
    else:
        items = [part.strip() for part in stripped.split(",")] if stripped else []
    return "{" + ",".join("NULL" if i is None else '"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"'
                          for i in items) + "}"


def check_values(conn: psycopg.Connection, bound: list[Bound]) -> None:
    """Let PostgreSQL cast every value first: a bad one is named before anything runs."""
    for b in bound:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SELECT {}::" + b.sql_type).format(sql.Literal(b.text)))
        except psycopg.Error as exc:
            message = (exc.diag.message_primary or str(exc)).splitlines()[0]
            raise RunError(f"--param {b.name}: {message} (expected {b.sql_type})") from None


# --------------------------------------------------------------------------- calling


def call_sql(op: Operation, bound: list[Bound], *, confirm: bool, batch_size: int | None,
             resume: str | None) -> tuple[sql.Composed, list]:
    """The SELECT (function) or CALL (procedure) with named arguments, and its values."""
    parts, values = [], []
    for b in bound:
        parts.append(sql.SQL("{} => %s::" + b.sql_type).format(sql.Identifier(b.name)))
        values.append(b.text)
    extra = {"confirm": (confirm, "boolean") if confirm else None,
             "batch_size": (batch_size, "integer") if batch_size is not None else None,
             "resume": (resume, "uuid") if resume else None}
    for name, item in extra.items():
        if item is not None:
            parts.append(sql.SQL("{} => %s::" + item[1]).format(sql.Identifier(name)))
            values.append(item[0])
    routine = sql.Identifier(op.schema, op.name)
    args = sql.SQL(", ").join(parts)
    if op.is_procedure:
        if parts:
            args = sql.SQL("{}, result => NULL").format(args)
        else:
            args = sql.SQL("result => NULL")
        return sql.SQL("CALL {}({})").format(routine, args), values
    return sql.SQL("SELECT * FROM {}({})").format(routine, args), values


@dataclass
class Progress:
    operation_id: str | None = None
    total: int | None = None
    processed: int = 0
    failed: int = 0
    errors: int = 0
    batches: int = 0
    step: str | None = None  # the step of a multi-step operation the last batch belonged to

    def update(self, payload: dict) -> None:
        self.operation_id = payload.get("operation_id", self.operation_id)
        self.total = payload.get("total_records", self.total)
        self.processed = payload.get("processed_records", self.processed)
        self.failed = payload.get("failed_records", self.failed)
        self.errors = payload.get("error_count", self.errors)
        self.batches = payload.get("batch_count", self.batches)
        self.step = payload.get("step", self.step)


def parse_progress(message: str) -> dict | None:
    if not message.startswith(PROGRESS_PREFIX):
        return None
    try:
        payload = json.loads(message[len(PROGRESS_PREFIX):])
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def execute(url: str, op: Operation, bound: list[Bound], *, confirm: bool = False, batch_size: int | None = None,
            resume: str | None = None, on_progress: Callable[[Progress], None] = lambda p: None,
            on_notice: Callable[[str], None] = lambda m: None) -> dict:
    """Run the routine; the result row as a dict. Ctrl-C (SIGINT) in the main thread cancels the
    run after its current batch instead of killing the connection."""
    progress = Progress()
    try:
        conn = psycopg.connect(url, autocommit=True, application_name=f"specql run {op.name}", connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise RunError(f"cannot connect: {str(exc).strip().splitlines()[-1]}") from None
    with conn:
        check_values(conn, bound)

        def notice(diag: psycopg.errors.Diagnostic) -> None:
            payload = parse_progress(diag.message_primary or "")
            if payload is None:
                on_notice(diag.message_primary or "")
                return
            progress.update(payload)
            on_progress(progress)

        conn.add_notice_handler(notice)
        conn.execute("SELECT pg_catalog.set_config('specql.progress', 'on', false)")
        query, values = call_sql(op, bound, confirm=confirm, batch_size=batch_size, resume=resume)
        canceller = _Canceller(url, conn.info.backend_pid, progress)
        with canceller.on_sigint():
            try:
                cur = conn.execute(query, values)
            except psycopg.errors.QueryCanceled as exc:
                if canceller.requested:
                    raise RunError("cancelled before the routine reported its first batch; a per_batch "
                                   "function's work is rolled back with its call") from None
                raise RunError(_one_line(exc)) from None  # a statement_timeout, another session's cancel
            except psycopg.Error as exc:
                raise RunError(_one_line(exc)) from None
        if op.is_procedure:
            cur = conn.execute("SELECT (%s::specql.batch_operation_result).*", (cur.fetchone()[0],))
        row = cur.fetchone()
        result = dict(zip([c.name for c in cur.description], row))
        result["cancel_requested"] = canceller.requested
        return result


def _one_line(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc).splitlines()[0]
    state = f" [SQLSTATE {diag.sqlstate}]" if diag.sqlstate else ""
    return f"{text}{state}" + (f" ({diag.message_hint})" if diag.message_hint else "")


class _Canceller:
    """Turns Ctrl-C into `specql.cancel_operation(id)` from a second connection (the routine
    stops after its current batch), or a plain query cancel before the id is known."""

    def __init__(self, url: str, backend_pid: int, progress: Progress):
        self.url, self.backend_pid, self.progress = url, backend_pid, progress
        self.requested = False

    def cancel(self) -> None:
        self.requested = True
        with psycopg.connect(self.url, autocommit=True) as other:
            if self.progress.operation_id:
                other.execute("SELECT specql.cancel_operation(%s)", (self.progress.operation_id,))
            else:
                other.execute("SELECT pg_cancel_backend(%s)", (self.backend_pid,))

    @contextmanager
    def on_sigint(self):
        """While the routine runs, Ctrl-C asks for a cancel (from a thread: a signal handler
        must not block on a connection) instead of raising KeyboardInterrupt."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, lambda *_: threading.Thread(target=self.cancel, daemon=True).start())
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
