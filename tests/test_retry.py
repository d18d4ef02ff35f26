"""Protecting the live database (issue 10): lock_timeout per batch, retries of transient
failures with a doubling backoff, and a transient failure that outlasts its retries stops the
run instead of being logged as failed records (SPEC §3 `lock_timeout`, `retry`)."""

from __future__ import annotations

import threading
import time

import psycopg

from helpers import call, call_procedure, connect, generate_and_apply, write_entities

ITEM = """
name: item
schema: guard
fields:
  id: integer
  n: integer
patterns:
  - name: batch_operations
    operation: bump_items
    operation_type: update
    update_data: {n: {sql: "n + 1"}}
    where_condition: "id = ANY(:ids)"
    batch_size: 100
    error_handling: continue_on_error
    progress_tracking: true
    lock_timeout: "200 milliseconds"
    retry: {attempts: 3, backoff: "50 milliseconds"}
  - name: batch_operations
    operation: bump_items_once
    operation_type: update
    update_data: {n: {sql: "n + 1"}}
    where_condition: "id = ANY(:ids)"
    batch_size: 100
    error_handling: continue_on_error
    progress_tracking: true
    lock_timeout: "100 milliseconds"
  - name: batch_operations
    operation: bump_all_committing
    operation_type: update
    update_data: {n: {sql: "n + 1"}}
    where_condition: "n >= 0"
    batch_size: 100
    transaction: commit_per_batch
    error_handling: collect_errors
    lock_timeout: "100 milliseconds"
    retry: {attempts: 1, backoff: "10 milliseconds"}
"""


def prepare(url, tmp_path):
    generate_and_apply(url, write_entities(tmp_path / "entities", item=ITEM), tmp_path / "out")
    with connect(url) as conn:
        conn.execute("INSERT INTO guard.item SELECT g, 0 FROM generate_series(1, 500) g")


def hold_lock(url: str, row_id: int, seconds: float) -> threading.Thread:
    """Lock one row for `seconds` from another session; returns when the lock is held."""
    held = threading.Event()

    def work():
        with connect(url, autocommit=False) as conn:
            conn.execute("SELECT 1 FROM guard.item WHERE id = %s FOR UPDATE", (row_id,))
            held.set()
            time.sleep(seconds)
            conn.rollback()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    assert held.wait(10)
    return thread


def log_rows(conn, operation_id):
    return conn.execute("SELECT batch_number, status, attempt, left(wait_reason, 5), wait_ms "
                        "FROM specql.batch_operation_logs WHERE operation_id = %s ORDER BY id",
                        (operation_id,)).fetchall()


def test_a_batch_waiting_on_a_lock_is_retried_after_a_doubling_backoff(tmp_path, database_url_any):
    prepare(database_url_any, tmp_path)
    holder = hold_lock(database_url_any, 150, 0.5)  # batch 2 holds ids 101..200
    with connect(database_url_any) as conn:
        result = call(conn, "guard.bump_items", ids=list(range(1, 501)))
        assert (result["status"], result["processed_records"], result["error_count"]) == ("completed", 500, 0)
        rows = log_rows(conn, result["operation_id"])
        retries = [r for r in rows if r[1] == "retry"]
        assert retries and all(r[0] == 2 and r[3] == "55P03" for r in retries), rows
        assert [r[2] for r in retries] == list(range(1, len(retries) + 1))
        assert [float(r[4]) for r in retries] == [50 * 2 ** i for i in range(len(retries))]
        assert conn.execute("SELECT array_agg(DISTINCT n) FROM guard.item").fetchone()[0] == [1]
    holder.join()


def test_a_transient_failure_without_retries_left_stops_the_run_whatever_the_error_mode(tmp_path, database_url_any):
    prepare(database_url_any, tmp_path)
    holder = hold_lock(database_url_any, 250, 2.0)  # batch 3
    with connect(database_url_any) as conn:
        result = call(conn, "guard.bump_items_once", ids=list(range(1, 501)))
        # continue_on_error would have logged 100 failed records and gone on holding the locks
        assert (result["status"], result["processed_records"], result["batch_count"]) == ("failed", 200, 3)
        [error] = conn.execute("SELECT batch_number, sqlstate FROM specql.batch_operation_errors "
                               "WHERE operation_id = %s", (result["operation_id"],)).fetchall()
        assert error == (3, "55P03")
        assert conn.execute("SELECT count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n = 0) "
                            "FROM guard.item").fetchone() == (200, 300)
    holder.join()


def test_a_procedure_stopped_by_a_lock_resumes_at_the_batch_that_failed(tmp_path, database_url_any):
    prepare(database_url_any, tmp_path)
    holder = hold_lock(database_url_any, 350, 1.0)  # batch 4, longer than the one retry
    with connect(database_url_any) as conn:
        result = call_procedure(conn, "guard.bump_all_committing")
        assert (result["status"], result["processed_records"]) == ("failed", 300)
        holder.join()
        resumed = call_procedure(conn, "guard.bump_all_committing", resume=str(result["operation_id"]))
        # the batch that failed is applied on resume; its error row stays (error_count), its records
        # are no longer counted as failed
        assert (resumed["status"], resumed["processed_records"], resumed["failed_records"], resumed["error_count"]) \
            == ("completed_with_errors", 500, 0, 1)
        assert conn.execute("SELECT array_agg(DISTINCT n) FROM guard.item").fetchone()[0] == [1]


def test_two_runs_that_deadlock_stop_once_instead_of_failing_every_batch(tmp_path, database_url):
    """Two per_batch calls over the same ids in opposite order: the one PostgreSQL picks as the
    deadlock victim stops at once (status failed, one error row) and its commit lets the other finish;
    before, continue_on_error logged a deadlock per batch, ninety-nine times."""
    url = database_url
    generate_and_apply(url, write_entities(tmp_path / "entities", item=ITEM.replace(
        'lock_timeout: "100 milliseconds"', 'lock_timeout: "20 seconds"')), tmp_path / "out")
    with connect(url) as conn:
        conn.execute("INSERT INTO guard.item SELECT g, 0 FROM generate_series(1, 2000) g")
        conn.execute("ALTER DATABASE {} SET deadlock_timeout = '100ms'".format(conn.info.dbname))
        # Each changed row costs a little, so the two runs are still walking when they meet in the
        # middle, however the threads happen to be scheduled.
        conn.execute("""
            CREATE FUNCTION guard.slow() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep(0.0005); RETURN NEW; END $$;
            CREATE TRIGGER slow BEFORE UPDATE ON guard.item FOR EACH ROW EXECUTE FUNCTION guard.slow();
        """)
    ids = list(range(1, 2001))
    results: dict = {}

    def run(name, order):
        with psycopg.connect(url, autocommit=True) as conn:
            results[name] = call(conn, "guard.bump_items_once", ids=order)

    threads = [threading.Thread(target=run, args=("up", ids)), threading.Thread(target=run, args=("down", ids[::-1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    statuses = sorted(r["status"] for r in results.values())
    assert statuses == ["completed", "failed"], results
    failed = next(r for r in results.values() if r["status"] == "failed")
    assert failed["error_count"] == 1
    with connect(url) as conn:
        assert conn.execute("SELECT sqlstate FROM specql.batch_operation_errors WHERE operation_id = %s",
                            (failed["operation_id"],)).fetchall() == [("40P01",)]
