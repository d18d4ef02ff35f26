"""`specql run OP --workers N`: a parallel run (SPEC §9) driven from the command line.

One connection calls `<op>_start(...)` (or, with `--resume ID`, takes up a stopped run), then
N connections each `CALL <op>_worker(operation_id => id)` at once, in threads (the work is
in the server: a thread only waits for its CALL). Their progress notices (`specql:progress`,
one per batch, with the worker's number and its own counts) add up into one progress bar;
Ctrl-C asks every worker to stop after its current batch (`specql.cancel_operation`). The
result is the run's row once the last worker has closed it, with each worker's counts.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable

import psycopg
from psycopg import sql

from .contract import RESULT_FIELDS
from .model import Operation
from .run import (Bound, Progress, RunError, SigintOwner, _one_line, check_values, connect_error, open_connection,
                  parse_progress)


def check_workers(op: Operation, workers: int) -> None:
    """Refuse --workers N for an operation without parallel: true, or above its max_workers."""
    if op.parallel is None:
        raise RunError(f"--workers {workers}: {op.name} is not parallel (add parallel: true to run it with workers)")
    if op.parallel.max_workers is not None and workers > op.parallel.max_workers:
        raise RunError(f"--workers {workers}: {op.name} allows at most max_workers {op.parallel.max_workers}")


def start_sql(op: Operation, bound: list[Bound], *, confirm: bool, batch_size: int | None) -> tuple[sql.Composed, list]:
    """SELECT <op>_start(<named arguments>) and its values."""
    parts, values = [], []
    for b in bound:
        parts.append(sql.SQL("{} => %s::" + b.sql_type).format(sql.Identifier(b.name)))
        values.append(b.text)
    if confirm:
        parts.append(sql.SQL("confirm => true"))
    if batch_size is not None:
        parts.append(sql.SQL("batch_size => %s::integer"))
        values.append(batch_size)
    routine = sql.Identifier(op.schema, op.parallel.start_name)
    return sql.SQL("SELECT {}({})").format(routine, sql.SQL(", ").join(parts)), values


def parallel_run_for_resume(url: str, op: Operation, operation_id: str) -> tuple[int, str, int | None] | None:
    """`--resume ID` without --workers: when ID is a parallel run of `op` (its workers take it
    up), its chunks still pending, its state and, while it is running, its live workers
    (specql.batch_operation_status); None when it is not (a run of the routine, or none: the
    routine says which)."""
    try:
        with open_connection(url) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM specql.batch_operation_chunks AS c"
                "        WHERE c.operation_id = r.operation_id AND c.status = 'pending'), r.state, r.workers"
                "  FROM specql.batch_operation_status AS r"
                " WHERE r.operation_id = %s::uuid AND r.operation = %s AND r.transaction_mode = 'parallel'",
                (operation_id, op.name)).fetchone()
    except psycopg.Error as exc:
        raise RunError(f"--resume {operation_id}: {_one_line(exc)}") from None
    return None if row is None else (int(row[0]), row[1], row[2])


def params_match_sql(op: Operation, bound: list[Bound]) -> tuple[sql.Composed, list]:
    """SELECT whether the run's recorded parameters are these: Operation.recorded_params (what
    the routine records and checks a resume against, SQ005) over the bound values."""
    given = {b.name: b for b in bound}
    values: list = []

    def placeholder(name: str, sql_type: str) -> str | None:
        if name not in given:
            return None
        values.append(given[name].text)
        return f"%s::{sql_type}"

    recorded = op.recorded_params(placeholder)
    query = sql.SQL("SELECT r.params IS NOT DISTINCT FROM " + recorded + ", r.params::text "
                    "FROM specql.batch_operation_runs AS r WHERE r.operation_id = %s::uuid")
    return query, values


class _Tally:
    """The workers' progress notices added up: each notice carries its worker's own counts."""

    def __init__(self, total: int | None, on_progress: Callable[[Progress], None]):
        self.lock = threading.Lock()
        self.by_worker: dict[int, dict] = {}
        self.progress = Progress(total=total)
        self.on_progress = on_progress

    def notice(self, payload: dict) -> None:
        with self.lock:
            self.by_worker[payload.get("worker", 0)] = payload
            self.progress.operation_id = payload.get("operation_id", self.progress.operation_id)
            self.progress.processed = sum(p.get("processed_records", 0) for p in self.by_worker.values())
            self.progress.failed = sum(p.get("failed_records", 0) for p in self.by_worker.values())
            self.progress.errors = sum(p.get("error_count", 0) for p in self.by_worker.values())
            self.progress.batches += 1
            self.on_progress(self.progress)


def _worker(url: str, op: Operation, operation_id: str, resume: bool, tally: _Tally, index: int,
            outcomes: list, on_notice: Callable[[str], None]) -> None:
    """One worker connection: CALL <op>_worker until it returns; its result (or error) into outcomes."""
    number = {"worker": None}

    def notice(diag: psycopg.errors.Diagnostic) -> None:
        payload = parse_progress(diag.message_primary or "")
        if payload is None:
            on_notice(diag.message_primary or "")
            return
        number["worker"] = payload.get("worker")
        tally.notice(payload)

    try:
        with psycopg.connect(url, autocommit=True, application_name=f"specql run {op.name} worker",
                             connect_timeout=10) as conn:
            conn.add_notice_handler(notice)
            conn.execute("SELECT pg_catalog.set_config('specql.progress', 'on', false)")
            cur = conn.execute(sql.SQL("CALL {}(operation_id => %s, resume => %s, result => NULL)").format(
                sql.Identifier(op.schema, op.parallel.worker_name)), (operation_id, resume))
            cur = conn.execute("SELECT (%s::specql.batch_operation_result).*", (cur.fetchone()[0],))
            row = dict(zip([c.name for c in cur.description], cur.fetchone()))
            outcomes[index] = {"worker": number["worker"], "status": row["status"],
                               "processed_records": row["processed_records"], "failed_records": row["failed_records"],
                               "error_count": row["error_count"], "batch_count": row["batch_count"],
                               "skipped_records": row["skipped_records"]}
    except psycopg.Error as exc:
        outcomes[index] = {"worker": number["worker"], "status": "error", "error": _one_line(exc)}


def run_parallel(url: str, op: Operation, bound: list[Bound], *, workers: int, confirm: bool = False,
                 batch_size: int | None = None, resume: str | None = None,
                 on_progress: Callable[[Progress], None] = lambda p: None,
                 on_notice: Callable[[str], None] = lambda m: None) -> dict:
    """Start (or resume) a parallel run, run `workers` workers to the end; the run's result with
    a `workers` list (each worker's number, status and counts)."""
    check_workers(op, workers)
    interrupts = _Interrupts(url)
    with interrupts.on_sigint():  # from before the connection is opened to after it is closed
        with open_connection(url, f"specql run {op.name}") as conn:
            check_values(conn, bound)
            interrupts.conn = conn  # from here a Ctrl-C asks the run to stop
            return _drive(url, op, conn, bound, interrupts, workers=workers, confirm=confirm, batch_size=batch_size,
                          resume=resume, on_progress=on_progress, on_notice=on_notice)


def _drive(url: str, op: Operation, conn: psycopg.Connection, bound: list[Bound], interrupts: "_Interrupts", *,
           workers: int, confirm: bool, batch_size: int | None, resume: str | None,
           on_progress: Callable[[Progress], None], on_notice: Callable[[str], None]) -> dict:
    if resume:
        operation_id = resume
        interrupts.started(operation_id)
        query, values = params_match_sql(op, bound)
        try:
            same = conn.execute(query, values + [operation_id]).fetchone()
        except psycopg.Error as exc:
            raise RunError(_one_line(exc)) from None
        if same is not None and not same[0]:  # as the routine refuses it (SQ005)
            raise RunError(f"cannot resume run {operation_id} of {op.name}: it was started with other "
                           f"parameters ({same[1]})")
    else:
        query, values = start_sql(op, bound, confirm=confirm, batch_size=batch_size)
        try:
            operation_id = str(conn.execute(query, values).fetchone()[0])
        except psycopg.errors.QueryCanceled as exc:
            if interrupts.requested:
                raise RunError("cancelled before the run started; nothing was changed") from None
            raise RunError(_one_line(exc)) from None
        except psycopg.Error as exc:
            raise RunError(_one_line(exc)) from None
        interrupts.started(operation_id)  # a Ctrl-C the start's query did not see stops the workers at once
    run = _run_row(conn, operation_id)
    if run is None or run["operation"] != op.name:
        raise RunError(f"--resume {operation_id}: no run of {op.name} with that id")
    if resume and run["status"] not in ("running", "failed", "cancelled", "timed_out"):
        raise RunError(f"cannot resume run {operation_id} of {op.name}: it is {run['status']} (a running, "
                       f"failed, cancelled or timed_out parallel run can be resumed)")
    tally = _Tally(run["total_records"], on_progress)
    tally.progress.operation_id = operation_id
    on_progress(tally.progress)
    outcomes: list = [None] * workers
    if run["status"] == "running" or resume:
        threads = [threading.Thread(target=_worker, args=(url, op, operation_id, bool(resume), tally, i, outcomes,
                                                          on_notice), daemon=True) for i in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)  # short waits: the main thread stays responsive to Ctrl-C
    interrupts.finish()  # the workers are done: a Ctrl-C now changes nothing
    run = _run_row(conn, operation_id)
    result = {name: run.get(name) for name in RESULT_FIELDS if name in run}
    result["cancel_requested"] = interrupts.requested
    failures = [o["error"] for o in outcomes if o and o.get("status") == "error"]
    if failures and result.get("status") == "running":
        raise RunError(f"a worker failed: {failures[0]} (the run {operation_id} can be resumed with --resume)")
    result["workers"] = [o for o in outcomes if o is not None]
    # skipped_records (ignore_conflicts) is not in the run row: this call's workers' sum, as
    # the routine counts its own call's (a resume's part only).
    result["skipped_records"] = sum(o.get("skipped_records") or 0 for o in result["workers"])
    return result


def _run_row(conn: psycopg.Connection, operation_id: str) -> dict | None:
    try:
        cur = conn.execute("SELECT * FROM specql.batch_operation_runs WHERE operation_id = %s::uuid", (operation_id,))
    except psycopg.Error as exc:
        raise RunError(_one_line(exc)) from None
    row = cur.fetchone()
    return None if row is None else dict(zip([c.name for c in cur.description], row))


class _Interrupts(SigintOwner):
    """Ctrl-C in a parallel run, by its moment. Before its start (connecting, checking the
    values): KeyboardInterrupt, as without it. While <op>_start runs: a query cancel (its
    transaction rolls back, nothing started). Once the run has an id (started()):
    specql.cancel_operation(id) from another connection; every worker stops after its current
    batch and the last one closes the run as cancelled. A Ctrl-C the start did not see (it had
    returned) is sent as soon as the id is known. After the workers (finish()): nothing."""

    def __init__(self, url: str):
        super().__init__()
        self.url = url
        self.conn: psycopg.Connection | None = None
        self.operation_id: str | None = None
        self.requested = False
        self.ended = False
        self._lock = threading.Lock()
        self._sending = False

    def started(self, operation_id: str) -> None:
        with self._lock:
            self.operation_id = operation_id
        if self.requested and not self._sending:
            self._send()

    def finish(self) -> None:
        with self._lock:
            self.ended = True

    def armed(self) -> bool:
        return self.conn is not None  # connected, the values checked: the start may begin

    def interrupted(self) -> None:
        if self.ended or self._sending:
            return
        self.requested = True
        self._sending = True
        threading.Thread(target=self._send, name="specql-cancel", daemon=True).start()

    def _send(self) -> None:
        """Until the request is recorded: a resumed run is `running` again only once its
        workers take it up (cancel_operation returns false before)."""
        other = None
        try:
            while True:
                with self._lock:
                    if self.ended:
                        return
                    if self.operation_id is None:
                        getattr(self.conn, "cancel_safe", self.conn.cancel)()
                        return
                    if other is None:
                        other = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
                    if other.execute("SELECT specql.cancel_operation(%s)", (self.operation_id,)).fetchone()[0]:
                        return
                time.sleep(0.2)
        except psycopg.Error as exc:  # a daemon thread: say why, never a traceback
            print(f"specql run: Ctrl-C could not ask the run to stop: {connect_error(exc)}", file=sys.stderr)
        finally:
            self._sending = False
            if other is not None:
                other.close()


def worker_lines(result: dict) -> list[str]:
    """One line per worker for the end of `specql run --workers`: its counts and errors."""
    lines = []
    for i, w in enumerate(result.get("workers") or [], 1):
        name = f"worker {w.get('worker') or '?'}"
        if w.get("status") == "error":
            lines.append(f"{name}: failed: {w.get('error')}")
        else:
            lines.append(f"{name}: {w['processed_records']} processed, {w['failed_records']} failed, "
                         f"{w['error_count']} errors in {w['batch_count']} batches ({w['status']})")
    return lines
