"""Transient failures in a parallel run (SPEC §3 `lock_timeout`, `retry`; §9): a worker's batch
that waits longer than lock_timeout for a row fails with 55P03, is retried after the doubling
backoff with a log row per retry, and one that outlasts its retries stops the run, exactly as
the routine does with the same data (tests/test_retry.py covers the routine on its own).

Real sessions: other sessions lock rows FOR UPDATE, or insert a key and leave it uncommitted
(helpers.HeldLock), and let go once a number of lock waits on them have begun (each wait is one
try of the batch), counted from pg_locks, never from a clock. The routine (CALL bump_tally())
and the workers (bump_tally_start, then two <op>_worker sessions, or specql run --workers 2)
run over the same 600 rows; what they wrote is compared. A CSV import (test_parallel.GADGET)
is compared the same way, its batch retried after its record-by-record pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import HeldLock, call_procedure, connect, errors, generate_and_apply, write_entities
from test_parallel import GADGET, Worker, _run, _seed_tally

# bump_tally (test_parallel.TALLY: n = n + 1 over 600 rows, batches of 50, chunks of 300,
# commit_per_batch) with a lock_timeout, two retries and a log row per batch.
GUARD = ('\n        lock_timeout: "200 milliseconds"'
         '\n        retry: {attempts: 2, backoff: "100 milliseconds"}'
         '\n        progress_tracking: true')

# Row 30 is in batch 1 (chunk 1), row 480 in batch 10 (chunk 2: batches 7..12).
FIRST, SECOND = 30, 480


def _logs(conn, op_id) -> list[tuple]:
    """The run's log rows (retries and batches), each batch's in the order written, and the worker
    that wrote each."""
    return conn.execute(
        "SELECT batch_number, status, attempt, left(wait_reason, 5), wait_ms, records_processed, records_failed, "
        "worker FROM specql.batch_operation_logs WHERE operation_id = %s ORDER BY batch_number, id",
        (op_id,)).fetchall()


def _facts(conn, op_id) -> dict:
    return {"run": _run(conn, op_id), "logs": _logs(conn, op_id), "errors": errors(conn, op_id),
            "rows": conn.execute("SELECT n, count(*) FROM tally GROUP BY 1 ORDER BY 1").fetchall()}


def _locks(url, second_waits):
    """Row FIRST let go at the second try of its batch (one retry); row SECOND likewise, or held
    (second_waits None) until released: its batch outlasts its retries."""
    lock = "SELECT 1 FROM tally WHERE id = %s FOR UPDATE"
    return HeldLock(url, lock, (FIRST,), waits=2), HeldLock(url, lock, (SECOND,), waits=second_waits)


def _by_routine(url, admin, second_waits) -> dict:
    admin.execute("UPDATE tally SET n = 0")
    first, second = _locks(url, second_waits)
    result = call_procedure(admin, "public.bump_tally")
    assert first.release() == 2 and second.release() == (second_waits or 3)
    assert first.waiters() == second.waiters() == {admin.info.backend_pid}
    facts = _facts(admin, result["operation_id"])
    facts["id"] = result["operation_id"]
    return facts


def _by_workers(url, admin, second_waits) -> dict:
    admin.execute("UPDATE tally SET n = 0")
    first, second = _locks(url, second_waits)
    op_id = admin.execute("SELECT public.bump_tally_start()").fetchone()[0]
    one = Worker(url, "bump_tally", op_id)
    first.wait_for(1)  # worker 1 waits in chunk 1: worker 2 claims chunk 2
    two = Worker(url, "bump_tally", op_id)
    one.join(), two.join()
    assert one.error is None and two.error is None, (one.error, two.error)
    assert first.release() == 2 and second.release() == (second_waits or 3)
    assert (first.waiters(), second.waiters()) == ({one.pid}, {two.pid})
    facts = _facts(admin, op_id)
    facts["id"] = op_id
    return facts


def _without_workers(logs) -> list[tuple]:
    return [row[:-1] for row in logs]


def test_a_workers_batch_retried_after_a_lock_timeout_is_logged_and_counted_as_the_routines(database_url_any,
                                                                                           tmp_path):
    url = database_url_any
    _seed_tally(url, tmp_path, errors="error_handling: stop_on_error" + GUARD)
    with connect(url) as admin:
        routine = _by_routine(url, admin, second_waits=2)
        workers = _by_workers(url, admin, second_waits=2)
    # The routine: batches 1 and 10 each retried once (55P03, after 100 ms), then applied.
    assert routine["run"] == ("completed", 600, 600, 0, 0, 12)
    retries = [r for r in routine["logs"] if r[1] == "retry"]
    assert retries == [(1, "retry", 1, "55P03", 100, 0, 0, 1), (10, "retry", 1, "55P03", 100, 0, 0, 1)]
    assert routine["errors"] == [] and routine["rows"] == [(1, 600)]
    # The workers: the same counts, log rows and errors; every row changed once.
    assert {k: workers[k] for k in ("run", "errors", "rows")} == {k: routine[k] for k in ("run", "errors", "rows")}
    assert _without_workers(workers["logs"]) == _without_workers(routine["logs"])
    # Each log row names the worker that wrote it: batch 1 and its retry worker 1's (chunk 1),
    # batch 10 and its retry worker 2's (chunk 2).
    assert sorted({(r[0], r[1] == "retry", r[7]) for r in workers["logs"] if r[0] in (1, 10)}) \
        == [(1, False, 1), (1, True, 1), (10, False, 2), (10, True, 2)]


@pytest.mark.parametrize("mode", ["stop_on_error", "continue_on_error", "collect_errors"])
def test_a_workers_batch_that_outlasts_its_retries_stops_the_run_as_the_routines(database_url_any, tmp_path, mode):
    # The routine stops the run at a transient failure left after the retries whatever the error
    # mode (README "Locks and transient failures"); the workers must do the same, and a resume
    # applies the batch that failed once, as the routine's does.
    url = database_url_any
    _seed_tally(url, tmp_path, errors=f"error_handling: {mode}" + GUARD)
    with connect(url) as admin:
        routine = _by_routine(url, admin, second_waits=None)
        routine_resumed = call_procedure(admin, "public.bump_tally", resume=str(routine["id"]))
        routine_final = _facts(admin, routine["id"])
        workers = _by_workers(url, admin, second_waits=None)
        Worker(url, "bump_tally", workers["id"], resume=True).join()
        workers_final = _facts(admin, workers["id"])
    # The routine: batch 1 retried once and applied; batch 10 retried twice (100, 200 ms), then
    # failed with 55P03 naming its 50 keys (451..500); the run failed there, 450 rows changed.
    # (the routine's total_records grows as it walks: not compared)
    assert routine["run"][:1] + routine["run"][2:] == ("failed", 450, 50, 1, 10)
    assert [r[:5] for r in routine["logs"] if r[1] == "retry"] \
        == [(1, "retry", 1, "55P03", 100), (10, "retry", 1, "55P03", 100), (10, "retry", 2, "55P03", 200)]
    [(batch, sqlstate, message, records)] = routine["errors"]
    assert (batch, sqlstate, sorted(records)) == (10, "55P03", list(range(451, 501)))
    assert routine["rows"] == [(0, 150), (1, 450)]
    assert routine_resumed["status"] == "completed_with_errors"
    assert routine_final["run"][:1] + routine_final["run"][2:] == ("completed_with_errors", 600, 0, 1, 13)
    assert routine_final["rows"] == [(1, 600)]
    # The workers: the same status, retry rows, error row; what was changed is counted (worker 1
    # may stop chunk 1 early when worker 2 stops the run first).
    assert workers["run"][:1] + workers["run"][3:5] == routine["run"][:1] + routine["run"][3:5]
    assert workers["errors"] == routine["errors"]
    assert [r for r in workers["logs"] if r[1] == "retry"] == \
        [r[:7] + (1 if r[0] == 1 else 2,) for r in routine["logs"] if r[1] == "retry"]
    assert [r[:7] for r in workers["logs"] if r[0] == 10] == [r[:7] for r in routine["logs"] if r[0] == 10]
    assert workers["rows"][-1] == (1, workers["run"][2])
    # Resumed: every row changed once, the error row kept, the failed batch counted once.
    assert workers_final["run"] == ("completed_with_errors", 600) + routine_final["run"][2:]
    assert (workers_final["errors"], workers_final["rows"]) == (routine_final["errors"], routine_final["rows"])


def test_specql_run_with_workers_retries_a_batch_as_the_routine(database_url_any, tmp_path):
    # The command line's workers (specql run --workers 2): the same retries, counts and rows as
    # the routine, each retry row with the number of the worker whose batch row follows it.
    url = database_url_any
    entities = _seed_tally(url, tmp_path, errors="error_handling: stop_on_error" + GUARD)
    with connect(url) as admin:
        routine = _by_routine(url, admin, second_waits=2)
        admin.execute("UPDATE tally SET n = 0")
        first, second = _locks(url, 2)
        out = subprocess.run([str(Path(sys.executable).parent / "specql"), "run", "bump_tally", str(entities),
                              "--database-url", url, "--workers", "2", "--format", "json"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert (first.release(), second.release()) == (2, 2)
        result = json.loads(out.stdout)
        workers = _facts(admin, result["operation_id"])
    assert routine["run"] == ("completed", 600, 600, 0, 0, 12)
    assert (result["status"], result["processed_records"], result["error_count"]) == ("completed", 600, 0)
    assert {k: workers[k] for k in ("run", "errors", "rows")} == {k: routine[k] for k in ("run", "errors", "rows")}
    assert _without_workers(workers["logs"]) == _without_workers(routine["logs"])
    by_batch = {r[0]: r[7] for r in workers["logs"] if r[1] != "retry"}
    assert [(r[0], r[7]) for r in workers["logs"] if r[1] == "retry"] == [(1, by_batch[1]), (10, by_batch[10])]


# A batch retried once: 39 records applied, record 5 failed once (one error row). A batch that
# outlasts its retries: the run stops at it, its error row naming the batch (records 1..20).
@pytest.mark.parametrize("waits, outcome", [
    (2, (("completed_with_errors", 39, 1, 1, 2), [1], [(1, "23502", {"line": 6, "record": {"sku": "S5", "title": None}})],
         39)),
    (None, (("failed", 0, 20, 1, 1), [1, 2], [(1, "55P03", {"records": [1, 20]})], 0)),
])
def test_a_csv_batch_retried_after_its_record_by_record_pass_counts_as_the_routines(database_url_any, tmp_path,
                                                                                    waits, outcome):
    # A CSV batch whose insert fails (record 5 without its title: NOT NULL) is applied record by
    # record: record 5 gets its error row, record 15 waits for a sku another session inserted
    # and has not committed (55P03), and the batch is tried again. Its savepoint took record 5's
    # error row away: the counts must follow, and the next try (or the error row) must see the
    # whole batch again, in the routine and in the workers alike. Before, both retried record 15
    # alone, losing records 1..14 (26 of 40 applied, "completed_with_errors" without an error
    # row), and an error row named record 15 alone. Staged with SQL (the psql path).
    url = database_url_any
    gadget = GADGET.replace("skip_invalid_rows: true", "skip_invalid_rows: true" + GUARD)
    generate_and_apply(url, write_entities(tmp_path / "entities", gadget=gadget), tmp_path / "out")
    with connect(url) as admin:
        def staged() -> tuple:
            admin.execute("DELETE FROM gadget")
            staging_id = admin.execute("SELECT gen_random_uuid()").fetchone()[0]
            admin.execute("INSERT INTO public.import_gadgets_staging (_staging_id, _record, sku, title) "
                          "SELECT %s, g, 'S' || g, CASE WHEN g <> 5 THEN 'T' || g END "
                          "FROM generate_series(1, 40) g", (staging_id,))
            return staging_id, HeldLock(url, "INSERT INTO gadget (sku, title) VALUES ('S15', 'held')", waits=waits)

        def facts(op_id, lock) -> tuple:
            assert lock.release() == (waits or 3)
            return (_run(admin, op_id)[:1] + _run(admin, op_id)[2:],
                    [r[2] for r in _logs(admin, op_id) if r[1:4:2] == ("retry", "55P03") and r[0] == 1],
                    [(b, state, records) for b, state, _, records in errors(admin, op_id)],
                    admin.execute("SELECT count(*) FROM gadget").fetchone()[0])

        staging_id, lock = staged()
        op_id = admin.execute("SELECT operation_id FROM public.import_gadgets(staging_id => %s)",
                              (staging_id,)).fetchone()[0]
        routine = facts(op_id, lock)
        staging_id, lock = staged()
        op_id = admin.execute("SELECT public.import_gadgets_start(staging_id => %s)", (staging_id,)).fetchone()[0]
        worker = Worker(url, "import_gadgets", op_id).join()
        assert worker.error is None, worker.error
        workers = facts(op_id, lock)
    assert routine == outcome
    assert workers == routine


# Retried once: row 20 logged by the record-by-record pass, the rest applied. Outlasting the
# retries: the run stops at batch 1, its error row naming the batch's keys, nothing applied.
@pytest.mark.parametrize("waits, outcome", [
    (2, (("completed_with_errors", 599, 1, 1, 12), [1], [(1, "23514", [20])], [(1, 599), (4, 1)])),
    (None, (("failed", 0, 50, 1, 1), [1, 2], [(1, "55P03", list(range(1, 51)))], [(0, 599), (4, 1)])),
])
def test_a_locked_record_in_collect_errors_pass_is_the_batchs_transient_failure(database_url_any, tmp_path,
                                                                                waits, outcome):
    # collect_errors: batch 1 fails on row 20 (CHECK n < 5) and is applied record by record;
    # row 30, locked by another session, makes its record wait past lock_timeout. That is the
    # batch's transient failure, not the record's: the pass is undone and the batch retried (or
    # the run stops), in the routine and in a worker alike. Before, both logged row 30 as a
    # failed record (55P03) and went on: completed_with_errors, 598 applied, 2 errors, no retry.
    url = database_url_any
    _seed_tally(url, tmp_path, errors="error_handling: collect_errors" + GUARD)
    with connect(url) as admin:
        def facts(op_id, lock) -> tuple:
            assert lock.release() == (waits or 3)
            return (_run(admin, op_id)[:1] + _run(admin, op_id)[2:],
                    [r[2] for r in _logs(admin, op_id) if r[1:4:2] == ("retry", "55P03") and r[0] == 1],
                    [(b, state, records) for b, state, _, records in errors(admin, op_id)],
                    admin.execute("SELECT n, count(*) FROM tally GROUP BY 1 ORDER BY 1").fetchall())

        def prepared() -> HeldLock:
            admin.execute("UPDATE tally SET n = CASE WHEN id = 20 THEN 4 ELSE 0 END")
            return HeldLock(url, "SELECT 1 FROM tally WHERE id = %s FOR UPDATE", (FIRST,), waits=waits)

        lock = prepared()
        routine = facts(call_procedure(admin, "public.bump_tally")["operation_id"], lock)
        lock = prepared()
        op_id = admin.execute("SELECT public.bump_tally_start()").fetchone()[0]
        worker = Worker(url, "bump_tally", op_id).join()
        assert worker.error is None, worker.error
        workers = facts(op_id, lock)
    assert routine == outcome
    assert workers == routine
