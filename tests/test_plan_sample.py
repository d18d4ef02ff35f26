"""`specql plan`'s sample (issue 15): it stops after N batches without a call of its own in every
batch, and the time per batch it measures is the routine's, so the estimate meets a real run."""

from __future__ import annotations

import time

import pytest

from helpers import connect, generate_and_apply, write_entities
from specql import explain
from specql.generate import load_project
from specql.run import bind_params, find_operation

SLOW = """
    name: slow
    fields:
      id: uuid
      status: string
      n: integer
    patterns:
      - name: batch_operations
        operation: bump_slow
        operation_type: update
        update_data: {n: {sql: "n + 1"}}
        where_condition: "status = :status"
        batch_size: 10
      - name: batch_operations
        operation: bump_slow_unlogged
        operation_type: update
        update_data: {n: {sql: "n + 1"}}
        where_condition: "status = :status"
        batch_size: 10
        progress_tracking: false
"""

# Every batch statement on public.slow sleeps this long: a batch's time the sample must find.
SLEEP = 0.02


@pytest.fixture
def slow(tmp_path, database_url):
    entities = write_entities(tmp_path / "entities", slow=SLOW)
    generate_and_apply(database_url, entities, tmp_path / "out")
    with connect(database_url) as conn:
        conn.execute("INSERT INTO public.slow (status, n) SELECT 'new', g FROM generate_series(1, 300) g")
        conn.execute(f"""
            CREATE FUNCTION public.slow_statement() RETURNS trigger LANGUAGE plpgsql AS $f$
            BEGIN PERFORM pg_sleep({SLEEP}); RETURN NULL; END $f$""")
        conn.execute("CREATE TRIGGER slow_statement AFTER UPDATE ON public.slow FOR EACH STATEMENT "
                     "EXECUTE FUNCTION public.slow_statement()")
        conn.execute("ANALYZE public.slow")
    return database_url, load_project([str(entities)])


def test_the_stop_trigger_calls_its_function_only_at_the_last_sample_batch(slow):
    url, project = slow
    op = find_operation(project, "bump_slow")
    with connect(url, autocommit=False) as conn:
        conn.execute("SET LOCAL track_functions = 'pl'")
        conn.execute("INSERT INTO specql.batch_operation_runs "
                     "(operation_id, operation, started_at, heartbeat_at, backend_pid) "
                     "VALUES (gen_random_uuid(), 'bump_slow', now(), now(), pg_backend_pid())")
        explain._install_stop(conn, op, 3)
        seen = []
        for _ in range(4):
            conn.execute("UPDATE public.slow SET n = n WHERE n = 1")
            calls = conn.execute("SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions "
                                 "WHERE funcname = '_plan_sample_stop'").fetchone()[0]
            cancelled = conn.execute("SELECT count(*) FROM specql.batch_operation_cancellations").fetchone()[0]
            seen.append((calls, cancelled))
        conn.rollback()
    # statements 1 and 2: the WHEN clause alone (no call, no cancel); 3: the one call that cancels
    assert seen[:3] == [(0, 0), (0, 0), (1, 1)], seen


@pytest.mark.parametrize("operation, timed_by", [("bump_slow", "log rows"), ("bump_slow_unlogged", "routine's clock")])
def test_the_estimate_meets_the_real_run(slow, operation, timed_by):
    url, project = slow
    op = find_operation(project, operation)
    bound = bind_params(op, ["status=new"])
    report = explain.plan_operation(url, op, bound, sample_batches=10)
    assert (report.records, report.batches, report.sample.batches) == (300, 30, 10)
    assert report.sample.timed_by == timed_by
    # a batch is its statement's sleep and a little more, not the whole sample's share of the call
    assert SLEEP <= report.sample.batch_seconds < SLEEP * 2, report.sample
    with connect(url) as conn:
        t0 = time.perf_counter()
        result = conn.execute(f"SELECT status, batch_count FROM public.{operation}(status => 'new')").fetchone()
        real = time.perf_counter() - t0
    assert result == ("completed", 30)
    assert 0.7 <= report.estimate_seconds / real <= 1.3, (report.estimate_seconds, real)
