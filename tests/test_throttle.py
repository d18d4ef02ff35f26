"""Throttle on the server's health and `batch_size: auto` (issue 10, SPEC §3 `throttle`,
`batch_size: auto` + `target_batch_time`), on real servers: a fixed sleep logged and left out
of the rate; a wait on a real standby whose replay is paused (pg_basebackup -R from a private
PostgreSQL 15 cluster), ended by replay resuming, by a cancel request and by the timeout; an
autovacuum worker on the target holding the run while a manual VACUUM does not; an archive
backlog (archive_mode on, a failing archive_command) until the archiver catches up; and batch
sizes converging to the target on a table whose rows get slower halfway. About 40 s."""

from __future__ import annotations

import shlex
import threading
import time
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from helpers import call, call_procedure, connect, generate_and_apply, write_entities
from replication import PG15_BIN, lagging, pg15_or_skip, standby_of, wait_for
from specql.cli import main

METER = """
name: meter
schema: gentle
fields:
  id: integer
  n: integer
patterns:
  - name: batch_operations
    operation: bump_sleeping
    operation_type: update
    update_data: {n: {sql: "n + 1"}}
    where_condition: "id = ANY(:ids)"
    batch_size: 10
    progress_tracking: true
    throttle: {sleep: "30 milliseconds"}
  - name: batch_operations
    operation: bump_walk_sleeping
    operation_type: update
    update_data: {n: {sql: "n + 1"}}
    where_condition: "n >= 0"
    batch_size: 10
    progress_tracking: true
    throttle: {sleep: "10 milliseconds"}
  - name: batch_operations
    operation: bump_all_auto
    operation_type: update
    update_data: {n: {sql: "n + 1"}}
    where_condition: "n >= 0"
    batch_size: auto
    target_batch_time: "100 milliseconds"
    progress_tracking: true
  - name: batch_operations
    operation: bump_committing
    operation_type: update
    update_data: {n: {sql: "n + 1"}}
    where_condition: "n >= 0"
    batch_size: 10
    transaction: commit_per_batch
    progress_tracking: true
    timeout: "4 seconds"
    throttle: {max_replication_lag: "1 second", autovacuum: pause}
  - name: batch_operations
    operation: bump_archived
    operation_type: update
    update_data: {n: {sql: "n + 1"}}
    where_condition: "n >= 0"
    batch_size: 10
    transaction: commit_per_batch
    progress_tracking: true
    throttle: {max_archive_backlog: 2}
"""


def prepare(url, tmp_path, rows=50):
    generate_and_apply(url, write_entities(tmp_path / "entities", meter=METER), tmp_path / "out")
    with connect(url) as conn:
        conn.execute("INSERT INTO gentle.meter SELECT g, 0 FROM generate_series(1, %s) g", (rows,))


def waits(conn, operation_id):
    return conn.execute("SELECT batch_number, wait_reason, wait_ms FROM specql.batch_operation_logs "
                        "WHERE operation_id = %s AND status = 'throttled' ORDER BY id", (operation_id,)).fetchall()


# --------------------------------------------------------------------------- sleep


def test_sleep_is_a_logged_wait_counted_in_waited_ms_and_left_out_of_the_rate(database_url, tmp_path):
    prepare(database_url, tmp_path)
    with connect(database_url) as conn:
        result = call(conn, "gentle.bump_sleeping", ids=list(range(1, 51)))
        assert result["status"] == "completed" and result["batch_count"] == 5
        rows = waits(conn, result["operation_id"])
        # one sleep between each two batches, before batches 2..5, none after the last
        assert [r[0] for r in rows] == [2, 3, 4, 5]
        assert all(reason == "sleep" and ms >= 30 for _, reason, ms in rows)
        waited, active, total = conn.execute(
            "SELECT r.waited_ms, s.processed_records / s.records_per_second,"
            "       extract(epoch FROM r.completed_at - r.started_at)"
            "  FROM specql.batch_operation_runs r JOIN specql.batch_operation_status s USING (operation_id)"
            " WHERE operation_id = %s", (result["operation_id"],)).fetchone()
        assert waited == sum(r[2] for r in rows) and waited >= 120
        # the rate is over the run's time minus its waits
        assert float(active) == pytest.approx(float(total) - float(waited) / 1000, abs=0.01)
        # a key walk whose last batch is full looks for a next key first: no wait after it
        result = call(conn, "gentle.bump_walk_sleeping")
        assert result["batch_count"] == 5 and [r[0] for r in waits(conn, result["operation_id"])] == [2, 3, 4, 5]


def test_throttle_validation_is_located(tmp_path):
    bad = METER.replace('{sleep: "30 milliseconds"}', '{max_archive_backlog: 0, autovacuum: yes, wait: 1}').replace(
        "batch_size: 10\n    transaction", "batch_size: fast\n    transaction")
    result = CliRunner().invoke(main, ["validate", str(write_entities(tmp_path / "bad", meter=bad))])
    assert result.exit_code == 1
    assert result.output.splitlines()[:4] == [
        f"{tmp_path}/bad/meter.yaml:15:37: error: patterns.0.throttle.max_archive_backlog must be at least 1, got 0",
        f"{tmp_path}/bad/meter.yaml:15:52: error: patterns.0.throttle.autovacuum: true is not one of: pause, ignore",
        f"{tmp_path}/bad/meter.yaml:15:57: error: unknown key 'wait'",
        f"{tmp_path}/bad/meter.yaml:37:17: error: patterns.3.batch_size must be a whole number, got 'fast'"]
    folder = write_entities(tmp_path / "bad2", meter=METER.replace(
        '{sleep: "30 milliseconds"}', '{sleep: "soon", max_replication_lag: "-1 s"}').replace(
        'target_batch_time: "100 milliseconds"', 'target_batch_time: "later"'))
    result = CliRunner().invoke(main, ["validate", str(folder)])
    assert result.exit_code == 1
    assert result.output.splitlines()[:3] == [
        f"{folder}/meter.yaml:15:23: error: throttle sleep 'soon' is not a positive duration of at most 100 years, "
        f"such as \"50 milliseconds\"",
        f"{folder}/meter.yaml:15:52: error: throttle max_replication_lag '-1 s' is not a positive duration of at "
        f"most 100 years, such as \"10 seconds\"",
        f"{folder}/meter.yaml:30:24: error: target_batch_time 'later' is not a positive duration of at most 100 "
        f"years, such as \"200 milliseconds\""]


# --------------------------------------------------------------------------- batch_size: auto

SLOW_FROM = 600  # rows above this key cost about 1 ms each to update (a trigger sleeps)


def test_auto_batch_size_converges_to_the_target_batch_time(database_url, tmp_path):
    prepare(database_url, tmp_path, rows=1800)
    with connect(database_url) as conn:
        conn.execute(f"""
            CREATE FUNCTION gentle.slow_half() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.id > {SLOW_FROM} THEN PERFORM pg_catalog.pg_sleep(0.001); END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER slow_half BEFORE UPDATE ON gentle.meter FOR EACH ROW EXECUTE FUNCTION gentle.slow_half();
        """)
        result = call(conn, "gentle.bump_all_auto")
        assert result["status"] == "completed" and result["processed_records"] == 1800
        batches = conn.execute(
            "SELECT batch_size, records_processed, 1000 * extract(epoch FROM completed_at - started_at)"
            "  FROM specql.batch_operation_logs WHERE operation_id = %s ORDER BY batch_number",
            (result["operation_id"],)).fetchall()
        sizes = [b[0] for b in batches]
        assert sizes[:3] == [100, 200, 400]  # fast rows: doubled each batch, never more
        assert max(sizes) >= 400
        for before, after in zip(sizes, sizes[1:]):
            assert before // 2 <= after <= before * 2  # damping
        full = [b for b in batches if b[1] == b[0]]  # the last batch may be short
        tail = full[-4:]
        assert len(tail) == 4
        # a row costs 1 ms or more (pg_sleep's granularity): the sizes fall to ~100 rows or fewer
        assert all(10 <= size <= 200 and size < max(sizes) / 2 for size, _, _ in tail), batches
        assert all(50 <= ms <= 200 for _, _, ms in tail), batches  # within x2 of the 100 ms target
        # the batch_size argument fixes the size: auto is off
        conn.execute("UPDATE gentle.meter SET n = 0")
        fixed = call(conn, "gentle.bump_all_auto", batch_size=300)
        sizes = {r[0] for r in conn.execute("SELECT batch_size FROM specql.batch_operation_logs "
                                            "WHERE operation_id = %s", (fixed["operation_id"],))}
        assert sizes == {300} and fixed["batch_count"] == 6


# --------------------------------------------------------------------------- a real standby


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    """(primary URL, standby URL, entities out dir): a private PG 15 primary with the meter
    entity applied and a streaming standby of it."""
    pg15_or_skip()
    from specql import database

    tmp = tmp_path_factory.mktemp("replicated")
    with database.local_server(PG15_BIN) as url:
        generate_and_apply(url, write_entities(tmp / "entities", meter=METER), tmp / "out")
        with standby_of(url) as standby:
            with connect(url) as conn:
                wait_for(lambda: conn.execute("SELECT count(*) FROM pg_stat_replication "
                                              "WHERE state = 'streaming'").fetchone()[0] == 1, 30, "the standby")
            yield url, standby


def run_in_thread(url: str, routine: str = "gentle.bump_committing", **args):
    box: dict = {}

    def work():
        try:
            with connect(url) as conn:
                box["result"] = call_procedure(conn, routine, **args)
        except Exception as e:  # reported by the test
            box["error"] = e

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, box


def committed_run(conn):
    return conn.execute("SELECT operation_id, batch_count, status FROM specql.batch_operation_runs "
                        "WHERE operation = 'bump_committing' ORDER BY started_at DESC LIMIT 1").fetchone()


def test_replication_lag_holds_the_run_until_replay_resumes(replicated):
    primary, standby = replicated
    with connect(primary) as conn:
        conn.execute("TRUNCATE gentle.meter, specql.batch_operation_runs; "
                     "INSERT INTO gentle.meter SELECT g, 0 FROM generate_series(1, 30) g")
        with lagging(primary, standby) as s:
            thread, box = run_in_thread(primary)
            wait_for(lambda: (committed_run(conn) or (0, 0))[1] >= 1, 10, "the first batch")
            time.sleep(1.5)
            operation_id, batches, status = committed_run(conn)
            assert (batches, status) == (1, "running") and thread.is_alive()  # waiting, not working
            s.execute("SELECT pg_wal_replay_resume()")
            thread.join(20)
        assert not thread.is_alive() and "error" not in box, box
        result = box["result"]
        assert result["status"] == "completed" and result["processed_records"] == 30
        rows = waits(conn, operation_id)
        assert rows and rows[0][0] == 2 and rows[0][1].startswith("replication_lag: a standby replays ")
        assert rows[0][2] >= 1500
        waited = conn.execute("SELECT waited_ms FROM specql.batch_operation_runs WHERE operation_id = %s",
                              (operation_id,)).fetchone()[0]
        assert waited == sum(r[2] for r in rows)
        assert conn.execute("SELECT count(*) FROM gentle.meter WHERE n = 1").fetchone()[0] == 30


def test_a_cancel_request_and_the_timeout_end_a_wait(replicated):
    primary, standby = replicated
    with connect(primary) as conn:
        conn.execute("TRUNCATE gentle.meter, specql.batch_operation_runs; "
                     "INSERT INTO gentle.meter SELECT g, 0 FROM generate_series(1, 30) g")
        with lagging(primary, standby):
            thread, box = run_in_thread(primary)
            wait_for(lambda: (committed_run(conn) or (0, 0))[1] >= 1, 10, "the first batch")
            operation_id = committed_run(conn)[0]
            time.sleep(0.5)
            started = time.monotonic()
            assert conn.execute("SELECT specql.cancel_operation(%s)", (operation_id,)).fetchone()[0]
            thread.join(10)
            assert time.monotonic() - started < 2.5  # the wait polls at most a second apart
            assert box["result"]["status"] == "cancelled" and box["result"]["batch_count"] == 1
            assert waits(conn, operation_id)[0][1].startswith("replication_lag")
            # a resume waits too (after its first batch), and its timeout (4 s, from the resume) ends the wait
            thread, box = run_in_thread(primary, resume=operation_id)
            thread.join(15)
            assert box["result"]["status"] == "timed_out" and box["result"]["batch_count"] == 2, box
            rows = waits(conn, operation_id)
            assert len(rows) == 2 and rows[1][0] == 3 and rows[1][2] >= 3000
            assert conn.execute("SELECT waited_ms FROM specql.batch_operation_runs WHERE operation_id = %s",
                                (operation_id,)).fetchone()[0] == sum(r[2] for r in rows)


def vacuuming(conn, backend_type: str):
    return conn.execute("SELECT v.pid FROM pg_stat_progress_vacuum v JOIN pg_stat_activity a USING (pid) "
                        "WHERE v.relid = 'gentle.meter'::regclass AND a.backend_type = %s",
                        (backend_type,)).fetchone()


def test_autovacuum_on_the_target_holds_the_run_and_a_manual_vacuum_does_not(replicated):
    """autovacuum: pause reads pg_stat_progress_vacuum joined to pg_stat_activity: an autovacuum
    worker on the target table holds the run (here until its timeout); a manual VACUUM in another
    session (backend_type 'client backend') does not. Both crawl (cost delay) to stay in view."""
    primary, _ = replicated
    with connect(primary) as conn:
        conn.execute("TRUNCATE gentle.meter, specql.batch_operation_runs; "
                     "INSERT INTO gentle.meter SELECT g, 0 FROM generate_series(1, 10000) g")
        conn.execute("ALTER TABLE gentle.meter SET (autovacuum_enabled = false, autovacuum_vacuum_cost_delay = 100,"
                     " autovacuum_vacuum_cost_limit = 1, autovacuum_vacuum_threshold = 0,"
                     " autovacuum_vacuum_scale_factor = 0)")
        conn.execute("UPDATE gentle.meter SET n = n")  # pages to vacuum

        def manual_vacuum():
            with connect(primary) as v:
                v.execute("SET vacuum_cost_delay = 100; SET vacuum_cost_limit = 1")
                try:
                    v.execute("VACUUM gentle.meter")
                except psycopg.errors.QueryCanceled:
                    pass

        thread = threading.Thread(target=manual_vacuum, daemon=True)
        thread.start()
        try:
            wait_for(lambda: vacuuming(conn, "client backend"), 10, "the manual VACUUM")
            result = call_procedure(conn, "gentle.bump_committing", batch_size=1000)
            assert result["status"] == "completed" and waits(conn, result["operation_id"]) == []
            assert vacuuming(conn, "client backend")  # it was vacuuming all along
        finally:
            conn.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_progress_vacuum")
            thread.join(10)
        try:
            conn.execute("ALTER SYSTEM SET autovacuum_naptime = 1")
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("ALTER TABLE gentle.meter SET (autovacuum_enabled = true)")
            conn.execute("UPDATE gentle.meter SET n = n")
            wait_for(lambda: vacuuming(conn, "autovacuum worker"), 30, "an autovacuum worker on gentle.meter")
            result = call_procedure(conn, "gentle.bump_committing", batch_size=1000)
            assert result["status"] == "timed_out" and result["batch_count"] == 1  # timeout: 4 seconds
            rows = waits(conn, result["operation_id"])
            assert len(rows) == 1 and rows[0][1].startswith("autovacuum: worker ") and rows[0][2] >= 2500
            assert "is vacuuming gentle.meter (" in rows[0][1]
        finally:
            conn.execute("ALTER TABLE gentle.meter SET (autovacuum_enabled = false)")
            conn.execute("ALTER SYSTEM RESET autovacuum_naptime")
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_progress_vacuum")


# --------------------------------------------------------------------------- archive backlog


def test_an_archive_backlog_holds_the_run_until_the_archiver_catches_up(tmp_path):
    """A private cluster with archive_mode on and a failing archive_command: WAL segments pile
    up as .ready; the run waits until archive_command works again."""
    pg15_or_skip()
    from psycopg.conninfo import conninfo_to_dict

    from specql import database

    with database.local_server(PG15_BIN) as url:
        pgdata = Path(conninfo_to_dict(url)["host"])
        with connect(url) as conn:
            conn.execute("ALTER SYSTEM SET archive_mode = on")
            conn.execute("ALTER SYSTEM SET archive_command = '/bin/false'")
        options = (f"-c listen_addresses='' -k {shlex.quote(str(pgdata))} -p 5432"
                   " -c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        database._run_as([str(PG15_BIN / "pg_ctl"), "-D", str(pgdata), "-w", "-t", "60", "-l",
                          str(pgdata / "server.log"), "-o", options, "restart"], database._system_user(), pgdata)
        prepare(url, tmp_path, rows=30)
        with connect(url) as conn:
            for _ in range(4):  # segments for the archiver, which fails
                conn.execute("UPDATE gentle.meter SET n = 0")
                conn.execute("SELECT pg_switch_wal()")
            ready = "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"
            assert conn.execute(ready).fetchone()[0] >= 3
            thread, box = run_in_thread(url, "gentle.bump_archived")
            wait_for(lambda: (conn.execute("SELECT batch_count FROM specql.batch_operation_runs").fetchone()
                              or (0,))[0] >= 1, 10, "the first batch")
            time.sleep(1)
            assert thread.is_alive()
            conn.execute("ALTER SYSTEM SET archive_command = '/bin/true'")
            conn.execute("SELECT pg_reload_conf()")
            thread.join(20)
            assert not thread.is_alive() and "error" not in box, box
            assert box["result"]["status"] == "completed" and box["result"]["processed_records"] == 30
            rows = waits(conn, box["result"]["operation_id"])
            assert rows[0][0] == 2 and rows[0][2] >= 1000
            assert rows[0][1].startswith("archive_backlog: ") and rows[0][1].endswith("WAL segments not archived "
                                                                                     "yet (max 2)")
