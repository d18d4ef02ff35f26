"""Runs you can trust (issue 10): the view `specql.batch_operation_status` and `specql.cancel_operation`.

The view must tell a live run from a dead one from the server's own state, at once, with no
timeout: run rows are written here by hand pointing at real sessions (one running a long
statement, one terminated, one whose statement was cancelled and stays idle, one that moved on
to another statement) and at a procedure that commits inside its CALL, as commit_per_batch runs
do; on PostgreSQL 18 and 15.
"""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager

import psycopg
import pytest

from specql import contract
from specql.database import connect

VIEW = f"{contract.SCHEMA}.{contract.STATUS_VIEW}"


def install_runtime(url: str) -> None:
    with connect(url, autocommit=True) as conn:
        conn.execute(contract.render_runtime())


def worker_backend(admin: psycopg.Connection, worker: psycopg.Connection) -> tuple[int, object]:
    """(pid, backend_start) of the session behind *worker*, as another session sees them."""
    pid = worker.info.backend_pid
    return pid, admin.execute("SELECT backend_start FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()[0]


def insert_run(conn: psycopg.Connection, pid: int | None, started: object | None, *, status: str = "running",
               resumed_at: str | None = None, operation: str = "op", started_at: str = "clock_timestamp()",
               total: int | None = None, processed: int = 0) -> uuid.UUID:
    run_id = uuid.uuid4()
    conn.execute(f"INSERT INTO specql.batch_operation_runs (operation_id, operation, status, started_at, "
                 f"heartbeat_at, backend_pid, backend_start, resumed_at, total_records, processed_records) "
                 f"VALUES (%s, %s, %s, {started_at}, clock_timestamp(), %s, %s, {resumed_at or 'NULL'}, %s, %s)",
                 [run_id, operation, status, pid, started, total, processed])
    return run_id


def state(url: str, run_id: uuid.UUID) -> str:
    """The view's state for *run_id*, asked from a fresh session; it must answer at once."""
    t0 = time.monotonic()
    with connect(url, autocommit=True) as conn:
        value = conn.execute(f"SELECT state FROM {VIEW} WHERE operation_id = %s", [run_id]).fetchone()[0]
    assert time.monotonic() - t0 < 1.0
    return value


@contextmanager
def busy(url: str, statement: str, conn: psycopg.Connection | None = None):
    """*statement* running in a thread on *conn* (default: a session of its own); yields
    (connection, errors seen) once the server shows it active."""
    own = conn is None
    conn = conn or connect(url, autocommit=True)
    errors: list[BaseException] = []

    def work():
        try:
            conn.execute(statement)
        except psycopg.Error as exc:
            errors.append(exc)

    pid = conn.info.backend_pid
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    with connect(url, autocommit=True) as watcher:
        for _ in range(200):  # until the statement is seen running
            row = watcher.execute("SELECT state, query FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
            if row and row[0] == "active" and row[1] == statement:
                break
            time.sleep(0.01)
        else:
            pytest.fail(f"{statement} never showed as active")
    try:
        yield conn, errors
    finally:
        if thread.is_alive():
            with connect(url, autocommit=True) as other:
                other.execute("SELECT pg_cancel_backend(%s)", [pid])
        thread.join(10)
        if own:
            conn.close()


def cancel_and_wait(url: str, conn: psycopg.Connection, errors: list) -> None:
    with connect(url, autocommit=True) as other:
        assert other.execute("SELECT pg_cancel_backend(%s)", [conn.info.backend_pid]).fetchone()[0]
    for _ in range(200):
        if errors:
            break
        time.sleep(0.01)
    assert errors and isinstance(errors[0], psycopg.errors.QueryCanceled), errors


# --------------------------------------------------------------------------- liveness


def test_a_live_statement_is_running_and_a_cancelled_one_abandoned(database_url_any):
    url = database_url_any
    install_runtime(url)
    with connect(url, autocommit=True) as admin:
        with busy(url, "SELECT pg_sleep(60)") as (worker, errors):
            pid, started = worker_backend(admin, worker)
            live = insert_run(admin, pid, started)  # (a) a run started by the statement in flight
            reused = insert_run(admin, pid, started.replace(year=started.year - 1))  # same pid, another backend
            earlier = insert_run(admin, pid, started, started_at="now() - interval '1 hour'")  # (d) moved on
            resumed = insert_run(admin, pid, started, started_at="now() - interval '1 hour'",
                                 resumed_at="clock_timestamp()")  # resumed by the statement in flight
            legacy = insert_run(admin, None, None)  # written by a routine that records no backend
            done = insert_run(admin, pid, started, status="completed")
            assert [state(url, r) for r in (live, reused, earlier, resumed, legacy, done)] == [
                "running", "abandoned", "abandoned", "running", "running", "completed"]

            cancel_and_wait(url, worker, errors)  # (c) the session stays open, idle
            assert not worker.closed
            assert state(url, live) == "abandoned"
            assert state(url, resumed) == "abandoned"
            assert state(url, legacy) == "running"  # cannot tell: never call a live run abandoned


def test_a_session_that_ran_the_call_then_another_statement_is_abandoned(database_url_any):
    url = database_url_any
    install_runtime(url)
    with connect(url, autocommit=True) as admin, connect(url, autocommit=True) as worker:
        pid, started = worker_backend(admin, worker)
        with busy(url, "SELECT pg_sleep(0.5)", worker):  # the "CALL"
            run_id = insert_run(admin, pid, started)
            assert state(url, run_id) == "running"
        assert state(url, run_id) == "abandoned"  # over; the session idle
        with busy(url, "SELECT pg_sleep(60)", worker):  # (d) the same session busy with a later statement
            assert state(url, run_id) == "abandoned"


def test_a_terminated_backend_is_abandoned_within_a_second(database_url_any):
    url = database_url_any
    install_runtime(url)
    with connect(url, autocommit=True) as admin:
        with busy(url, "SELECT pg_sleep(60)") as (worker, errors):
            pid, started = worker_backend(admin, worker)
            run_id = insert_run(admin, pid, started)
            assert state(url, run_id) == "running"
            t0 = time.monotonic()
            assert admin.execute("SELECT pg_terminate_backend(%s, 5000)", [pid]).fetchone()[0]  # (b)
            assert state(url, run_id) == "abandoned"
            assert time.monotonic() - t0 < 1.0


PROCEDURE = """
CREATE PROCEDURE public.pretend_run(id uuid) LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO specql.batch_operation_runs (operation_id, operation, started_at, heartbeat_at, backend_pid,
                                             backend_start, transaction_mode)
    SELECT id, 'pretend', clock_timestamp(), clock_timestamp(), pid, backend_start, 'commit_per_batch'
      FROM pg_stat_activity WHERE pid = pg_backend_pid();
    COMMIT;
    PERFORM pg_sleep(0.05);
    UPDATE specql.batch_operation_runs SET batch_count = 1, heartbeat_at = clock_timestamp() WHERE operation_id = id;
    COMMIT;
    PERFORM pg_sleep(60);
END $$;
"""


def test_a_procedure_committing_inside_its_call_stays_running_until_its_statement_is_cancelled(database_url_any):
    """What a commit_per_batch run is: commits inside one CALL must not make it look new or dead."""
    url = database_url_any
    install_runtime(url)
    run_id = uuid.uuid4()
    with connect(url, autocommit=True) as admin:
        admin.execute(PROCEDURE)
        with busy(url, f"CALL public.pretend_run('{run_id}')") as (worker, errors):
            for _ in range(300):
                if admin.execute("SELECT batch_count FROM specql.batch_operation_runs WHERE operation_id = %s",
                                 [run_id]).fetchone() == (1,):
                    break
                time.sleep(0.01)
            else:
                pytest.fail("the procedure never committed its second transaction")
            assert state(url, run_id) == "running"
            cancel_and_wait(url, worker, errors)  # a caller's statement_timeout does the same
            assert state(url, run_id) == "abandoned"


def test_the_view_computes_progress_rate_and_eta_from_the_runs_row(database_url):
    url = database_url
    install_runtime(url)
    columns = f"SELECT percent_done, records_per_second, eta_seconds, cancel_requested FROM {VIEW} WHERE operation_id = %s"
    with connect(url, autocommit=True) as admin:
        with busy(url, "SELECT pg_sleep(60)") as (worker, errors):
            pid, started = worker_backend(admin, worker)
            run_id = uuid.uuid4()
            admin.execute("INSERT INTO specql.batch_operation_runs (operation_id, operation, status, started_at, "
                          "heartbeat_at, total_records, processed_records, failed_records, waited_ms, backend_pid, "
                          "backend_start) SELECT %s, 'op', 'running', t, t + interval '20 seconds', 1000, 300, 100, "
                          "10000, %s, %s FROM (SELECT clock_timestamp() AS t) n", [run_id, pid, started])
            live = admin.execute(columns, [run_id]).fetchone()
            cancel_and_wait(url, worker, errors)
            dead = admin.execute(columns, [run_id]).fetchone()
    # 400 of 1000 done; 20 s elapsed of which 10 s throttled: 30 rec/s, 600 left at 40/s done.
    assert [float(v) for v in live[:3]] == [40.0, 30.0, 15.0]
    assert live[3] is False
    assert dead[2] is None  # no ETA for a run that is not running


def test_the_view_reads_no_log_rows(database_url):
    install_runtime(database_url)
    with connect(database_url, autocommit=True) as conn:
        plan = "\n".join(r[0] for r in conn.execute(f"EXPLAIN SELECT * FROM {VIEW}").fetchall())
        columns = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 ORDER BY attnum",
            [VIEW]).fetchall()]
        comment = conn.execute("SELECT obj_description(%s::regclass, 'pg_class')", [VIEW]).fetchone()[0]
    assert "batch_operation_logs" not in plan and "batch_operation_errors" not in plan
    assert columns == list(contract.STATUS_COLUMNS)
    assert "pg_read_all_stats" in comment


# ------------------------------------------------------------------------------ cancel


def cancel(conn: psycopg.Connection, run_id: uuid.UUID) -> bool:
    return conn.execute("SELECT specql.cancel_operation(%s)", [run_id]).fetchone()[0]


def test_cancel_operation_records_the_request_and_says_when_the_run_has_ended(database_url_any):
    url = database_url_any
    install_runtime(url)
    with connect(url, autocommit=True) as conn:
        running = insert_run(conn, None, None)
        ended = insert_run(conn, None, None, status="completed")
        unknown = uuid.uuid4()

        assert cancel(conn, running) is True
        first = conn.execute("SELECT requested_at FROM specql.batch_operation_cancellations "
                             "WHERE operation_id = %s", [running]).fetchone()[0]
        assert cancel(conn, running) is True  # asked twice: one request, the first time kept
        assert conn.execute("SELECT requested_at FROM specql.batch_operation_cancellations "
                            "WHERE operation_id = %s", [running]).fetchall() == [(first,)]
        assert conn.execute(f"SELECT cancel_requested, state FROM {VIEW} WHERE operation_id = %s",
                            [running]).fetchone() == (True, "running")
        assert conn.execute("SELECT cancel_requested_at IS NOT NULL FROM specql.batch_operation_runs "
                            "WHERE operation_id = %s", [running]).fetchone()[0] is True

        assert cancel(conn, ended) is False
        assert cancel(conn, unknown) is True  # perhaps a per_batch function's run, invisible until commit
        assert {r for (r,) in conn.execute("SELECT operation_id FROM specql.batch_operation_cancellations")} == {
            running, unknown}

        secdef, config, comment = conn.execute(
            "SELECT prosecdef, proconfig, obj_description(oid, 'pg_proc') FROM pg_proc "
            "WHERE oid = 'specql.cancel_operation(uuid)'::regprocedure").fetchone()
        assert secdef is False and any(c.startswith("search_path=") for c in config) and comment


def test_cancel_reaches_an_invisible_run_and_never_waits_for_a_batch_in_flight(database_url_any):
    url = database_url_any
    install_runtime(url)
    with connect(url, autocommit=True) as admin, connect(url) as routine:  # routine: in a transaction
        locked = insert_run(admin, None, None)
        routine.execute("SELECT FROM specql.batch_operation_runs WHERE operation_id = %s FOR UPDATE", [locked])
        hidden = insert_run(routine, None, None)  # a per_batch function's row, not committed
        t0 = time.monotonic()
        assert cancel(admin, locked) is True and cancel(admin, hidden) is True
        assert time.monotonic() - t0 < 1.0
        # The routine's next check (a new statement under READ COMMITTED) sees both requests.
        seen = routine.execute("SELECT operation_id FROM specql.batch_operation_cancellations "
                               "WHERE operation_id = ANY(%s)", [[locked, hidden]]).fetchall()
        assert {r for (r,) in seen} == {locked, hidden}
        routine.rollback()


def test_another_roles_run_is_never_called_abandoned_while_its_backend_may_live(database_url_any):
    """pg_stat_activity hides another role's session details unless pg_read_all_stats: the view
    then cannot tell, and says running rather than call a live run abandoned (the documented caveat)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    url = database_url_any
    install_runtime(url)
    role = f"specql_watcher_{uuid.uuid4().hex[:8]}"  # roles are cluster-wide: a name of its own
    with connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA specql TO {role}; "
                      f"GRANT SELECT ON ALL TABLES IN SCHEMA specql TO {role}")
        try:
            with connect(make_conninfo(**{**conninfo_to_dict(url), "user": role}), autocommit=True) as watcher:
                def seen(run_id):
                    return watcher.execute(f"SELECT state FROM {VIEW} WHERE operation_id = %s", [run_id]).fetchone()[0]

                with busy(url, "SELECT pg_sleep(60)") as (worker, errors):
                    pid, started = worker_backend(admin, worker)
                    live = insert_run(admin, pid, started)
                    assert seen(live) == "running"
                    cancel_and_wait(url, worker, errors)
                    assert state(url, live) == "abandoned"  # the run's own role (here a superuser) knows
                    assert seen(live) == "running"  # hidden from the watcher: cannot tell
                    admin.execute(f"GRANT pg_read_all_stats TO {role}")
                    assert seen(live) == "abandoned"
                gone = insert_run(admin, 2_000_000_000, started)  # no such backend at all
                assert seen(gone) == "abandoned"
        finally:
            admin.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


def test_a_server_crash_and_restart_abandons_the_running_run():
    """An immediate stop (what a crash is to PostgreSQL) and a restart: the run committed as running
    before the crash reads abandoned as soon as the server answers again (its own private cluster)."""
    import shlex
    from pathlib import Path

    from psycopg.conninfo import conninfo_to_dict

    from specql import database

    bin_dir = Path("/usr/lib/postgresql/15/bin")
    if not (bin_dir / "pg_ctl").exists():
        pytest.skip(f"PostgreSQL 15 binaries not found in {bin_dir}")
    with database.local_server(bin_dir) as url:
        pgdata = Path(conninfo_to_dict(url)["host"])
        ids = database._system_user()
        install_runtime(url)
        pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-w", "-t", "60"]
        with connect(url, autocommit=True) as admin, busy(url, "SELECT pg_sleep(60)") as (worker, errors):
            pid, started = worker_backend(admin, worker)
            run_id = insert_run(admin, pid, started)
            assert state(url, run_id) == "running"
            admin.execute("CHECKPOINT")  # the cluster runs synchronous_commit=off: keep the rows through the crash
            database._run_as(pg_ctl + ["-m", "immediate", "stop"], ids, pgdata)
            options = (f"-c listen_addresses='' -k {shlex.quote(str(pgdata))} -p 5432"
                       " -c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            database._run_as(pg_ctl + ["-l", str(pgdata / "server.log"), "-o", options, "start"], ids, pgdata)
        assert state(url, run_id) == "abandoned"
