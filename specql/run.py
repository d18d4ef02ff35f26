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
import sys
import threading
import time
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


def shown(text: str) -> str:
    """A command-line argument for a message: bytes that are not UTF-8 (os.fsdecode's
    surrogates) as \\xNN escapes, so printing the message cannot fail."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def check_utf8(what: str, text: str) -> None:
    """PostgreSQL takes UTF-8 text: an argument with bytes that are not is refused by name."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start].encode("utf-8", "surrogateescape")
        raise RunError(f"{what}: not valid UTF-8 (byte 0x{bad.hex()} at character {exc.start + 1})") from None


def connect_error(exc: psycopg.Error) -> str:
    """libpq's connection failure on one line (it spreads one over several, the cause first)."""
    return " ".join(part.strip() for part in str(exc).strip().splitlines() if part.strip())


def open_connection(url: str, application_name: str | None = None) -> psycopg.Connection:
    """An autocommit connection for the runtime commands, or a RunError 'cannot connect: ...'
    with libpq's whole message on one line."""
    kwargs = {"application_name": application_name} if application_name else {}
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10, **kwargs)
    except psycopg.OperationalError as exc:
        raise RunError(f"cannot connect: {connect_error(exc)}") from None


def bind_params(op: Operation, raw: list[str]) -> list[Bound]:
    """`NAME=VALUE` / `NAME=@FILE` pairs -> every routine parameter bound (missing: NULL only where
    the routine gives the argument a default)."""
    given: dict[str, str] = {}
    for item in raw:
        name, sep, value = item.partition("=")
        check_utf8(f"--param {shown(name)}" if sep and name else f"--param {shown(item)!r}", item)
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
        except UnicodeDecodeError as exc:
            raise RunError(f"--param {name}: {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                           f"offset {exc.start})") from None
        from_file = True
    else:
        from_file = False
    if sql_type == "jsonb":
        _json(name, value, "JSON")
        return value
    if sql_type.endswith("[]"):
        return _array_literal(name, value, from_file)
    return value.strip() if from_file else value


def _array_literal(name: str, value: str, from_file: bool) -> str:
    """A JSON array, or one value a line (a file) / comma-separated values, as a PostgreSQL array literal."""
    stripped = value.strip()
    if stripped.startswith("["):
        items = _json(name, stripped, "a JSON array")
        if not isinstance(items, list) or any(isinstance(i, (list, dict)) for i in items):
            raise RunError(f"--param {name}: expected a JSON array of values")
        items = [None if i is None else str(i) for i in items]
    elif from_file:
        items = [line.strip() for line in stripped.splitlines() if line.strip()]
    else:
        items = [part.strip() for part in stripped.split(",")] if stripped else []
    return "{" + ",".join("NULL" if i is None else '"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"'
                          for i in items) + "}"


def _json(name: str, text: str, what: str):
    """The value parsed as JSON, numbers kept as text (PostgreSQL casts them; Python's int()
    refuses more than 4300 digits), or a RunError naming the parameter."""
    try:
        return json.loads(text, parse_int=str, parse_float=str)
    except json.JSONDecodeError as exc:
        raise RunError(f"--param {name}: not {what} ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise RunError(f"--param {name}: not {what} PostgreSQL can take (nested too deeply)") from None


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
    run after its current batch instead of killing the connection (_Canceller: its handler is
    in place from before the connection is opened until after it is closed)."""
    progress = Progress()
    canceller = _Canceller(url, progress)
    with canceller.on_sigint():
        return _call(url, op, bound, canceller, confirm=confirm, batch_size=batch_size, resume=resume,
                     on_progress=on_progress, on_notice=on_notice)


def _call(url: str, op: Operation, bound: list[Bound], canceller: "_Canceller", *, confirm: bool,
          batch_size: int | None, resume: str | None, on_progress: Callable[[Progress], None],
          on_notice: Callable[[str], None]) -> dict:
    progress = canceller.progress
    conn = open_connection(url, f"specql run {op.name}")
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
        canceller.calling(conn.info.backend_pid)  # from here a Ctrl-C asks the run to stop
        try:
            try:
                cur = conn.execute(query, values)
            finally:
                canceller.finish()  # from here a Ctrl-C changes nothing: the run has ended
        except psycopg.errors.QueryCanceled as exc:
            if canceller.requested:
                raise RunError(_cancelled_early(conn, op, canceller)) from None
            raise RunError(_one_line(exc)) from None  # a statement_timeout, another session's cancel
        except psycopg.errors.UndefinedFunction as exc:
            raise RunError(_missing_routine(conn, op) or _one_line(exc)) from None
        except psycopg.Error as exc:
            raise RunError(_one_line(exc)) from None
        if op.is_procedure:
            cur = _decode_result(conn, cur.fetchone()[0])
        row = cur.fetchone()
        result = dict(zip([c.name for c in cur.description], row))
        result["cancel_requested"] = canceller.requested
        return result


def _decode_result(conn: psycopg.Connection, text: str) -> psycopg.Cursor:
    """A procedure's result (its OUT argument as text) as a row. Run again when a query cancel
    meant for the call it followed arrives late (the call had ended: nothing to cancel)."""
    for attempt in range(3):
        try:
            return conn.execute("SELECT (%s::specql.batch_operation_result).*", (text,))
        except psycopg.errors.QueryCanceled:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _cancelled_early(conn: psycopg.Connection, op: Operation, canceller: "_Canceller") -> str:
    """Ctrl-C cancelled the call before the run could be asked to stop after a batch: what is
    left of it."""
    if not op.is_procedure:
        return ("cancelled before the routine reported its first batch; a per_batch function's work is "
                "rolled back with its call")
    run_id = _running_run(conn, canceller.backend_pid)  # committed just before the cancel landed
    if run_id is None:
        return "cancelled before the run began; nothing was changed"
    return (f"cancelled during the first batch of run {run_id}; it shows as abandoned in `specql status`: "
            f"resume with `specql run {op.name} --resume {run_id}` and the same parameters")


def _missing_routine(conn: psycopg.Connection, op: Operation) -> str | None:
    """The routine is not there at all (or the runtime is not): the migrations were not applied."""
    try:
        found = conn.execute(
            "SELECT to_regnamespace('specql') IS NOT NULL AND EXISTS (SELECT FROM pg_catalog.pg_proc p"
            " WHERE p.pronamespace = to_regnamespace(%s) AND p.proname = %s)", (op.schema, op.name)).fetchone()[0]
    except psycopg.Error:
        return None
    if found:
        return None
    return f"{op.schema}.{op.name} is not in the database: apply the migrations first (specql migrate)"


def _running_run(conn: psycopg.Connection, backend_pid: int) -> str | None:
    """The id of the run the routine on backend `backend_pid` has committed and is running (a
    commit_per_batch procedure commits its run row before the first batch)."""
    row = conn.execute(
        "SELECT r.operation_id::text FROM specql.batch_operation_runs r"
        " WHERE r.backend_pid = %s AND r.status = 'running'"
        "   AND r.backend_start = (SELECT a.backend_start FROM pg_catalog.pg_stat_get_activity(%s) a)"
        " ORDER BY r.started_at DESC LIMIT 1", (backend_pid, backend_pid)).fetchone()
    return row[0] if row else None


def _one_line(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc).splitlines()[0]
    state = f" [SQLSTATE {diag.sqlstate}]" if diag.sqlstate else ""
    return f"{text}{state}" + (f" ({diag.message_hint})" if diag.message_hint else "")


class SigintOwner:
    """Ctrl-C for the whole of one `specql run` call (on_sigint()), by its moment: until
    armed() the handler in place before runs (KeyboardInterrupt by default, as without this);
    while armed, interrupted(), which must not block (a signal handler must not wait on a
    connection: it starts a thread); finish() when the outcome is decided, after which a
    Ctrl-C changes nothing. _Canceller (the routine) and workers._Interrupts (a parallel run)."""

    def __init__(self):
        self._previous = signal.default_int_handler

    def armed(self) -> bool:
        raise NotImplementedError

    def interrupted(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    def _signal(self, signum, frame) -> None:
        if not self.armed():  # as the handler in place before
            if callable(self._previous):
                self._previous(signum, frame)
            elif self._previous != signal.SIG_IGN:
                raise KeyboardInterrupt
            return
        self.interrupted()

    @contextmanager
    def on_sigint(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._previous = signal.signal(signal.SIGINT, self._signal)
        try:
            yield
        finally:
            self.finish()
            signal.signal(signal.SIGINT, signal.SIG_DFL if self._previous is None else self._previous)


class _Canceller(SigintOwner):
    """Ctrl-C around one call of the routine, by its moment:
    - before the call (connecting, checking the values): KeyboardInterrupt, as without it;
    - during the call (calling()): `specql.cancel_operation(id)` from a second connection (the
      routine stops after its current batch), the id from the progress notices or, before the
      first one, the run row the routine committed (a commit_per_batch procedure, before its
      first batch); without a run to name (a function's run row is not visible before it
      returns, or the routine has not begun it yet) a plain query cancel, sent again until the
      call ends (a cancel that reaches the backend before the call is ignored);
    - once the call has ended (finish()), to the end of on_sigint(): nothing (the result is
      read, the connection closed; the run's outcome is decided)."""

    RETRY_SECONDS = 0.5

    def __init__(self, url: str, progress: Progress):
        super().__init__()
        self.url, self.progress = url, progress
        self.backend_pid: int | None = None
        self.requested = False
        self.finished = False
        self._lock = threading.Lock()  # finish() waits for a cancel being sent
        self._sending = False

    def calling(self, backend_pid: int) -> None:
        self.backend_pid = backend_pid

    def finish(self) -> None:
        with self._lock:
            self.finished = True

    def armed(self) -> bool:
        return self.backend_pid is not None  # the call has begun

    def interrupted(self) -> None:
        """During the call: never blocks, never raises."""
        if self.finished or self._sending:
            return
        self.requested = True
        self._sending = True
        threading.Thread(target=self.cancel, name="specql-cancel", daemon=True).start()

    def cancel(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as other:
                while True:
                    with self._lock:
                        if self.finished:
                            return
                        run_id = self.progress.operation_id or _running_run(other, self.backend_pid)
                        if run_id:
                            other.execute("SELECT specql.cancel_operation(%s)", (run_id,))
                            return
                        other.execute("SELECT pg_cancel_backend(%s)", (self.backend_pid,))
                    time.sleep(self.RETRY_SECONDS)
        except psycopg.Error as exc:  # a daemon thread: say why, never a traceback
            print(f"specql run: Ctrl-C could not ask the run to stop: {connect_error(exc)}", file=sys.stderr)
        finally:
            self._sending = False
