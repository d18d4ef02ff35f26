"""The heap walk (templates/sql/drivers/heap_walk.sql.j2, issue 15): a condition delete over a
uuid key walks the heap in physical order and deletes every matching row, in batches of at most
batch_size, in every transaction mode; a row another session moves past the walk while it runs
is caught up. The concurrency proof also runs against the SQL without the catch-up pass, and
must then fail: the test can tell."""

from __future__ import annotations

import math
import re
import shutil
import threading
import time

import pytest

from helpers import batch_log, call, connect, write_entities
from specql.generate import generate
from specql.migrate import migrate

COUNTER = """
    name: counter
    fields:
      id: uuid
      n: integer
      tag: string
      note: string
    patterns:
      - name: batch_operations
        operation: drop_counters
        operation_type: delete
        where_condition: "tag = :tag"
        batch_size: 40
        progress_tracking: true
      - name: batch_operations
        operation: drop_counters_single
        operation_type: delete
        where_condition: "tag = :tag"
        batch_size: 40
        transaction: single
        progress_tracking: true
      - name: batch_operations
        operation: drop_counters_collect
        operation_type: delete
        where_condition: "tag = :tag"
        batch_size: 40
        error_handling: collect_errors
        progress_tracking: true
      - name: batch_operations
        operation: bump_counters
        operation_type: update
        update_data: {n: {sql: "n + 1"}}
        where_condition: "tag = :tag"
        batch_size: 40
"""

NO_CATCH_UP = (r"EXIT WHEN _catch_up;", "EXIT;")


def apply(url: str, tmp_path, fault: tuple[str, str] | None = None) -> str:
    entities = write_entities(tmp_path / "entities", counter=COUNTER)
    out = tmp_path / "out"
    generate([str(entities)], out)
    migrations = out / "migrations"
    [target] = migrations.glob("*public.counter*.sql")
    text = target.read_text()
    if fault:
        faulty = tmp_path / "faulty"
        shutil.copytree(migrations, faulty)
        [target] = faulty.glob("*public.counter*.sql")
        text, count = re.subn(fault[0], fault[1], text)
        assert count >= 1, "the fault's pattern no longer matches the generated SQL"
        target.write_text(text)
        migrations = faulty
    lines: list[str] = []
    assert migrate(migrations, url, echo=lines.append) == 0, "\n".join(lines)
    return text


def seed(conn, rows: int) -> None:
    """Full pages (fillfactor 100) and an index on n: an update can neither stay on its page
    (HOT) nor find room there; every third row is left out of the target."""
    conn.execute("ALTER TABLE public.counter SET (fillfactor = 100, autovacuum_enabled = false)")
    conn.execute("CREATE INDEX counter_n_idx ON public.counter (n)")
    conn.execute("INSERT INTO public.counter (id, n, tag, note) SELECT md5(g::text)::uuid, g, "
                 "CASE WHEN g %% 3 = 0 THEN 'b' ELSE 'a' END, 'x' FROM generate_series(1, %s) g", (rows,))


def positions(conn) -> dict[str, tuple[int, int, str]]:
    return {k: (b, n, t) for k, b, n, t in conn.execute(
        "SELECT id::text, (ctid::text::point)[0]::int, n, tag FROM public.counter")}


def blocks(conn) -> int:
    return conn.execute("SELECT pg_relation_size('public.counter') / current_setting('block_size')::int").fetchone()[0]


def test_only_a_delete_walks_the_heap(tmp_path, database_url):
    sql = apply(database_url, tmp_path)
    drop = sql[sql.index("FUNCTION public.drop_counters("):sql.index("FUNCTION public.drop_counters_single(")]
    bump = sql[sql.index("FUNCTION public.bump_counters("):]
    assert "-- Heap walk: the next _batch_size matching rows" in drop
    assert "-- Heap walk" not in bump and "-- Keyset pagination on the primary key" in bump


@pytest.mark.parametrize("routine", ["drop_counters", "drop_counters_single", "drop_counters_collect"])
def test_every_target_row_is_deleted_in_batches_in_physical_order(routine, tmp_path, database_url_any):
    apply(database_url_any, tmp_path)  # PostgreSQL 18 and 15
    with connect(database_url_any) as conn:
        seed(conn, 3000)
        # Free space here and there, as a table has after deletes and VACUUM.
        conn.execute("DELETE FROM public.counter WHERE (ctid::text::point)[0]::int % 3 = 2")
        conn.execute("VACUUM public.counter")
        before = positions(conn)
        target = sorted((b_n, k) for k, (b, n, t) in before.items() if t == "a" for b_n in [(b, n)])
        result = call(conn, f"public.{routine}", tag="a")
        after = positions(conn)
        log = batch_log(conn, result["operation_id"])
    assert result["status"] == "completed" and result["processed_records"] == len(target)
    assert after == {k: v for k, v in before.items() if v[2] == "b"}, "rows outside the target changed"
    assert len(log) == math.ceil(len(target) / 40)
    assert [b[1] for b in log] == [min(40, len(target) - i * 40) for i in range(len(log))]


def run_with_a_concurrent_update(url: str) -> tuple[dict, dict, dict, str, int]:
    """The run stops in its first batch (a row trigger waits for an advisory lock the test
    holds); meanwhile another session changes a row far ahead of the walk and commits (its new
    version goes past the heap's end at the start, where the walk ends); then the run goes on."""
    with connect(url) as conn:
        seed(conn, 3000)
        # Fill the last page with rows the condition leaves alone: the concurrent change must
        # then extend the heap, past where the walk ends.
        per_block = dict(conn.execute("SELECT (ctid::text::point)[0]::int, count(*) FROM public.counter GROUP BY 1"))
        full, last = per_block[0], per_block[max(per_block)]
        conn.execute("INSERT INTO public.counter (id, n, tag, note) SELECT md5('pad' || g)::uuid, 0, 'b', 'x' "
                     "FROM generate_series(1, %s) g", (full - last,))
        end = blocks(conn)
        first = conn.execute("SELECT id::text FROM public.counter WHERE tag = 'a' ORDER BY ctid LIMIT 1").fetchone()[0]
        moved = conn.execute("SELECT id::text FROM public.counter WHERE (ctid::text::point)[0]::int = 5 "
                             "AND tag = 'a' LIMIT 1").fetchone()[0]
        conn.execute(f"""
            CREATE FUNCTION public.counter_wait() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF OLD.id = '{first}' THEN
                    PERFORM pg_advisory_xact_lock_shared(4242);
                END IF;
                RETURN OLD;
            END $$""")
        conn.execute("CREATE TRIGGER counter_wait BEFORE DELETE ON public.counter "
                     "FOR EACH ROW EXECUTE FUNCTION public.counter_wait()")
        before = positions(conn)
    holder, runner = connect(url, autocommit=False), connect(url)
    holder.execute("SELECT pg_advisory_xact_lock(4242)")
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(call(runner, "public.drop_counters", tag="a")))
    thread.start()
    with connect(url) as other:
        for _ in range(600):  # the run is waiting for the lock (its first batch)
            if other.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0]:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the run never reached its first batch")
        other.execute("UPDATE public.counter SET note = 'changed meanwhile' WHERE id = %s", (moved,))
        moved_to = other.execute("SELECT (ctid::text::point)[0]::int FROM public.counter WHERE id = %s",
                                 (moved,)).fetchone()[0]
    holder.rollback()  # let the run go on
    thread.join(120)
    holder.close()
    with connect(url) as conn:
        after = positions(conn)
    runner.close()
    assert moved_to >= end, "the concurrent change did not extend the heap"
    return out, before, after, moved, moved_to


def test_a_row_moved_past_the_walk_by_another_session_is_caught_up(tmp_path, database_url_any):
    apply(database_url_any, tmp_path)  # PostgreSQL 18 and 15
    result, before, after, moved, _ = run_with_a_concurrent_update(database_url_any)
    target = [k for k, v in before.items() if v[2] == "a"]
    assert result["status"] == "completed" and result["processed_records"] == len(target)
    assert moved not in after
    assert after == {k: v for k, v in before.items() if v[2] == "b"}


def test_the_concurrency_proof_fails_without_the_catch_up_pass(tmp_path, database_url):
    apply(database_url, tmp_path, NO_CATCH_UP)
    result, before, after, moved, _ = run_with_a_concurrent_update(database_url)
    assert moved in after, "the proof cannot tell a row left behind"



# The catch-up filter before the run's first snapshot was consulted (age() alone).
SNAPSHOT_BLIND = (r"AND NOT pg_catalog\.pg_visible_in_snapshot\(\(_base - pg_catalog\.age\(xmin\)\)::text::xid8, _snap\)", "")


def run_while_an_older_transaction_runs(url: str) -> tuple[dict, int, list, int, str]:
    """drop_counters_collect over 1,000 rows seeded after another session took a transaction
    id (the oldest running transaction is cluster-wide), one target row refusing its delete:
    (result, error rows, target rows left, target size, the refusing row)."""
    with connect(url) as old:
        old.execute("BEGIN")
        old.execute("SELECT pg_current_xact_id()")  # older than every row seeded below
        try:
            with connect(url) as conn:
                seed(conn, 1000)
                target = conn.execute("SELECT count(*) FROM public.counter WHERE tag = 'a'").fetchone()[0]
                bad = conn.execute("SELECT id::text FROM public.counter WHERE tag = 'a' ORDER BY ctid "
                                   "OFFSET 50 LIMIT 1").fetchone()[0]
                conn.execute(f"""
                    CREATE FUNCTION public.refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $f$
                    BEGIN
                        IF OLD.id = '{bad}' THEN RAISE check_violation USING MESSAGE = 'planted'; END IF;
                        RETURN OLD;
                    END $f$""")
                conn.execute("CREATE TRIGGER refuse_bad BEFORE DELETE ON public.counter "
                             "FOR EACH ROW EXECUTE FUNCTION public.refuse_bad()")
                result = call(conn, "public.drop_counters_collect", tag="a")
                errors = conn.execute("SELECT count(*) FROM specql.batch_operation_errors WHERE operation_id = %s",
                                      (result["operation_id"],)).fetchone()[0]
                left = conn.execute("SELECT array_agg(id::text) FROM public.counter WHERE tag = 'a'").fetchone()[0]
        finally:
            old.execute("ROLLBACK")
    return result, errors, left, target, bad


def test_rows_committed_before_the_run_are_not_caught_up_while_an_older_transaction_runs(
        tmp_path, database_url_any):
    """The catch-up pass takes only versions the run's first snapshot did not see: rows seeded
    after an older transaction began are not new to the run. Otherwise the row that failed
    (still matching) is taken and fails again, and the main walk's rows are listed twice."""
    apply(database_url_any, tmp_path)  # PostgreSQL 18 and 15
    result, errors, left, target, bad = run_while_an_older_transaction_runs(database_url_any)
    assert result["status"] == "completed_with_errors"
    assert (result["processed_records"], result["failed_records"], errors) == (target - 1, 1, 1)
    assert result["batch_count"] == math.ceil(target / 40), "the catch-up pass took rows the main walk had"
    assert left == [bad]


def test_the_older_transaction_proof_fails_with_a_catch_up_blind_to_the_snapshot(tmp_path, database_url):
    apply(database_url, tmp_path, SNAPSHOT_BLIND)
    result, errors, left, target, bad = run_while_an_older_transaction_runs(database_url)
    assert errors > 1 or result["batch_count"] != math.ceil(target / 40), "the proof cannot tell"


def test_a_timeout_in_the_last_batch_of_the_walk_completes(tmp_path, database_url_any):
    # timeout 300 ms, 80 target rows in 2 batches of 40 (heap order: insertion order), a 0.5 s
    # row. In the last batch (row 80) the walk finds nothing after it: the run completes (it
    # said timed_out). In the first (row 40) it times out after it, rows 41..80 left.
    url = database_url_any
    timed = COUNTER + """      - name: batch_operations
        operation: drop_counters_timed
        operation_type: delete
        where_condition: "tag = :tag"
        batch_size: 40
        timeout: "300 milliseconds"
"""
    entities = write_entities(tmp_path / "entities", counter=timed)
    generate([str(entities)], tmp_path / "out")
    assert migrate(tmp_path / "out" / "migrations", url, echo=lambda _: None) == 0
    with connect(url) as conn:
        conn.execute("CREATE FUNCTION sleepy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "IF OLD.note = 'sleepy' THEN PERFORM pg_sleep(0.5); END IF; RETURN OLD; END $$")
        conn.execute("CREATE TRIGGER counter_sleepy BEFORE DELETE ON public.counter FOR EACH ROW EXECUTE FUNCTION sleepy()")

        def run(sleepy: int) -> tuple:
            conn.execute("DELETE FROM public.counter")
            conn.execute("INSERT INTO public.counter (id, n, tag, note) SELECT gen_random_uuid(), g, "
                         "CASE WHEN g > 80 THEN 'b' ELSE 'a' END, CASE WHEN g = %s THEN 'sleepy' ELSE 'x' END "
                         "FROM generate_series(1, 120) g", (sleepy,))
            r = call(conn, "public.drop_counters_timed", tag="a")
            assert "-- Heap walk" in conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'drop_counters_timed'").fetchone()[0]
            return r["status"], r["processed_records"], r["batch_count"]

        def left() -> list[int]:
            return [n for (n,) in conn.execute("SELECT n FROM public.counter ORDER BY n")]

        assert run(80) == ("completed", 80, 2)
        assert left() == list(range(81, 121))
        assert run(40) == ("timed_out", 40, 1)
        assert left() == list(range(41, 121))
