"""Runs you can trust (issue 10): a commit_per_batch run interrupted at any point and resumed
changes every target row exactly once, with the counts of an uninterrupted run.

The change is not idempotent (`n = n + 1`, an insert of rows without a unique key), so a batch
applied twice or skipped shows in the data. Interruptions are real: `pg_terminate_backend`, a
SIGKILL of the backend (the server then restarts every backend), and an immediate server stop;
each at several points, including between a batch's statement and its commit (a trigger on the
log table holds the batch there).
"""

from __future__ import annotations

import json
import os
import signal
import shlex
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from helpers import connect, generate_and_apply, write_entities

ROWS = 100_000
BATCH = 1000

COUNTER = f"""
name: counter
schema: resume
fields:
  id: bigint
  grp: integer
  n: integer
patterns:
  - name: batch_operations
    operation: bump_group
    operation_type: update
    update_data: {{n: {{sql: "n + 1"}}}}
    where_condition: "grp = :grp"
    transaction: commit_per_batch
    error_handling: continue_on_error
    batch_size: {BATCH}
    progress_tracking: true
  - name: batch_operations
    operation: bump_ids
    operation_type: update
    update_data: {{n: {{sql: "n + 1"}}}}
    where_condition: "id = ANY(:ids)"
    transaction: commit_per_batch
    batch_size: {BATCH}
    progress_tracking: true
  - name: batch_operations
    operation: bump_group_per_batch
    operation_type: update
    update_data: {{n: {{sql: "n + 1"}}}}
    where_condition: "grp = :grp"
    batch_size: {BATCH}
"""

EVENT = f"""
name: event
schema: resume
fields:
  id: uuid
  k: integer
patterns:
  - name: batch_operations
    operation: add_events
    operation_type: insert
    insert_data: {{k: ":e.k"}}
    data_source: ":events"
    transaction: commit_per_batch
    batch_size: {BATCH}
    progress_tracking: true
"""

HOLD = """
CREATE TABLE resume.hold (batch integer);
CREATE FUNCTION resume.hold_batch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Runs after the batch's statement, before its COMMIT: the log row is written in between.
    WHILE EXISTS (SELECT 1 FROM resume.hold WHERE batch = NEW.batch_number) LOOP
        PERFORM pg_sleep(0.05);  -- held until the test deletes the row (or kills the backend)
    END LOOP;
    RETURN NEW;
END $$;
CREATE TRIGGER hold_batch BEFORE INSERT ON specql.batch_operation_logs
    FOR EACH ROW EXECUTE FUNCTION resume.hold_batch();
-- While resume.slow has a row, each changed row costs a little: a run stays mid-walk long
-- enough to be interrupted at a moment nobody chose.
CREATE TABLE resume.slow (on_ boolean);
CREATE FUNCTION resume.slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM resume.slow) THEN
        PERFORM pg_sleep(0.0001);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER slow_row BEFORE UPDATE ON resume.counter FOR EACH ROW EXECUTE FUNCTION resume.slow_row();
"""


def setup(url: str, tmp_path: Path) -> None:
    entities = write_entities(tmp_path / "entities", counter=COUNTER, event=EVENT)
    generate_and_apply(url, entities, tmp_path / "out")
    with connect(url) as conn:
        conn.execute(HOLD)
        conn.execute("INSERT INTO resume.counter (id, grp, n) SELECT g, CASE WHEN g %% 10 = 0 THEN 2 ELSE 1 END, 0 "
                     "FROM generate_series(1, %s) g", (ROWS,))


def call_in_thread(url: str, sql: str, params: tuple = ()) -> tuple[threading.Thread, dict]:
    """Run `sql` on its own connection in a thread; box['pid'] is its backend, box['error'] what it raised."""
    box: dict = {}
    conn = psycopg.connect(url, autocommit=True)
    box["pid"] = conn.info.backend_pid

    def work():
        try:
            box["row"] = conn.execute(sql, params).fetchone()
        except psycopg.Error as exc:
            box["error"] = exc
        finally:
            try:
                conn.close()
            except psycopg.Error:
                pass

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, box


def wait_for(url: str, query: str, params: tuple = (), timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with connect(url) as conn:
                row = conn.execute(query, params).fetchone()
            if row and row[0]:
                return row[0]
        except psycopg.OperationalError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for: {query}")


def run_row(url: str, operation: str) -> dict:
    with connect(url) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        return cur.execute("SELECT r.*, s.state FROM specql.batch_operation_runs r "
                           "JOIN specql.batch_operation_status s USING (operation_id) "
                           "WHERE r.operation = %s ORDER BY r.started_at DESC LIMIT 1", (operation,)).fetchone()


def resume(url: str, routine: str, operation_id, **params) -> dict:
    args = ", ".join(f"{k} => %({k})s" for k in params)
    with connect(url) as conn:
        row = conn.execute(f"CALL {routine}({args}{', ' if args else ''}resume => %(resume)s, result => NULL)",
                           dict(params, resume=str(operation_id))).fetchone()
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        return cur.execute("SELECT (%s::specql.batch_operation_result).*", (row[0],)).fetchone()


def assert_exactly_once(url: str) -> None:
    with connect(url) as conn:
        counts = dict(conn.execute("SELECT grp, array_agg(DISTINCT n) FROM resume.counter GROUP BY grp").fetchall())
    assert counts == {1: [1], 2: [0]}, counts


def interrupt(url: str, pid: int, how: str) -> None:
    if how == "terminate":
        with connect(url) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    elif how == "sigkill":
        os.kill(pid, signal.SIGKILL)
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["terminate", "sigkill"])
@pytest.mark.parametrize("point", ["between_statement_and_commit", "after_commit"])
def test_an_interrupted_walk_resumes_exactly_once(tmp_path, database_url_any, how, point):
    url = database_url_any
    setup(url, tmp_path)
    with connect(url) as conn:
        conn.execute("INSERT INTO resume.hold VALUES (7)" if point == "between_statement_and_commit"
                     else "INSERT INTO resume.slow VALUES (true)")
    thread, box = call_in_thread(url, "CALL resume.bump_group(grp => 1, result => NULL)")
    if point == "between_statement_and_commit":
        wait_for(url, "SELECT true FROM pg_stat_activity WHERE pid = %s AND wait_event = 'PgSleep'", (box["pid"],))
    else:
        wait_for(url, "SELECT processed_records >= 4 * %s FROM specql.batch_operation_runs "
                      "WHERE operation = 'bump_group'", (BATCH,))
    interrupt(url, box["pid"], how)
    thread.join(30)
    # The backend is gone. After a SIGKILL the server restarts every backend: a connection can
    # succeed before the postmaster has noticed the death, then be cut by the restart (seen in a
    # CI run: "server closed the connection unexpectedly", the next tests "in recovery mode").
    # A killed backend keeps its pg_stat_activity entry until that restart reinitializes shared
    # memory, so its absence means the restart is over.
    wait_for(url, "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s)", (box["pid"],))
    run = run_row(url, "bump_group")
    assert run["status"] == "running" and run["state"] == "abandoned", run
    with connect(url) as conn:
        conn.execute("DELETE FROM resume.hold")
        conn.execute("DELETE FROM resume.slow")
    result = resume(url, "resume.bump_group", run["operation_id"], grp=1)
    assert result["operation_id"] == run["operation_id"]
    assert (result["status"], result["processed_records"], result["total_records"], result["batch_count"]) == \
        ("completed", ROWS * 9 // 10, ROWS * 9 // 10, ROWS * 9 // 10 // BATCH)
    assert_exactly_once(url)
    with connect(url) as conn:
        batches = conn.execute("SELECT array_agg(batch_number ORDER BY batch_number) FROM specql.batch_operation_logs "
                               "WHERE operation_id = %s", (run["operation_id"],)).fetchone()[0]
    assert batches == list(range(1, ROWS * 9 // 10 // BATCH + 1))


def test_id_arrays_and_jsonb_sources_resume_exactly_once(tmp_path, database_url):
    url = database_url
    setup(url, tmp_path)
    ids = list(range(1, ROWS + 1, 2))  # the odd ids
    with connect(url) as conn:
        conn.execute("INSERT INTO resume.hold VALUES (5)")
    thread, box = call_in_thread(url, "CALL resume.bump_ids(ids => %s, result => NULL)", (ids,))
    wait_for(url, "SELECT true FROM pg_stat_activity WHERE pid = %s AND wait_event = 'PgSleep'", (box["pid"],))
    interrupt(url, box["pid"], "terminate")
    thread.join(30)
    run = run_row(url, "bump_ids")
    with connect(url) as conn:
        conn.execute("DELETE FROM resume.hold")
    result = resume(url, "resume.bump_ids", run["operation_id"], ids=ids)
    assert (result["status"], result["processed_records"]) == ("completed", len(ids))
    with connect(url) as conn:
        assert conn.execute("SELECT array_agg(DISTINCT n) FROM resume.counter WHERE id % 2 = 1").fetchone()[0] == [1]
        assert conn.execute("SELECT array_agg(DISTINCT n) FROM resume.counter WHERE id % 2 = 0").fetchone()[0] == [0]

    events = json.dumps([{"k": i} for i in range(5 * BATCH)])
    with connect(url) as conn:
        conn.execute("INSERT INTO resume.hold VALUES (3)")
    thread, box = call_in_thread(url, "CALL resume.add_events(events => %s::jsonb, result => NULL)", (events,))
    wait_for(url, "SELECT true FROM pg_stat_activity WHERE pid = %s AND wait_event = 'PgSleep'", (box["pid"],))
    interrupt(url, box["pid"], "terminate")
    thread.join(30)
    run = run_row(url, "add_events")
    with connect(url) as conn:
        conn.execute("DELETE FROM resume.hold")
    result = resume(url, "resume.add_events", run["operation_id"], events=events)
    assert (result["status"], result["processed_records"]) == ("completed", 5 * BATCH)
    with connect(url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT k) FROM resume.event").fetchone() == (5 * BATCH,) * 2


def test_resume_refuses_a_running_or_completed_run_and_other_parameters(tmp_path, database_url):
    url = database_url
    setup(url, tmp_path)
    with connect(url) as conn:
        row = conn.execute("CALL resume.bump_group(grp => 1, result => NULL)").fetchone()
        done = conn.execute("SELECT (%s::specql.batch_operation_result).operation_id", (row[0],)).fetchone()[0]
    with pytest.raises(psycopg.Error) as refused:
        resume(url, "resume.bump_group", done, grp=1)
    assert refused.value.sqlstate == "SQ004"
    with pytest.raises(psycopg.Error) as unknown:
        resume(url, "resume.bump_group", uuid.uuid4(), grp=1)
    assert unknown.value.sqlstate == "SQ004"
    # a cancelled run resumes, but only with the parameters it was started with
    with connect(url) as conn:
        conn.execute("INSERT INTO resume.hold VALUES (2)")
    thread, box = call_in_thread(url, "CALL resume.bump_group(grp => 2, result => NULL)")
    wait_for(url, "SELECT true FROM pg_stat_activity WHERE pid = %s AND wait_event = 'PgSleep'", (box["pid"],))
    run = run_row(url, "bump_group")
    with connect(url) as conn:
        assert conn.execute("SELECT specql.cancel_operation(%s)", (run["operation_id"],)).fetchone()[0] is True
        conn.execute("DELETE FROM resume.hold")
    thread.join(60)
    assert box["row"] is not None, box
    run = run_row(url, "bump_group")
    assert run["status"] == "cancelled" and run["processed_records"] == 2 * BATCH, run
    with pytest.raises(psycopg.Error) as other:
        resume(url, "resume.bump_group", run["operation_id"], grp=1)
    assert other.value.sqlstate == "SQ005"
    result = resume(url, "resume.bump_group", run["operation_id"], grp=2)
    assert (result["status"], result["processed_records"]) == ("completed", ROWS // 10)


TALLY = """
name: tally
schema: resume
fields:
  id: bigint
  k: integer
patterns:
  - name: batch_operations
    operation: touch_tallies
    operation_type: update
    update_data: {k: {sql: "k + 1"}}
    where_condition: "k >= 0"
    batch_size: 1000
"""


def test_the_batch_size_argument_overrides_the_file_and_reaches_nested_routines(tmp_path, database_url):
    """Seed 000's lesson: a routine called inside another (here from a trigger on its target)
    batches by the size the outer call was given, unless it is given its own."""
    url = database_url
    entities = write_entities(tmp_path / "entities", counter=COUNTER, tally=TALLY)
    generate_and_apply(url, entities, tmp_path / "out")
    with connect(url) as conn:
        conn.execute("DELETE FROM resume.counter")
        conn.execute("INSERT INTO resume.counter (id, grp, n) SELECT g, 1, 0 FROM generate_series(1, 2000) g")
        conn.execute("INSERT INTO resume.tally (id, k) SELECT g, 0 FROM generate_series(1, 3000) g")
        conn.execute("""
            CREATE FUNCTION resume.nested() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM resume.touch_tallies();
                RETURN NULL;
            END $$;
            CREATE TRIGGER nested AFTER UPDATE ON resume.counter FOR EACH STATEMENT EXECUTE FUNCTION resume.nested();
        """)
        outer = conn.execute("SELECT batch_count FROM resume.bump_group_per_batch(grp => 1, batch_size => 250)").fetchone()
        assert outer == (8,)
        # one nested run per UPDATE statement of the outer walk, each 3000 rows in batches of 250
        sizes = conn.execute("SELECT DISTINCT batch_size, batch_count FROM specql.batch_operation_runs "
                             "WHERE operation = 'touch_tallies'").fetchall()
        assert sizes == [(250, 12)]
        conn.execute("DELETE FROM specql.batch_operation_runs")
        conn.execute("SELECT * FROM resume.bump_group_per_batch(grp => 1)")  # the file's 500: 4 batches
        sizes = conn.execute("SELECT DISTINCT batch_size, batch_count FROM specql.batch_operation_runs "
                             "WHERE operation = 'touch_tallies'").fetchall()
        assert sizes == [(1000, 3)]
        # and the setting does not outlive the call that set it
        assert conn.execute("SELECT coalesce(current_setting('specql.batch_size', true), '')").fetchone() == ("",)


@pytest.mark.parametrize("point", ["between_statement_and_commit", "after_commit"])
def test_an_immediate_server_stop_resumes_exactly_once(tmp_path, point):
    """What a crash is to PostgreSQL: `pg_ctl stop -m immediate` while a batch waits before its
    commit, then a restart; the run reads abandoned, and its resume changes every row once."""
    from psycopg.conninfo import conninfo_to_dict

    from specql import database

    bin_dir = Path("/usr/lib/postgresql/15/bin")
    if not (bin_dir / "pg_ctl").exists():
        if os.environ.get("SPECQL_REQUIRE_PG15") == "1":
            pytest.fail(f"PostgreSQL 15 binaries not found in {bin_dir}")
        pytest.skip(f"PostgreSQL 15 binaries not found in {bin_dir}")
    with database.local_server(bin_dir) as url:
        pgdata = Path(conninfo_to_dict(url)["host"])
        ids = database._system_user()
        pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-w", "-t", "60"]
        setup(url, tmp_path)
        with connect(url) as conn:
            conn.execute("INSERT INTO resume.hold VALUES (11)" if point == "between_statement_and_commit"
                         else "INSERT INTO resume.slow VALUES (true)")
        thread, box = call_in_thread(url, "CALL resume.bump_group(grp => 1, result => NULL)")
        if point == "between_statement_and_commit":
            wait_for(url, "SELECT true FROM pg_stat_activity WHERE pid = %s AND wait_event = 'PgSleep'",
                     (box["pid"],))
        else:
            wait_for(url, "SELECT processed_records >= 5 * %s FROM specql.batch_operation_runs "
                          "WHERE operation = 'bump_group'", (BATCH,))
        database._run_as(pg_ctl + ["-m", "immediate", "stop"], ids, pgdata)
        thread.join(30)
        options = (f"-c listen_addresses='' -k {shlex.quote(str(pgdata))} -p 5432"
                   " -c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        database._run_as(pg_ctl + ["-l", str(pgdata / "server.log"), "-o", options, "start"], ids, pgdata)
        run = run_row(url, "bump_group")
        assert run["state"] == "abandoned", run
        with connect(url) as conn:
            conn.execute("DELETE FROM resume.hold")
            conn.execute("DELETE FROM resume.slow")
        result = resume(url, "resume.bump_group", run["operation_id"], grp=1)
        assert (result["status"], result["processed_records"], result["batch_count"]) == \
            ("completed", ROWS * 9 // 10, ROWS * 9 // 10 // BATCH)
        assert_exactly_once(url)
