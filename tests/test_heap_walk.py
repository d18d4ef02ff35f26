"""The heap walk (templates/sql/drivers/heap_walk.sql.j2, issue 15): a condition walk over a uuid
key in physical order changes every matching row exactly once, even when every change moves the
row to a part of the heap the walk has not visited yet, and when another session moves a row
behind the walk while it runs. Each proof also runs against the SQL with the safeguard taken
out, and must then fail: the test can tell."""

from __future__ import annotations

import re
import shutil
import threading
import time

import pytest

from helpers import call, connect, write_entities
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
        operation: bump_counters
        operation_type: update
        update_data: {n: {sql: "n + 1"}}
        where_condition: "tag = :tag"
        batch_size: 40
      - name: batch_operations
        operation: bump_counters_single
        operation_type: update
        update_data: {n: {sql: "n + 1"}}
        where_condition: "tag = :tag"
        batch_size: 40
        transaction: single
      - name: batch_operations
        operation: bump_counters_collect
        operation_type: update
        update_data: {n: {sql: "n + 1"}}
        where_condition: "tag = :tag"
        batch_size: 40
        error_handling: collect_errors
"""

# Safeguards taken out (the proof must then fail).
NO_OWN_FILTER = (r"pg_catalog\.pg_xact_status\(\(_base - pg_catalog\.age\(xmin\)\)::text::xid8\) IS DISTINCT FROM 'in progress'",
                 "true")
NO_CATCH_UP = (r"EXIT WHEN _catch_up;", "EXIT;")


def apply(url: str, tmp_path, fault: tuple[str, str] | None = None) -> None:
    entities = write_entities(tmp_path / "entities", counter=COUNTER)
    out = tmp_path / "out"
    generate([str(entities)], out)
    migrations = out / "migrations"
    if fault:
        faulty = tmp_path / "faulty"
        shutil.copytree(migrations, faulty)
        [target] = faulty.glob("*public.counter*.sql")
        sql, count = re.subn(fault[0], fault[1], target.read_text())
        assert count >= 1, "the fault's pattern no longer matches the generated SQL"
        target.write_text(sql)
        migrations = faulty
    lines: list[str] = []
    assert migrate(migrations, url, echo=lines.append) == 0, "\n".join(lines)


def seed(conn, rows: int) -> None:
    """Full pages (fillfactor 100) and an index on n: an update can neither stay on its page
    (HOT) nor find room there, so its new version goes to the free space the map knows of."""
    conn.execute("ALTER TABLE public.counter SET (fillfactor = 100, autovacuum_enabled = false)")
    conn.execute("CREATE INDEX counter_n_idx ON public.counter (n)")
    conn.execute("INSERT INTO public.counter (id, n, tag, note) SELECT md5(g::text)::uuid, g, 'a', 'x' "
                 "FROM generate_series(1, %s) g", (rows,))


def positions(conn) -> dict[str, tuple[int, int]]:
    return {k: (b, n) for k, b, n in conn.execute(
        "SELECT id::text, (ctid::text::point)[0]::int, n FROM public.counter")}


def blocks(conn) -> int:
    return conn.execute("SELECT pg_relation_size('public.counter') / current_setting('block_size')::int").fetchone()[0]


@pytest.mark.parametrize("routine", ["bump_counters", "bump_counters_single", "bump_counters_collect"])
def test_every_row_changes_once_when_every_change_moves_it_ahead_of_the_walk(routine, tmp_path, database_url_any):
    database_url = database_url_any  # PostgreSQL 18 and 15
    apply(database_url, tmp_path)
    with connect(database_url) as conn:
        seed(conn, 3000)
        # Room ahead of the walk: empty every third block, so a changed row's new version lands
        # in a block the walk has not reached yet (or at the end of the heap).
        conn.execute("DELETE FROM public.counter WHERE (ctid::text::point)[0]::int % 3 = 2")
        conn.execute("VACUUM public.counter")
        before, end = positions(conn), blocks(conn)
        result = call(conn, f"public.{routine}", tag="a")
        after = positions(conn)
    assert result["status"] == "completed" and result["processed_records"] == len(before)
    assert {k: n for k, (_, n) in after.items()} == {k: n + 1 for k, (_, n) in before.items()}
    ahead = [k for k in before if before[k][0] < after[k][0] < end]
    assert ahead, "no new version landed in a part of the heap the walk had not visited"


def test_the_proof_fails_without_the_own_versions_filter(tmp_path, database_url):
    apply(database_url, tmp_path, NO_OWN_FILTER)
    with connect(database_url) as conn:
        seed(conn, 3000)
        conn.execute("DELETE FROM public.counter WHERE (ctid::text::point)[0]::int % 3 = 2")
        conn.execute("VACUUM public.counter")
        before = positions(conn)
        call(conn, "public.bump_counters", tag="a")
        after = positions(conn)
    assert any(after[k][1] > n + 1 for k, (_, n) in before.items()), "the proof cannot tell a row changed twice"


def run_with_a_concurrent_update(url: str) -> tuple[dict, dict, dict, str]:
    """The run stops in its first batch (a row trigger waits for an advisory lock the test
    holds); meanwhile another session changes a row far ahead of the walk and commits (its new
    version goes to the end of the heap, past where the walk ends); then the run goes on."""
    with connect(url) as conn:
        seed(conn, 3000)
        # Fill the last page with rows the condition leaves alone: the concurrent change must
        # then extend the heap, past where the walk ends.
        per_block = dict(conn.execute("SELECT (ctid::text::point)[0]::int, count(*) FROM public.counter GROUP BY 1"))
        full, last = per_block[0], per_block[max(per_block)]
        conn.execute("INSERT INTO public.counter (id, n, tag, note) SELECT md5('pad' || g)::uuid, 0, 'b', 'x' "
                     "FROM generate_series(1, %s) g", (full - last,))
        end = blocks(conn)
        first = conn.execute("SELECT id::text FROM public.counter ORDER BY ctid LIMIT 1").fetchone()[0]
        moved = conn.execute("SELECT id::text FROM public.counter WHERE (ctid::text::point)[0]::int = 5 "
                             "LIMIT 1").fetchone()[0]
        conn.execute(f"""
            CREATE FUNCTION public.counter_wait() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF OLD.id = '{first}' AND NEW.n <> OLD.n THEN
                    PERFORM pg_advisory_xact_lock_shared(4242);
                END IF;
                RETURN NEW;
            END $$""")
        conn.execute("CREATE TRIGGER counter_wait BEFORE UPDATE ON public.counter "
                     "FOR EACH ROW EXECUTE FUNCTION public.counter_wait()")
        before = {k: v for k, v in positions(conn).items() if v[1] > 0}  # the target ('a' rows)
    holder, runner = connect(url, autocommit=False), connect(url)
    holder.execute("SELECT pg_advisory_xact_lock(4242)")
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(call(runner, "public.bump_counters", tag="a")))
    thread.start()
    with connect(url) as other:
        for _ in range(600):  # the run is waiting for the lock (its first batch)
            if other.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0]:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the run never reached its first batch")
        other.execute("UPDATE public.counter SET note = 'changed meanwhile' WHERE id = %s", (moved,))
    holder.rollback()  # let the run go on
    thread.join(120)
    holder.close()
    with connect(url) as conn:
        after = {k: v for k, v in positions(conn).items() if k in before}
    runner.close()
    assert after[moved][0] >= end, "the concurrent change did not extend the heap"
    return out, before, after, moved


def test_a_row_moved_past_the_walk_by_another_session_is_caught_up(tmp_path, database_url_any):
    database_url = database_url_any  # PostgreSQL 18 and 15
    apply(database_url, tmp_path)
    result, before, after, moved = run_with_a_concurrent_update(database_url)
    assert after[moved][0] > before[moved][0], "the concurrent change did not move the row"
    assert result["status"] == "completed" and result["processed_records"] == len(before)
    assert {k: n for k, (_, n) in after.items()} == {k: n + 1 for k, (_, n) in before.items()}


def test_the_concurrency_proof_fails_without_the_catch_up_pass(tmp_path, database_url):
    apply(database_url, tmp_path, NO_CATCH_UP)
    result, before, after, moved = run_with_a_concurrent_update(database_url)
    assert after[moved][1] == before[moved][1], "the proof cannot tell a row left behind"
