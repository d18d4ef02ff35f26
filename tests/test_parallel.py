"""Parallel workers (SPEC §9, issue 13): <op>_start splits a run into chunks, <op>_worker claims
them in any number of sessions, a dead worker's chunk is applied once by another, cancel and
resume, error limits per worker, the last worker closes the run, `specql run --workers`.

Workers are real sessions (one connection each, in threads). Where a test needs a worker
caught in the middle of a chunk, a row trigger makes it wait on an advisory lock the test
holds (a "gate"): the test then knows exactly which batches were applied, never a timing.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from helpers import call, connect, generate_and_apply, write_entities
from specql.harness_parallel import Worker as HarnessWorker
from specql.harness_parallel import wait_at_gate as _wait_at_gate

ITEM = """\
    name: item
    primary_key: id
    fields:
      id: bigint
      n: integer
      status: string
    patterns:
      - name: batch_operations
        operation: bump_items
        operation_type: update
        update_data:
          n: {sql: "n + 1"}
          status: :new_status
        where_condition: "status <> 'skip'"
        batch_size: 50
        parallel: true
        max_workers: 3
        worker_batch_size: 300
        error_handling: continue_on_error
        collect_metrics: true
        notify_on_completion: true
      - name: batch_operations
        operation: bump_listed
        operation_type: update
        update_data:
          n: {sql: "n + 1"}
        where_condition: "id = ANY(:ids)"
        batch_size: 40
        parallel: true
        worker_batch_size: 130
      - name: batch_operations
        operation: bump_listed_capped
        operation_type: update
        update_data:
          n: {sql: "n + 1"}
        where_condition: "id = ANY(:ids) AND status <> 'skip'"
        max_records: 400
        parallel: true
"""

READING = """\
    name: reading
    primary_key: id
    fields:
      id: bigint
      value: integer
    patterns:
      - name: batch_operations
        operation: import_readings
        operation_type: insert
        insert_data:
          id: :rec.id
          value: :rec.value
        data_source: :readings
        batch_size: 5
        parallel: true
        worker_batch_size: 10
        error_handling: collect_errors
        max_errors_per_worker: 2
"""

GADGET = """\
    name: gadget
    fields:
      id: uuid
      sku: {type: string, unique: true}
      title: {type: string, nullable: false}
    patterns:
      - name: batch_operations
        operation: import_gadgets
        data_source: csv_file
        field_mapping: {sku: sku, title: title}
        skip_invalid_rows: true
        batch_size: 20
        parallel: true
        worker_batch_size: 50
"""

GATE = 4242  # the advisory lock a gated row waits for


@pytest.fixture
def entities(tmp_path):
    return write_entities(tmp_path / "entities", item=ITEM, reading=READING)


def _setup(url: str, entities: Path, tmp_path: Path, rows: int = 2000) -> None:
    generate_and_apply(url, entities, tmp_path / "out")
    with connect(url) as conn:
        conn.execute("INSERT INTO item SELECT g, 0, CASE WHEN g %% 7 = 0 THEN 'skip' ELSE 'new' END "
                     "FROM generate_series(1, %s) g", (rows,))
        conn.execute("ALTER TABLE reading ADD CHECK (value >= 0)")
        # The gate: an update of a listed row waits for the test's advisory lock.
        conn.execute("CREATE TABLE gate (id bigint PRIMARY KEY)")
        conn.execute(f"""
            CREATE FUNCTION gate_row() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF EXISTS (SELECT 1 FROM gate WHERE id = NEW.id) THEN
                    PERFORM pg_advisory_xact_lock({GATE});
                END IF;
                RETURN NEW;
            END $$""")
        conn.execute("CREATE TRIGGER item_gate BEFORE UPDATE ON item FOR EACH ROW EXECUTE FUNCTION gate_row()")


class Worker(HarnessWorker):
    """The generated tests' worker (specql/harness_parallel.py) of public.<op>_worker: its
    CALL in a session of its own, in a thread; result as a dict."""

    def __init__(self, url: str, op: str, operation_id, resume: bool = False):
        super().__init__(url, f"public.{op}_worker", operation_id, resume)


def _chunks(conn, operation_id):
    return conn.execute("SELECT chunk_number, status, lower_key, upper_key, records, worker, next_batch, "
                        "processed_records FROM specql.batch_operation_chunks WHERE operation_id = %s "
                        "ORDER BY chunk_number", (operation_id,)).fetchall()


def _run(conn, operation_id):
    return conn.execute("SELECT status, total_records, processed_records, failed_records, error_count, batch_count "
                        "FROM specql.batch_operation_runs WHERE operation_id = %s", (operation_id,)).fetchone()


def test_two_workers_split_a_condition_walk_into_disjoint_complete_chunks(database_url, entities, tmp_path):
    _setup(database_url, entities, tmp_path)
    with connect(database_url) as admin:
        admin.execute("INSERT INTO gate VALUES (120)")  # in chunk 1, batch 3
        admin.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        op_id = admin.execute("SELECT public.bump_items_start(new_status => 'done')").fetchone()[0]
        chunks = _chunks(admin, op_id)
        # 1715 matching rows in chunks of 300: 6 chunks, key ranges that meet end to end.
        assert [c[4] for c in chunks] == [300, 300, 300, 300, 300, 215]
        assert chunks[0][2] is None and chunks[-1][3] is None
        assert all(a[3] == b[2] for a, b in zip(chunks, chunks[1:]))
        first = Worker(database_url, "bump_items", op_id)
        _wait_at_gate(admin, first.pid)  # worker 1 holds chunk 1
        second = Worker(database_url, "bump_items", op_id).join()  # worker 2 does every other chunk
        assert second.error is None
        assert (second.result["status"], second.result["processed_records"]) == ("completed", 1415)
        assert _run(admin, op_id)[0] == "running"  # worker 1 is still at work: nobody closed the run
        admin.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
        first.join()
        assert first.error is None
        # the last worker closed the run
        assert (first.result["status"], first.result["processed_records"]) == ("completed", 300)
        assert _run(admin, op_id) == ("completed", 1715, 1715, 0, 0, 35)
        assert admin.execute("SELECT n, status, count(*) FROM item GROUP BY 1, 2 ORDER BY 1, 2").fetchall() == [
            (0, "skip", 285), (1, "done", 1715)]
        chunks = _chunks(admin, op_id)
        assert [(c[1], c[5]) for c in chunks] == [("done", 1)] + [("done", 2)] * 5
        assert sum(c[7] for c in chunks) == 1715
        logs = admin.execute("SELECT worker, count(*), sum(records_processed), count(DISTINCT batch_number) "
                             "FROM specql.batch_operation_logs WHERE operation_id = %s GROUP BY 1 ORDER BY 1",
                             (op_id,)).fetchall()
        assert logs == [(1, 6, 300, 6), (2, 29, 1415, 29)]
        assert admin.execute("SELECT count(*) FROM specql.batch_operation_notifications WHERE operation_id = %s",
                             (op_id,)).fetchone()[0] == 1
        assert admin.execute("SELECT metric_value FROM specql.batch_performance_metrics WHERE operation_id = %s "
                             "AND metric_name = 'processed_records'", (op_id,)).fetchall() == [(1715,)]
        # A worker started after the run closed has nothing to do.
        late = Worker(database_url, "bump_items", op_id).join()
        assert late.result["status"] == "completed" and late.result["processed_records"] == 0


def test_id_array_chunks_hold_their_ids(database_url, entities, tmp_path):
    _setup(database_url, entities, tmp_path, rows=1000)
    ids = list(range(1, 1001, 2))
    random.Random(7).shuffle(ids)
    with connect(database_url) as admin:
        op_id = admin.execute("SELECT public.bump_listed_start(ids => %s)", (ids,)).fetchone()[0]
        chunks = admin.execute("SELECT keys FROM specql.batch_operation_chunks WHERE operation_id = %s "
                               "ORDER BY chunk_number", (op_id,)).fetchall()
        assert [k for (keys,) in chunks for k in keys] == [str(i) for i in ids]  # in input order, each once
        workers = [Worker(database_url, "bump_listed", op_id) for _ in range(2)]
        for w in workers:
            w.join()
            assert w.error is None
        assert _run(admin, op_id)[:3] == ("completed", 500, 500)
        assert admin.execute("SELECT n, count(*) FROM item GROUP BY 1 ORDER BY 1").fetchall() == [(0, 500), (1, 500)]
        assert admin.execute("SELECT count(*) FROM item WHERE n = 1 AND id % 2 = 0").fetchone()[0] == 0
        # An empty array: one empty chunk, and the run completes with zeros.
        op_id = admin.execute("SELECT public.bump_listed_start(ids => '{}')").fetchone()[0]
        Worker(database_url, "bump_listed", op_id).join()
        assert _run(admin, op_id)[:3] == ("completed", 0, 0)


def test_id_array_total_is_the_matching_rows_where_the_routine_counts_them(database_url, entities, tmp_path):
    # max_records counts the rows the ids match, as the routine does: 460 ids, 395 rows (every
    # 7th is 'skip'), within 400; 470 ids match 403 rows, refused.
    _setup(database_url, entities, tmp_path, rows=1000)
    with connect(database_url) as admin:
        op_id = admin.execute("SELECT public.bump_listed_capped_start(ids => %s)", (list(range(1, 461)),)).fetchone()[0]
        assert _run(admin, op_id)[:2] == ("running", 395)
        assert Worker(database_url, "bump_listed_capped", op_id).join().result["processed_records"] == 395
        with pytest.raises(psycopg.Error) as refused:
            admin.execute("SELECT public.bump_listed_capped_start(ids => %s)", (list(range(1, 471)),))
        assert refused.value.sqlstate == "SQ002"


def test_a_killed_workers_chunk_is_applied_exactly_once(database_url_any, entities, tmp_path):
    url = database_url_any
    _setup(url, entities, tmp_path)
    with connect(url) as admin:
        admin.execute("INSERT INTO gate VALUES (470)")  # chunk 2 (keys 351..700), its 3rd batch
        admin.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        op_id = admin.execute("SELECT public.bump_items_start(new_status => 'done')").fetchone()[0]
        doomed = Worker(url, "bump_items", op_id)
        _wait_at_gate(admin, doomed.pid)  # chunk 1 committed; chunk 2: two batches applied, uncommitted
        assert admin.execute("SELECT count(*) FROM item WHERE n = 1").fetchone()[0] == 300
        admin.execute("SELECT pg_terminate_backend(%s)", (doomed.pid,))
        doomed.join()
        assert doomed.error is not None  # its CALL died with its backend
        state = admin.execute("SELECT state FROM specql.batch_operation_status WHERE operation_id = %s",
                              (op_id,)).fetchone()[0]
        assert state == "abandoned"
        admin.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
        # Starting a worker again takes up the run: chunk 2 is claimed again, from its start.
        again = Worker(url, "bump_items", op_id).join()
        assert again.error is None and again.result["status"] == "completed"
        assert again.result["processed_records"] == 1715 - 300
        assert admin.execute("SELECT n, count(*) FROM item WHERE status <> 'skip' GROUP BY 1").fetchall() == [(1, 1715)]
        assert _run(admin, op_id)[:3] == ("completed", 1715, 1715)
        assert [(c[0], c[1], c[5]) for c in _chunks(admin, op_id)[:2]] == [(1, "done", 1), (2, "done", 2)]


def test_cancel_stops_every_worker_and_resume_finishes_the_run(database_url, entities, tmp_path):
    _setup(database_url, entities, tmp_path)
    with connect(database_url) as admin:
        admin.execute("INSERT INTO gate VALUES (60)")  # chunk 1, batch 2
        admin.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        op_id = admin.execute("SELECT public.bump_items_start(new_status => 'done')").fetchone()[0]
        first = Worker(database_url, "bump_items", op_id)
        _wait_at_gate(admin, first.pid)
        assert admin.execute("SELECT specql.cancel_operation(%s)", (op_id,)).fetchone()[0] is True
        second = Worker(database_url, "bump_items", op_id).join()  # sees the cancel: claims nothing
        assert second.result["status"] == "cancelled" and second.result["processed_records"] == 0
        admin.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
        first.join()
        # stopped after its current batch
        assert (first.result["status"], first.result["processed_records"]) == ("cancelled", 100)
        assert _run(admin, op_id)[0] == "cancelled"
        chunk = _chunks(admin, op_id)[0]
        assert (chunk[1], chunk[6], chunk[2]) == ("pending", 3, "116")  # goes on after batch 2 (keys 59..116)
        # Without resume => true a worker leaves a stopped run alone; with it, the run goes on.
        assert Worker(database_url, "bump_items", op_id).join().result["processed_records"] == 0
        resumed = Worker(database_url, "bump_items", op_id, resume=True).join()
        assert resumed.error is None
        assert (resumed.result["status"], resumed.result["processed_records"]) == ("completed", 1615)
        assert _run(admin, op_id)[:3] == ("completed", 1715, 1715)
        assert admin.execute("SELECT n, count(*) FROM item WHERE status <> 'skip' GROUP BY 1").fetchall() == [(1, 1715)]
        with pytest.raises(psycopg.Error) as refused:
            admin.execute("CALL public.bump_items_worker(operation_id => %s, resume => true)", (op_id,))
        assert refused.value.sqlstate == "SQ004"


def test_max_errors_per_worker_stops_that_worker_only(database_url, entities, tmp_path):
    _setup(database_url, entities, tmp_path, rows=0)
    readings = [{"id": i, "value": -1 if i in (1, 2, 3) else i} for i in range(40)]
    with connect(database_url) as admin:
        op_id = admin.execute("SELECT public.import_readings_start(readings => %s)",
                              (json.dumps(readings),)).fetchone()[0]
        first = Worker(database_url, "import_readings", op_id).join()
        # 3 errors > max_errors_per_worker 2, in its first batch: it stops; the run goes on.
        assert [first.result[f] for f in ("status", "processed_records", "failed_records", "error_count")] == [
            "failed", 2, 3, 3]
        assert _run(admin, op_id)[0] == "running"
        second = Worker(database_url, "import_readings", op_id).join()
        assert second.result["status"] == "completed_with_errors" and second.result["processed_records"] == 35
        assert _run(admin, op_id) == ("completed_with_errors", 40, 37, 3, 3, 8)
        failed = admin.execute("SELECT batch_number, failed_records FROM specql.batch_operation_errors "
                               "WHERE operation_id = %s ORDER BY id", (op_id,)).fetchall()
        assert [(b, r[0]["index"]) for b, r in failed] == [(1, 1), (1, 2), (1, 3)]
        assert admin.execute("SELECT count(*) FROM reading").fetchone()[0] == 37


def test_specql_run_with_workers(database_url, entities, tmp_path):
    _setup(database_url, entities, tmp_path, rows=700)
    specql = [str(Path(sys.executable).parent / "specql")]
    base = specql + ["run", "bump_items", str(entities), "--database-url", database_url, "--param", "new_status=x"]
    out = subprocess.run(base + ["--workers", "2", "--format", "json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # A worker joining releases a hold its session may have left only while it has one: unlocking
    # a lock not held printed "WARNING: you don't own a lock of type ShareLock" once per worker.
    assert "WARNING" not in out.stderr and "own a lock" not in out.stderr, out.stderr
    result = json.loads(out.stdout)
    assert (result["status"], result["processed_records"], result["total_records"]) == ("completed", 600, 600)
    assert sorted(w["worker"] for w in result["workers"] if w["processed_records"]) in ([1], [1, 2], [2])
    assert sum(w["processed_records"] for w in result["workers"]) == 600
    refused = subprocess.run(base + ["--workers", "4"], capture_output=True, text=True)
    assert refused.returncode == 1
    assert "bump_items allows at most max_workers 3" in refused.stderr
    with connect(database_url) as conn:
        assert conn.execute("SELECT n, count(*) FROM item WHERE status = 'x' GROUP BY 1").fetchall() == [(1, 600)]


def test_a_csv_loads_rejected_lines_count_in_the_parallel_run_as_in_the_routines(database_url, tmp_path):
    # skip_invalid_rows counts a rejected line itself (not as a batch's failure): the chunks and
    # the run must add it up too. 130 lines, every 9th without its title (NOT NULL): 15 rejected.
    entities = write_entities(tmp_path / "csv", gadget=GADGET)
    generate_and_apply(database_url, entities, tmp_path / "out")
    specql = [str(Path(sys.executable).parent / "specql"), "run", "import_gadgets", str(entities),
              "--database-url", database_url]
    for prefix, workers in (("P", "2"), ("R", "1")):
        path = tmp_path / f"{prefix}.csv"
        path.write_text("sku,title\n" + "".join(f"{prefix}{i},{'' if i % 9 == 0 else f'T{i}'}\n" for i in range(130)))
        out = subprocess.run(specql + ["--csv", str(path), "--workers", workers], capture_output=True, text=True)
        assert out.returncode == 1 and "completed_with_errors" in out.stdout, out.stdout + out.stderr  # 1: not completed
    with connect(database_url) as conn:
        runs = conn.execute("SELECT transaction_mode, status, total_records, processed_records, failed_records, "
                            "error_count FROM specql.batch_operation_runs ORDER BY started_at").fetchall()
        assert runs == [("parallel", "completed_with_errors", 130, 115, 15, 15),
                        ("per_batch", "completed_with_errors", 130, 115, 15, 15)]
        assert conn.execute("SELECT sum(failed_records) FROM specql.batch_operation_chunks").fetchone()[0] == 15


TALLY = """\
    name: tally
    primary_key: id
    fields:
      id: bigint
      n: integer
    patterns:
      - name: batch_operations
        operation: bump_tally
        operation_type: update
        update_data:
          n: {sql: "n + 1"}
        batch_size: 50
        parallel: true
        worker_batch_size: 300
        error_handling: stop_on_error
        transaction: commit_per_batch
"""


def _seed_tally(url: str, tmp_path: Path, rows: int = 600, errors: str = "error_handling: stop_on_error") -> Path:
    """TALLY (with `errors` in place of its stop_on_error) generated and applied, rows 1..`rows`
    at n = 0, and a CHECK (n < 5) that fails a row set to 4 when the update adds 1."""
    entities = write_entities(tmp_path / "entities", tally=TALLY.replace("error_handling: stop_on_error", errors))
    generate_and_apply(url, entities, tmp_path / "out")
    with connect(url) as conn:
        conn.execute("INSERT INTO tally SELECT g, 0 FROM generate_series(1, %s) g", (rows,))
        conn.execute("ALTER TABLE tally ADD CHECK (n < 5)")
    return entities


# `last`: the third run, after the bad rows are mended. With stop_on_error it completes; with
# max_errors 0 the run's two error rows still count, so it stops again after the batch it
# applied again, as the routine does (150 records processed, none failed). Before the max_errors
# case was fixed, its second run skipped the failed batch (150 processed, the routine 100).
@pytest.mark.parametrize("errors, last", [
    ("error_handling: stop_on_error", ("completed_with_errors", 600, 600, 0, 2)),
    ("error_handling: continue_on_error\n        max_errors: 0", ("failed", 600, 150, 0, 2)),
])
def test_a_resumed_parallel_runs_failed_batch_counts_once_as_in_the_routine(database_url_any, tmp_path, errors,
                                                                            last):
    # The batch that stops a run (stop_on_error, or max_errors reached by a batch that went on
    # with continue_on_error) changed nothing, so a resume applies it again: its failed records
    # were counted in the chunk and the run, and a resume must not add them a second time (its
    # error row stays, as the routine's does). The same steps through the routine (CALL
    # bump_tally, then resume => id) give the counts to match.
    url = database_url_any
    _seed_tally(url, tmp_path, errors=errors)
    with connect(url) as admin:

        def bad(on: bool) -> None:  # keys 110..112: batch 3 of chunk 1 fails while on
            admin.execute("UPDATE tally SET n = %s WHERE id BETWEEN 110 AND 112", (4 if on else 0,))

        def stages(resume_once, resume_last) -> list[tuple]:
            admin.execute("UPDATE tally SET n = 0")
            bad(True)
            seen = [resume_once(None)]
            seen.append(resume_once(seen[0][0]))  # still failing: stops again at the same batch
            bad(False)
            seen.append(resume_last(seen[0][0]))
            seen.append(admin.execute("SELECT count(*) FILTER (WHERE n = 1), count(*) FROM tally").fetchone())
            return [s[1:] if len(s) > 2 else s for s in seen]

        def parallel(op_id):
            if op_id is None:
                op_id = admin.execute("SELECT public.bump_tally_start()").fetchone()[0]
            Worker(url, "bump_tally", op_id, resume=True).join()
            return (op_id,) + _run(admin, op_id)

        def routine(op_id):
            result = admin.execute("CALL public.bump_tally(resume => %s)", (op_id,)).fetchone()[0]
            op_id = admin.execute("SELECT (%s::specql.batch_operation_result).operation_id", (result,)).fetchone()[0]
            return (op_id,) + _run(admin, op_id)

        by_workers = stages(parallel, parallel)
        # failed, total, processed, failed_records, error_count: batch 3's 50 records counted once
        assert by_workers[0][:5] == ("failed", 600, 100, 50, 1)
        assert by_workers[1][:5] == ("failed", 600, 100, 50, 2)  # a second error row, its records once
        assert by_workers[2][:5] == last
        assert by_workers[3] == (last[2], 600)
        assert admin.execute("SELECT sum(failed_records) FROM specql.batch_operation_chunks").fetchone()[0] == 0
        by_routine = stages(routine, routine)
        # (the routine's total_records grows as it walks: not compared)
        assert [(s[0],) + s[2:5] for s in by_routine[:3]] == [(s[0],) + s[2:5] for s in by_workers[:3]]
        assert by_routine[3] == (last[2], 600)


@pytest.mark.parametrize("rows", [0, 1, 299, 300, 301, 599, 600, 601, 1000])
def test_condition_walk_chunks_cut_every_worker_batch_size_keys(database_url, tmp_path, rows):
    # op_start cuts a boundary every 300 matching keys, each found from the one before (an
    # index walk, not a window over every key): around the edges (none, fewer than a chunk,
    # exactly one or two chunks, one key over), the chunks are full but the last, meet end to
    # end, the last is open, and each holds as records the matching keys of its range.
    generate_and_apply(database_url, write_entities(tmp_path / "entities", tally=TALLY), tmp_path / "out")
    with connect(database_url) as admin:
        # keys 3, 6, 9, ...: the boundaries are not the row numbers
        admin.execute("INSERT INTO tally SELECT 3 * g, 0 FROM generate_series(1, %s) g", (rows,))
        op_id = admin.execute("SELECT public.bump_tally_start()").fetchone()[0]
        chunks = _chunks(admin, op_id)
        sizes = [300] * (rows // 300) + ([rows % 300] if rows % 300 or not rows else [])
        assert [c[4] for c in chunks] == sizes
        assert chunks[0][2] is None and chunks[-1][3] is None
        assert all(a[3] == b[2] for a, b in zip(chunks, chunks[1:]))
        assert [c[3] for c in chunks[:-1]] == [str(3 * 300 * i) for i in range(1, len(chunks))]
        for c in chunks:
            held = admin.execute("SELECT count(*) FROM tally WHERE (%s::bigint IS NULL OR id > %s::bigint) "
                                 "AND (%s::bigint IS NULL OR id <= %s::bigint)", (c[2], c[2], c[3], c[3])).fetchone()[0]
            assert held == c[4]
        assert _run(admin, op_id)[:2] == ("running", rows)
        Worker(database_url, "bump_tally", op_id).join()
        assert _run(admin, op_id)[:3] == ("completed", rows, rows)
        assert admin.execute("SELECT count(*) FILTER (WHERE n = 1), count(*) FROM tally").fetchone() == (rows, rows)


def test_key_range_batches_stay_in_their_chunk_also_a_failed_one(database_url_any, entities, tmp_path):
    # bump_items walks an integer key: inside a chunk its batches are key ranges (the keys come
    # densely), the last one cut at the chunk's upper key. When such a batch fails
    # (continue_on_error), its savepoint undid it and its records are listed again for the
    # error row: the chunk's next matching keys, never past its upper key (those are the next
    # chunk's, applied there). Chunk 2 holds keys 350..699, chunk 3 700..1049; 16 rows of each
    # (360..377, 710..727) stop matching after the split, so their last batches are short: key
    # ranges that the chunk's end cuts (else they would change the next chunk's rows too). Row
    # 698, in chunk 2's last batch, fails.
    url = database_url_any
    _setup(url, entities, tmp_path)
    with connect(url) as admin:
        admin.execute("ALTER TABLE item ADD CONSTRAINT item_698 CHECK (id <> 698 OR status <> 'done')")
        op_id = admin.execute("SELECT public.bump_items_start(new_status => 'done')").fetchone()[0]
        chunks = _chunks(admin, op_id)
        assert [c[2:4] for c in chunks[1:3]] == [("349", "699"), ("699", "1049")]
        admin.execute("UPDATE item SET status = 'skip' WHERE id BETWEEN 360 AND 377 OR id BETWEEN 710 AND 727")
        workers = [Worker(url, "bump_items", op_id) for _ in range(2)]
        for w in workers:
            w.join()
            assert w.error is None
        status, total, processed, failed, errors, _ = _run(admin, op_id)
        assert (status, total, errors) == ("completed_with_errors", 1715, 1)
        assert processed + failed == 1715 - 32 and 0 < failed < 50
        [(records,)] = admin.execute("SELECT failed_records FROM specql.batch_operation_errors "
                                     "WHERE operation_id = %s", (op_id,)).fetchall()
        assert 698 in records and len(records) == failed
        assert all(349 < k <= 699 for k in records)
        # each record once: the failed batch's rows untouched, every other matching row bumped once
        assert admin.execute("SELECT count(*) FROM item WHERE n = 0 AND status = 'new'").fetchone()[0] == failed
        assert admin.execute("SELECT n, count(*) FROM item WHERE status = 'done' GROUP BY 1").fetchall() == [
            (1, processed)]
        chunks = _chunks(admin, op_id)
        assert all(c[1] == "done" for c in chunks)
        assert admin.execute("SELECT processed_records + failed_records FROM specql.batch_operation_chunks "
                             "WHERE operation_id = %s ORDER BY chunk_number", (op_id,)).fetchall() == [
            (300,), (284,), (284,), (300,), (300,), (215,)]


def _same_stages(url, admin, bad, marks=(True, True, False)):
    """The same stages through workers and through the routine (a commit_per_batch procedure):
    a first run and two resumes, with `bad(on)` planting or mending failing rows before each
    (marks). Each side: per stage the run row (status, processed, failed, error_count,
    batch_count; its total_records is the routine's as it walks, not compared) or None once
    the run has ended, then the tally's (n = 1, n = 0) counts and the run's error rows per
    batch (count, failing records)."""

    def parallel(op_id):
        if op_id is None:
            op_id = admin.execute("SELECT public.bump_tally_start()").fetchone()[0]
        worker = Worker(url, "bump_tally", op_id, resume=True).join()
        assert worker.error is None, worker.error
        return op_id

    def routine(op_id):
        result = admin.execute("CALL public.bump_tally(resume => %s)", (op_id,)).fetchone()[0]
        return admin.execute("SELECT (%s::specql.batch_operation_result).operation_id", (result,)).fetchone()[0]

    def stages(step) -> list:
        admin.execute("UPDATE tally SET n = 0")
        seen, op_id = [], None
        for mark in marks:
            bad(mark)
            if op_id is not None and _run(admin, op_id)[0].startswith("completed"):
                seen.append(None)
                continue
            op_id = step(op_id)
            status, _total, *counts = _run(admin, op_id)
            seen.append((status, *counts))
        seen.append(admin.execute("SELECT count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n = 0) "
                                  "FROM tally").fetchone())
        seen.append(admin.execute("SELECT count(*), sum(jsonb_array_length(failed_records)) "
                                  "FROM specql.batch_operation_errors WHERE operation_id = %s", (op_id,)).fetchone())
        return seen

    return stages(parallel), stages(routine)


def test_collect_errors_stops_at_the_runs_max_errors_inside_a_resumed_batch_as_the_routine(database_url_any,
                                                                                          tmp_path):
    # collect_errors isolates a failed batch's records one by one; past max_errors the run
    # stops after that batch (the pass finishes it). The routine counts the run's errors (a
    # resume starts from the run's); a worker must too, not its own: else a resumed worker, its
    # own count at 0, goes on past the run's limit. max_errors 3, failing rows 110..112 (batch 3:
    # 3 errors, within the limit), 400 (batch 8: the 4th error stops the run after the batch),
    # 401, 402 (batch 9, first records).
    url = database_url_any
    _seed_tally(url, tmp_path, errors="error_handling: collect_errors\n        max_errors: 3")
    with connect(url) as admin:

        def bad(on: bool) -> None:
            admin.execute("UPDATE tally SET n = %s WHERE id IN (110, 111, 112, 400, 401, 402)", (4 if on else 0,))

        by_workers, by_routine = _same_stages(url, admin, bad)
        # 1st: 347 + 49 applied, 4 errors. 2nd: batch 9, 401 and 402 logged, its 48 others
        # applied; stopped after it. 3rd (mended): the run's 6 errors are still past 3: batch 10
        # applied, stopped after it. Every row changed once but the six failing ones.
        assert by_routine == [("failed", 396, 4, 4, 8), ("failed", 444, 6, 6, 9), ("failed", 494, 6, 6, 10),
                              (494, 106), (6, 6)]
        assert by_workers == by_routine


def test_ignore_conflicts_skipped_records_count_in_workers_as_in_the_routine(database_url_any, tmp_path):
    # ignore_conflicts counts the records a unique conflict skipped in skipped_records (README:
    # 0 for every other routine, a resumed call counts its own part): each worker counts its
    # own, and `specql run --workers` adds up its workers', as `specql run` gives the routine's.
    # 40 readings, 7 already in the table (10..14, 21, 33), 2 failing the CHECK (3, 17).
    url = database_url_any
    reading = READING.replace("max_errors_per_worker: 2", "ignore_conflicts: true")
    entities = write_entities(tmp_path / "entities", reading=reading)
    generate_and_apply(url, entities, tmp_path / "out")
    readings = [{"id": i, "value": -1 if i in (3, 17) else i} for i in range(40)]
    source = tmp_path / "readings.json"
    source.write_text(json.dumps(readings))
    specql = [str(Path(sys.executable).parent / "specql"), "run", "import_readings", str(entities),
              "--database-url", url, "--param", f"readings=@{source}", "--format", "json"]
    with connect(url) as admin:
        admin.execute("ALTER TABLE reading ADD CHECK (value >= 0)")

        def fresh() -> None:
            admin.execute("DELETE FROM reading")
            admin.execute("INSERT INTO reading SELECT g, 100 FROM generate_series(10, 14) g UNION ALL VALUES (21, 100), (33, 100)")

        fresh()
        routine = call(admin, "public.import_readings", readings=json.dumps(readings))
        assert [routine[f] for f in ("processed_records", "failed_records", "skipped_records")] == [31, 2, 7]
        fresh()
        op_id = admin.execute("SELECT public.import_readings_start(readings => %s)", (json.dumps(readings),)).fetchone()[0]
        workers = [Worker(url, "import_readings", op_id) for _ in range(2)]
        for w in workers:
            w.join()
            assert w.error is None
        assert sum(w.result["processed_records"] for w in workers) == routine["processed_records"]
        assert all(w.result["skipped_records"] is not None for w in workers)
        assert sum(w.result["skipped_records"] for w in workers) == routine["skipped_records"]
        fresh()
        by_routine = json.loads(subprocess.run(specql, capture_output=True, text=True).stdout)
        fresh()
        out = subprocess.run(specql + ["--workers", "2"], capture_output=True, text=True)
        by_workers = json.loads(out.stdout)
        fields = ("status", "total_records", "processed_records", "failed_records", "error_count", "skipped_records")
        assert [by_workers.get(f) for f in fields] == [by_routine[f] for f in fields], out.stderr
        assert by_routine["skipped_records"] == 7


def test_a_csv_workers_rejects_stop_at_the_runs_max_errors_as_the_routines(database_url_any, tmp_path):
    # skip_invalid_rows with max_errors: a batch whose insert fails is taken record by record,
    # each rejected one logged, to the batch's end, and the run stops after the batch once
    # past max_errors (2). A worker must count the run's errors, not its own: else its resume,
    # its own count at 0, goes on past the limit. Staged with SQL (the psql path): 130 records,
    # 5, 9, 41, 42, 43 without a title (NOT NULL at insert). The same stages as the routine
    # (CALL ... resume => id): stopped after the batch of 41 (3 more errors), resumed while still
    # bad, then mended: each resume applies one batch (the run's errors are past the limit).
    # The pass used to stop at 41 (the 3rd error), leaving 44..60 unapplied when a batch had
    # applied records before it.
    url = database_url_any
    gadget = GADGET.replace("skip_invalid_rows: true",
                            "skip_invalid_rows: true\n        max_errors: 2\n        transaction: commit_per_batch")
    generate_and_apply(url, write_entities(tmp_path / "entities", gadget=gadget), tmp_path / "out")
    bad = [5, 9, 41, 42, 43]
    with connect(url) as admin:
        def stages(step) -> list:
            admin.execute("DELETE FROM gadget")
            staging_id = admin.execute("SELECT gen_random_uuid()").fetchone()[0]
            admin.execute("INSERT INTO public.import_gadgets_staging (_staging_id, _record, sku, title) "
                          "SELECT %s, g, 'S' || g, CASE WHEN g = ANY(%s) THEN NULL ELSE 'T' || g END "
                          "FROM generate_series(1, 130) g", (staging_id, bad))
            seen, op_id = [], None
            for mend in (False, False, True):
                if mend:
                    admin.execute("UPDATE public.import_gadgets_staging SET title = 'mended' "
                                  "WHERE _staging_id = %s AND title IS NULL", (staging_id,))
                op_id = step(staging_id, op_id)
                status, _total, processed, failed, errors, _batches = _run(admin, op_id)
                seen.append((status, processed, failed, errors))
            seen.append(admin.execute("SELECT count(*), count(*) FILTER (WHERE title = 'mended') FROM gadget").fetchone())
            seen.append(admin.execute("SELECT failed_records -> 'record' ->> 'sku' FROM specql.batch_operation_errors "
                                      "WHERE operation_id = %s ORDER BY id", (op_id,)).fetchall())
            return seen

        def parallel(staging_id, op_id):
            if op_id is None:
                op_id = admin.execute("SELECT public.import_gadgets_start(staging_id => %s)", (staging_id,)).fetchone()[0]
            worker = Worker(url, "import_gadgets", op_id, resume=True).join()
            assert worker.error is None, worker.error
            return op_id

        def routine(staging_id, op_id):
            result = admin.execute("CALL public.import_gadgets(staging_id => %s, resume => %s)",
                                   (staging_id, op_id)).fetchone()[0]
            return admin.execute("SELECT (%s::specql.batch_operation_result).operation_id", (result,)).fetchone()[0]

        by_workers, by_routine = stages(parallel), stages(routine)
        # 1st: 18 + 20 + 17 applied, 41..43 logged (the workers' batch 3 ends at its chunk's
        # end, record 50; the routine's at 60). 2nd and 3rd: one more batch of 20 each.
        assert by_routine[:3] == [("failed", 55, 5, 5), ("failed", 75, 5, 5), ("failed", 95, 5, 5)]
        assert by_workers[:3] == [("failed", 45, 5, 5), ("failed", 65, 5, 5), ("failed", 85, 5, 5)]
        assert by_workers[4] == by_routine[4] == [("S5",), ("S9",), ("S41",), ("S42",), ("S43",)]
        assert by_workers[3] == (85, 0) and by_routine[3] == (95, 0)


def _tally(url: str, tmp_path: Path, rows: int) -> Path:
    """bump_tally (n = n + 1, commit_per_batch, chunks of 300) over `rows` rows at n = 0, a check
    (n < 5) to fail a row with, and a gate: an update of a row listed in gate waits for GATE."""
    entities = _seed_tally(url, tmp_path, rows)
    with connect(url) as conn:
        conn.execute("CREATE TABLE gate (id bigint PRIMARY KEY)")
        conn.execute(f"""
            CREATE FUNCTION gate_row() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF EXISTS (SELECT 1 FROM gate WHERE id = NEW.id) THEN
                    PERFORM pg_advisory_xact_lock({GATE});
                END IF;
                RETURN NEW;
            END $$""")
        conn.execute("CREATE TRIGGER tally_gate BEFORE UPDATE ON tally FOR EACH ROW EXECUTE FUNCTION gate_row()")
    return entities


def _result(conn, value) -> dict:
    cur = conn.execute("SELECT (%s::specql.batch_operation_result).*", (value,))
    return dict(zip([c.name for c in cur.description], cur.fetchone()))


def _resume_routine(url: str, op_id) -> dict:
    """CALL public.bump_tally(resume => id) in a session of its own: its result, as a dict."""
    with connect(url) as conn:
        return _result(conn, conn.execute("CALL public.bump_tally(resume => %s)", (op_id,)).fetchone()[0])


_COUNTS = ("status", "total_records", "processed_records", "failed_records", "error_count", "batch_count")


def test_the_routine_resumes_a_stopped_parallel_run_as_one_of_its_workers(database_url_any, tmp_path):
    # A parallel run's progress is in its chunks, not in the run row's position (NULL): the
    # routine resuming it (CALL op(resume => id)) once walked from the first key again, changing
    # chunk 1's first 100 rows a second time (n = 2) and counting 1200 of 600 records; then it
    # refused (SQ004). It now takes the run up as one of its workers: every row changed once,
    # the run's counts going on from where it stopped, its result the run's.
    url = database_url_any
    _tally(url, tmp_path, 600)
    with connect(url) as admin:
        admin.execute("UPDATE tally SET n = 4 WHERE id = 110")  # batch 3 fails: stop_on_error
        op_id = admin.execute("SELECT public.bump_tally_start()").fetchone()[0]
        Worker(url, "bump_tally", op_id).join()
        assert _run(admin, op_id) == ("failed", 600, 100, 50, 1, 3)
        admin.execute("UPDATE tally SET n = 0 WHERE id = 110")
        result = _resume_routine(url, op_id)
        run = _run(admin, op_id)
        assert run[:5] == ("completed_with_errors", 600, 600, 0, 1)  # its error row stays
        assert tuple(result[f] for f in _COUNTS) == run and result["operation_id"] == op_id
        assert result["completed_at"] is not None and result["skipped_records"] == 0
        assert admin.execute("SELECT n, count(*) FROM tally GROUP BY 1 ORDER BY 1").fetchall() == [(1, 600)]
        assert admin.execute("SELECT count(*) FROM specql.batch_operation_chunks WHERE operation_id = %s "
                             "AND status = 'done'", (op_id,)).fetchone()[0] == 2
        with pytest.raises(psycopg.Error) as refused:  # a completed run is not resumed
            admin.execute("CALL public.bump_tally(resume => %s)", (op_id,))
        assert refused.value.sqlstate == "SQ004"
        assert _run(admin, op_id) == run


def test_the_routine_resuming_a_parallel_run_checks_its_parameters_first(database_url_any, tmp_path):
    # The routine's SQ005 (other parameters than the run's) comes before the worker it calls:
    # nothing is applied, the run stays failed; with the run's parameters it finishes the run.
    url = database_url_any
    tally = TALLY.replace('          n: {sql: "n + 1"}\n', '          n: {sql: "n + 1"}\n        where_condition: "id <= :upto"\n')
    generate_and_apply(url, write_entities(tmp_path / "entities", tally=tally), tmp_path / "out")
    with connect(url) as admin:
        admin.execute("INSERT INTO tally SELECT g, 0 FROM generate_series(1, 700) g")
        admin.execute("ALTER TABLE tally ADD CHECK (n < 5)")
        admin.execute("UPDATE tally SET n = 4 WHERE id = 110")  # batch 3 fails: stop_on_error
        op_id = admin.execute("SELECT public.bump_tally_start(upto => 600)").fetchone()[0]
        Worker(url, "bump_tally", op_id).join()
        assert _run(admin, op_id) == ("failed", 600, 100, 50, 1, 3)
        admin.execute("UPDATE tally SET n = 0 WHERE id = 110")
        with pytest.raises(psycopg.Error) as refused:
            admin.execute("CALL public.bump_tally(upto => 599, resume => %s)", (op_id,))
        assert refused.value.sqlstate == "SQ005"
        assert _run(admin, op_id) == ("failed", 600, 100, 50, 1, 3)
        result = _result(admin, admin.execute("CALL public.bump_tally(upto => 600, resume => %s)",
                                              (op_id,)).fetchone()[0])
        assert (result["status"], result["processed_records"]) == ("completed_with_errors", 600)
        assert admin.execute("SELECT n, count(*) FROM tally GROUP BY 1 ORDER BY 1").fetchall() == [(0, 100), (1, 600)]


def test_the_routine_resuming_a_parallel_run_beside_a_live_worker_returns_it_running(database_url_any, tmp_path):
    # Two workers in chunks 1 and 2 (held at a gate); the one in chunk 2 is killed: the run,
    # whose backend was that worker's, is abandoned. CALL op(resume => id) takes up chunks 2
    # and 3 as a worker and leaves the run to the live worker: its result is the run's row,
    # status running with the 600 records committed so far. The live worker closes the run.
    url = database_url_any
    entities = _tally(url, tmp_path, 900)
    with connect(url) as admin:
        admin.execute("INSERT INTO gate VALUES (60), (400)")  # chunk 1 batch 2, chunk 2 batch 2
        admin.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        op_id = admin.execute("SELECT public.bump_tally_start()").fetchone()[0]
        live = Worker(url, "bump_tally", op_id)
        _wait_at_gate(admin, live.pid)  # in chunk 1
        doomed = Worker(url, "bump_tally", op_id)
        _wait_at_gate(admin, doomed.pid)  # in chunk 2; the run's backend is its
        with pytest.raises(psycopg.Error) as refused:  # a running run is not resumed
            admin.execute("CALL public.bump_tally(resume => %s)", (op_id,))
        assert refused.value.sqlstate == "SQ004"
        out = subprocess.run([str(Path(sys.executable).parent / "specql"), "run", "bump_tally", str(entities),
                              "--database-url", url, "--resume", str(op_id)], capture_output=True, text=True)
        assert out.returncode == 1 and "it is running" in out.stderr, out.stdout + out.stderr  # as the routine
        admin.execute("SELECT pg_terminate_backend(%s)", (doomed.pid,))
        doomed.join()
        assert doomed.error is not None
        assert admin.execute("SELECT state FROM specql.batch_operation_status WHERE operation_id = %s",
                             (op_id,)).fetchone()[0] == "abandoned"
        admin.execute("DELETE FROM gate WHERE id = 400")
        result = _resume_routine(url, op_id)
        assert tuple(result[f] for f in _COUNTS)[:5] == ("running", 900, 600, 0, 0)
        assert result["completed_at"] is None
        assert _run(admin, op_id)[:3] == ("running", 900, 600)
        assert [c[1] for c in _chunks(admin, op_id)] == ["pending", "done", "done"]  # chunk 1: the live worker's
        admin.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
        live.join()
        assert live.error is None and live.result["status"] == "completed"
        assert _run(admin, op_id)[:5] == ("completed", 900, 900, 0, 0)
        assert admin.execute("SELECT n, count(*) FROM tally GROUP BY 1 ORDER BY 1").fetchall() == [(1, 900)]


def test_specql_run_resume_of_a_parallel_run_goes_to_its_workers(database_url_any, tmp_path):
    # `specql run OP --resume ID` without --workers ran the routine, which refused a parallel
    # run (exit 1, "use the workers"). It now resumes it with the operation's workers (max_workers,
    # 1 when unset, at most the pending chunks) and says so.
    url = database_url_any
    entities = _tally(url, tmp_path, 600)
    with connect(url) as admin:
        admin.execute("INSERT INTO gate VALUES (400)")  # chunk 2, batch 2: chunk 1 is committed
        admin.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        op_id = admin.execute("SELECT public.bump_tally_start()").fetchone()[0]
        doomed = Worker(url, "bump_tally", op_id)
        _wait_at_gate(admin, doomed.pid)
        admin.execute("SELECT pg_terminate_backend(%s)", (doomed.pid,))
        doomed.join()
        admin.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
        admin.execute("DELETE FROM gate")
        assert _run(admin, op_id)[:3] == ("running", 600, 300)
        assert admin.execute("SELECT n, count(*) FROM tally GROUP BY 1 ORDER BY 1").fetchall() == [(0, 300), (1, 300)]
        base = [str(Path(sys.executable).parent / "specql"), "run", "bump_tally", str(entities),
                "--database-url", url, "--resume", str(op_id)]
        out = subprocess.run(base + ["--format", "json"], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"{op_id} is a parallel run (1 chunks pending): resuming it with 1 worker" in out.stderr
        result = json.loads(out.stdout)
        assert (result["operation_id"], result["status"], result["total_records"], result["processed_records"]) == (
            str(op_id), "completed", 600, 600)
        assert [w["processed_records"] for w in result["workers"]] == [300]
        assert _run(admin, op_id)[:5] == ("completed", 600, 600, 0, 0)
        assert admin.execute("SELECT n, count(*) FROM tally GROUP BY 1 ORDER BY 1").fetchall() == [(1, 600)]
        again = subprocess.run(base, capture_output=True, text=True)  # a completed run: refused
        assert again.returncode == 1 and "it is completed" in again.stderr, again.stdout + again.stderr
        assert admin.execute("SELECT n, count(*) FROM tally GROUP BY 1 ORDER BY 1").fetchall() == [(1, 600)]


def test_specql_run_resume_of_a_functions_parallel_run_checks_its_parameters(database_url_any, entities, tmp_path):
    # bump_listed's routine is a function (per_batch: no resume => id), so `specql run --resume
    # ID` refused it ("not resumable"); its parallel run is resumed by its workers, with the
    # parameters it was started with (the routine's SQ005: an id array by its hash).
    url = database_url_any
    _setup(url, entities, tmp_path, rows=500)
    listed, other = tmp_path / "ids.json", tmp_path / "other.json"
    listed.write_text(json.dumps(list(range(1, 401))))
    other.write_text(json.dumps(list(range(1, 402))))
    with connect(url) as admin:
        op_id = admin.execute("SELECT public.bump_listed_start(ids => %s)", (list(range(1, 401)),)).fetchone()[0]
        admin.execute("SELECT specql.cancel_operation(%s)", (op_id,))
        assert Worker(url, "bump_listed", op_id).join().result["status"] == "cancelled"  # nothing applied
        base = [str(Path(sys.executable).parent / "specql"), "run", "bump_listed", str(entities),
                "--database-url", url, "--resume", str(op_id), "--format", "json"]
        refused = subprocess.run(base + ["--param", f"ids=@{other}"], capture_output=True, text=True)
        assert refused.returncode == 1 and "it was started with other parameters" in refused.stderr, refused.stderr
        assert _run(admin, op_id)[:3] == ("cancelled", 400, 0)
        out = subprocess.run(base + ["--param", f"ids=@{listed}"], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "is a parallel run (4 chunks pending): resuming it with 1 worker" in out.stderr
        assert json.loads(out.stdout)["processed_records"] == 400
        assert _run(admin, op_id)[:3] == ("completed", 400, 400)
        assert admin.execute("SELECT n, count(*) FROM item GROUP BY 1 ORDER BY 1").fetchall() == [(0, 100), (1, 400)]


@pytest.mark.parametrize("errors", [
    "error_handling: stop_on_error",
    "error_handling: continue_on_error\n        max_errors: 1",
    "error_handling: collect_errors\n        max_errors: 2",
])
def test_a_jsonb_sources_stops_and_resumes_count_as_the_routines(database_url_any, tmp_path, errors):
    # An insert from a jsonb data_source, its chunks slices of the array: the same stages
    # through one worker and through the routine (a commit_per_batch procedure): a first run
    # and a resume while 3, 4, 12, 13 and 22 fail (a trigger), then a resume after they are
    # mended. Every count, the error rows and the inserted rows are the routine's (the chunks
    # are 10 records, 2 batches of 5: the batches are the routine's).
    url = database_url_any
    reading = READING.replace("error_handling: collect_errors\n        max_errors_per_worker: 2",
                              errors + "\n        transaction: commit_per_batch")
    generate_and_apply(url, write_entities(tmp_path / "entities", reading=reading), tmp_path / "out")
    readings = json.dumps([{"id": i, "value": i} for i in range(40)])
    with connect(url) as admin:
        admin.execute("CREATE TABLE bad_reading (id bigint)")
        admin.execute("CREATE FUNCTION bad_reading() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                      "IF EXISTS (SELECT 1 FROM bad_reading AS b WHERE b.id = NEW.id) THEN "
                      "RAISE EXCEPTION 'bad reading %', NEW.id; END IF; RETURN NEW; END $$")
        admin.execute("CREATE TRIGGER bad_reading BEFORE INSERT ON reading FOR EACH ROW EXECUTE FUNCTION bad_reading()")

        def stages(step) -> list:
            admin.execute("DELETE FROM reading")
            seen, op_id = [], None
            for bad in (True, True, False):
                admin.execute("DELETE FROM bad_reading")
                if bad:
                    admin.execute("INSERT INTO bad_reading VALUES (3), (4), (12), (13), (22)")
                if op_id is not None and _run(admin, op_id)[0].startswith("completed"):
                    seen.append(None)
                    continue
                op_id = step(op_id)
                status, _total, *counts = _run(admin, op_id)
                seen.append((status, *counts))
            seen.append(admin.execute("SELECT array_agg(id ORDER BY id) FROM reading").fetchone()[0])
            seen.append(admin.execute("SELECT batch_number, failed_records FROM specql.batch_operation_errors "
                                      "WHERE operation_id = %s ORDER BY id", (op_id,)).fetchall())
            return seen

        def parallel(op_id):
            if op_id is None:
                op_id = admin.execute("SELECT public.import_readings_start(readings => %s)", (readings,)).fetchone()[0]
            worker = Worker(url, "import_readings", op_id, resume=True).join()
            assert worker.error is None, worker.error
            return op_id

        def routine(op_id):
            result = admin.execute("CALL public.import_readings(readings => %s, resume => %s)",
                                   (readings, op_id)).fetchone()[0]
            return admin.execute("SELECT (%s::specql.batch_operation_result).operation_id", (result,)).fetchone()[0]

        by_workers, by_routine = stages(parallel), stages(routine)
        assert by_workers[0][0] == "failed" and by_workers[1][0] == "failed"
        # the error rows' batch numbers: a batch applied again keeps its number in a worker
        assert [r for _, r in by_workers[4]] == [r for _, r in by_routine[4]]
        assert by_workers[:4] == by_routine[:4]


def test_a_csv_imports_rejected_lines_are_not_skipped_records(database_url_any, tmp_path):
    # ignore_conflicts on a CSV import: skipped_records counts the lines a unique conflict
    # skipped, not the rejected ones (they are failed_records): 130 lines, 10 skus already
    # there, 2 without a title: 118 inserted, 2 failed, 10 skipped, in the routine and in the
    # workers alike (both counted a batch's rejected lines as skipped too: 12).
    url = database_url_any
    gadget = GADGET.replace("skip_invalid_rows: true", "skip_invalid_rows: true\n        ignore_conflicts: true")
    generate_and_apply(url, write_entities(tmp_path / "entities", gadget=gadget), tmp_path / "out")
    with connect(url) as admin:
        def stage():
            admin.execute("DELETE FROM gadget")
            admin.execute("INSERT INTO gadget (id, sku, title) SELECT gen_random_uuid(), 'S' || g, 'old' "
                          "FROM generate_series(10, 19) g")
            staging_id = admin.execute("SELECT gen_random_uuid()").fetchone()[0]
            admin.execute("INSERT INTO public.import_gadgets_staging (_staging_id, _record, sku, title) "
                          "SELECT %s, g, 'S' || g, CASE WHEN g IN (5, 80) THEN NULL ELSE 'T' || g END "
                          "FROM generate_series(1, 130) g", (staging_id,))
            return staging_id

        routine = call(admin, "public.import_gadgets", staging_id=stage())
        assert [routine[f] for f in ("processed_records", "failed_records", "skipped_records")] == [118, 2, 10]
        op_id = admin.execute("SELECT public.import_gadgets_start(staging_id => %s)", (stage(),)).fetchone()[0]
        workers = [Worker(url, "import_gadgets", op_id) for _ in range(2)]
        for w in workers:
            w.join()
            assert w.error is None
        assert _run(admin, op_id)[2:4] == (118, 2)
        assert sum(w.result["skipped_records"] for w in workers) == 10


def test_errors_of_two_workers_past_the_runs_max_errors_fail_the_run_as_in_the_routine(database_url_any, tmp_path):
    # continue_on_error, max_errors 1; rows 110 (chunk 1) and 400 (chunk 2) fail. The routine
    # stops after the second failed batch: failed. Two workers, one per chunk, each see one
    # error of their own (and none committed when they claimed): neither stopped and the run
    # closed completed_with_errors with 2 errors past max_errors 1. Each chunk's end now adds
    # its errors to the run's one after the other and stops the run past the limit. Worker 1
    # waits inside chunk 1 (after its failed batch) until worker 2 has done chunk 2.
    url = database_url_any
    _seed_tally(url, tmp_path, errors="error_handling: continue_on_error\n        max_errors: 1")
    with connect(url) as admin:
        bad = "UPDATE tally SET n = 4 WHERE id IN (110, 400)"
        admin.execute(bad)
        result = admin.execute("CALL public.bump_tally()").fetchone()[0]
        routine = admin.execute("SELECT (%s::specql.batch_operation_result).status, "
                                "(%s::specql.batch_operation_result).error_count", (result, result)).fetchone()
        assert routine == ("failed", 2)
        admin.execute("UPDATE tally SET n = 0")
        admin.execute(bad)
        admin.execute("CREATE TABLE gate (id bigint PRIMARY KEY)")
        admin.execute(f"""
            CREATE FUNCTION gate_row() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF EXISTS (SELECT 1 FROM gate WHERE id = NEW.id) THEN
                    PERFORM pg_advisory_xact_lock({GATE});
                END IF;
                RETURN NEW;
            END $$""")
        admin.execute("CREATE TRIGGER tally_gate BEFORE UPDATE ON tally FOR EACH ROW EXECUTE FUNCTION gate_row()")
        admin.execute("INSERT INTO gate VALUES (220)")  # chunk 1, batch 5: after 110's batch 3
        admin.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        op_id = admin.execute("SELECT public.bump_tally_start()").fetchone()[0]
        first = Worker(url, "bump_tally", op_id)
        _wait_at_gate(admin, first.pid)
        second = Worker(url, "bump_tally", op_id).join()
        assert second.error is None and second.result["error_count"] == 1
        admin.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
        first.join()
        assert first.error is None and first.result["error_count"] == 1
        status, total, processed, failed, errors, _ = _run(admin, op_id)
        # both chunks were under way when the limit was passed: their batches are applied
        assert (status, errors) == routine
        assert (total, processed, failed) == (600, 500, 100)


def test_collect_errors_past_max_errors_finishes_the_batch_in_workers_as_in_the_routine(database_url_any, tmp_path):
    # collect_errors, max_errors 1: rows 110 and 111 fail in batch 3 (101..150); 111 is the 2nd
    # error, past the limit, in the middle of the record-by-record pass. The pass used to stop
    # there: 112..150 were neither applied nor logged, and the run's position (after batch 3,
    # which had applied records) made every resume skip them. The pass now finishes the batch
    # (the good records applied, each failing one logged) and the run stops after it; each
    # resume then applies one more batch (the run's errors are still past the limit).
    url = database_url_any
    _seed_tally(url, tmp_path, errors="error_handling: collect_errors\n        max_errors: 1")
    with connect(url) as admin:

        def bad(on: bool) -> None:
            admin.execute("UPDATE tally SET n = %s WHERE id IN (110, 111)", (4 if on else 0,))

        by_workers, by_routine = _same_stages(url, admin, bad)
        # status, processed, failed, error_count, batch_count per stage; then (n = 1, n = 0);
        # then the error rows (2, one failing record each).
        assert by_routine == [("failed", 148, 2, 2, 3), ("failed", 198, 2, 2, 4), ("failed", 248, 2, 2, 5),
                              (248, 352), (2, 2)]
        assert by_workers == by_routine
        # Every row (the routine's run, the last): 1..250 changed once but the two failing ones.
        assert admin.execute("SELECT array_agg(id ORDER BY id) FROM tally WHERE n <> 1").fetchone()[0] == \
            [110, 111] + list(range(251, 601))
        assert admin.execute("SELECT count(*) FROM tally WHERE n NOT IN (0, 1)").fetchone()[0] == 0


@pytest.mark.parametrize("walk", ["tally", "listed"])
def test_a_timeout_in_the_last_batch_completes_in_workers_as_in_the_routine(database_url_any, tmp_path, walk):
    # timeout 300 ms; 100 rows in 2 batches of 50 (one chunk for the workers). A trigger sleeps
    # 0.5 s on one row. On row 100 (the last batch) the timeout passes with nothing left: the
    # run completes (it said timed_out, and its worker left the chunk pending). On row 50 (the
    # first batch) it times out after batch 1, and a resume applies batch 2 only: every row
    # changed exactly once (n = n + 1). `tally`: the key walk (key ranges while keys are dense);
    # `listed`: the ids array (keys driver).
    url = database_url_any
    tally = TALLY.replace("error_handling: stop_on_error", "timeout: \"300 milliseconds\"")
    if walk == "listed":
        tally = tally.replace("batch_size: 50\n", "batch_size: 50\n        where_condition: \"id = ANY(:ids)\"\n")
    generate_and_apply(url, write_entities(tmp_path / "entities", tally=tally), tmp_path / "out")
    ids = list(range(1, 101))
    args = {"ids": ids} if walk == "listed" else {}
    with connect(url) as admin:
        admin.execute("INSERT INTO tally SELECT g, 0 FROM generate_series(1, 100) g")
        admin.execute("CREATE TABLE sleepy (id bigint)")
        admin.execute("CREATE FUNCTION sleepy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                      "IF EXISTS (SELECT 1 FROM sleepy AS s WHERE s.id = NEW.id) THEN PERFORM pg_sleep(0.5); END IF; "
                      "RETURN NEW; END $$")
        admin.execute("CREATE TRIGGER tally_sleepy BEFORE UPDATE ON tally FOR EACH ROW EXECUTE FUNCTION sleepy()")

        def routine(op_id):
            sql = "CALL public.bump_tally(resume => %(op)s" + (", ids => %(ids)s)" if walk == "listed" else ")")
            result = admin.execute(sql, {"op": op_id, **args}).fetchone()[0]
            return admin.execute("SELECT (%s::specql.batch_operation_result).operation_id", (result,)).fetchone()[0]

        def parallel(op_id):
            if op_id is None:
                sql = "SELECT public.bump_tally_start(" + ("ids => %(ids)s)" if walk == "listed" else ")")
                op_id = admin.execute(sql, args).fetchone()[0]
            worker = Worker(url, "bump_tally", op_id, resume=True).join()
            assert worker.error is None, worker.error
            return op_id

        for step in (routine, parallel):
            admin.execute("UPDATE tally SET n = 0")
            admin.execute("DELETE FROM sleepy")
            admin.execute("INSERT INTO sleepy VALUES (100)")
            op_id = step(None)
            assert _run(admin, op_id) == ("completed", 100, 100, 0, 0, 2), step.__name__
            assert admin.execute("SELECT n, count(*) FROM tally GROUP BY 1").fetchall() == [(1, 100)]
            if step is parallel:
                assert [c[1] for c in _chunks(admin, op_id)] == ["done"]

            admin.execute("UPDATE tally SET n = 0")
            admin.execute("UPDATE sleepy SET id = 50")
            op_id = step(None)
            # (the routine's total_records grows as it walks: not compared)
            assert _run(admin, op_id)[2:] == (50, 0, 0, 1) and _run(admin, op_id)[0] == "timed_out", step.__name__
            assert admin.execute("SELECT array_agg(id ORDER BY id) FROM tally WHERE n = 1").fetchone()[0] == ids[:50]
            assert admin.execute("SELECT count(*) FROM tally WHERE n = 0").fetchone()[0] == 50
            op_id = step(op_id)
            assert _run(admin, op_id) == ("completed", 100, 100, 0, 0, 2), step.__name__
            assert admin.execute("SELECT n, count(*) FROM tally GROUP BY 1").fetchall() == [(1, 100)]


@pytest.mark.parametrize("source", ["jsonb", "csv"])
def test_a_timeout_in_the_last_batch_of_an_import_completes_in_workers_as_in_the_routine(database_url_any, tmp_path,
                                                                                         source):
    # As the walks above, for an insert from a jsonb data_source (source driver) and a CSV load
    # (csv driver): 40 records in 2 batches of 20 (one chunk), a 0.5 s record under a 300 ms
    # timeout. In the last batch (record 40) the run completes; in the first (record 20) it
    # times out at 20 and a resume imports the other 20: every record exactly once.
    url = database_url_any
    if source == "jsonb":
        entity = {"reading": READING.replace(
            "batch_size: 5\n        parallel: true\n        worker_batch_size: 10\n        error_handling: collect_errors\n"
            "        max_errors_per_worker: 2\n",
            "batch_size: 20\n        parallel: true\n        worker_batch_size: 20\n        timeout: \"300 milliseconds\"\n"
            "        transaction: commit_per_batch\n")}
        table, op, key = "reading", "import_readings", "id"
    else:
        entity = {"gadget": GADGET.replace("batch_size: 20\n", "batch_size: 20\n        timeout: \"300 milliseconds\"\n"
                                           "        transaction: commit_per_batch\n")}
        table, op, key = "gadget", "import_gadgets", "sku"
    generate_and_apply(url, write_entities(tmp_path / "entities", **entity), tmp_path / "out")
    readings = json.dumps([{"id": i, "value": i} for i in range(1, 41)])
    keys = list(range(1, 41)) if source == "jsonb" else [f"S{i}" for i in range(1, 41)]
    with connect(url) as admin:
        admin.execute("CREATE TABLE sleepy (k text)")
        admin.execute(f"CREATE FUNCTION sleepy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                      f"IF EXISTS (SELECT 1 FROM sleepy AS s WHERE s.k = NEW.{key}::text) THEN PERFORM pg_sleep(0.5); "
                      f"END IF; RETURN NEW; END $$")
        admin.execute(f"CREATE TRIGGER {table}_sleepy BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION sleepy()")

        def arguments() -> str:
            if source == "jsonb":
                return "readings => %(readings)s"
            admin.execute("INSERT INTO public.import_gadgets_staging (_staging_id, _record, sku, title) "
                          "SELECT %s, g, 'S' || g, 'T' || g FROM generate_series(1, 40) g", (staging["id"],))
            return "staging_id => %(staging)s"

        def routine(op_id):
            args = arguments() if op_id is None else ("readings => %(readings)s" if source == "jsonb"
                                                      else "staging_id => %(staging)s")
            result = admin.execute(f"CALL public.{op}({args}, resume => %(op)s)",
                                   {"readings": readings, "staging": staging["id"], "op": op_id}).fetchone()[0]
            return admin.execute("SELECT (%s::specql.batch_operation_result).operation_id", (result,)).fetchone()[0]

        def parallel(op_id):
            if op_id is None:
                op_id = admin.execute(f"SELECT public.{op}_start({arguments()})",
                                      {"readings": readings, "staging": staging["id"]}).fetchone()[0]
            worker = Worker(url, op, op_id, resume=True).join()
            assert worker.error is None, worker.error
            return op_id

        staging = {}
        for step in (routine, parallel):
            for sleepy, first in ((keys[39], None), (keys[19], 20)):
                admin.execute(f"DELETE FROM {table}")
                admin.execute("DELETE FROM sleepy")
                admin.execute("INSERT INTO sleepy VALUES (%s)", (str(sleepy),))
                staging["id"] = admin.execute("SELECT gen_random_uuid()").fetchone()[0]
                op_id = step(None)
                if first is not None:
                    assert _run(admin, op_id)[0] == "timed_out", step.__name__
                    assert _run(admin, op_id)[2:] == (first, 0, 0, 1), step.__name__
                    done = admin.execute(f"SELECT array_agg({key} ORDER BY {key}) FROM {table}").fetchone()[0]
                    assert sorted(done, key=str) == sorted(keys[:first], key=str)
                    op_id = step(op_id)
                assert _run(admin, op_id) == ("completed", 40, 40, 0, 0, 2), step.__name__
                assert admin.execute(f"SELECT count(*), count(DISTINCT {key}) FROM {table}").fetchone() == (40, 40)
                assert sorted(admin.execute(f"SELECT {key} FROM {table}").fetchall()) == sorted((k,) for k in keys)


def _timed_tally(url: str, tmp_path: Path, keys: list[int]) -> Path:
    """bump_tally with a timeout of 1 second (no error mode), rows `keys` at n = 0, and a
    trigger that sleeps 1.2 s on updating a row listed in sleepy."""
    entities = write_entities(tmp_path / "entities",
                              tally=TALLY.replace("error_handling: stop_on_error", "timeout: \"1 second\""))
    generate_and_apply(url, entities, tmp_path / "out")
    with connect(url) as conn:
        conn.execute("INSERT INTO tally SELECT unnest(%s::bigint[]), 0", (keys,))
        conn.execute("CREATE TABLE sleepy (id bigint)")
        conn.execute("CREATE FUNCTION sleepy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "IF EXISTS (SELECT 1 FROM sleepy AS s WHERE s.id = NEW.id) THEN PERFORM pg_sleep(1.2); END IF; "
                     "RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER tally_sleepy BEFORE UPDATE ON tally FOR EACH ROW EXECUTE FUNCTION sleepy()")
    return entities


# keys, the slow row (in the last batch of the last chunk): `exact` its last key range
# (550, 600] ends at the table's last key; `beyond` it reaches past it (40 rows); `topped` it is
# topped up with a key far past it (1000). After it, the last chunk (open: no upper key) has an
# empty key range left, which is no batch: the chunk is done.
@pytest.mark.parametrize("keys, slow", [
    (list(range(1, 601)), 600),
    (list(range(1, 591)), 590),
    (list(range(1, 591)) + [1000], 1000),
], ids=["exact", "beyond", "topped"])
def test_a_timeout_in_the_last_batch_of_the_last_chunk_completes(database_url_any, tmp_path, keys, slow):
    # Two chunks (the 300 first keys, the rest); one worker takes both. The timeout (1 s) passes
    # in the last chunk's last batch (a 1.2 s row): nothing is left, so the run completes, every
    # row changed once, both chunks done, with the routine's counts on the same rows.
    url = database_url_any
    _timed_tally(url, tmp_path, keys)
    with connect(url) as admin:
        seen = {}
        for step in ("routine", "parallel"):
            admin.execute("UPDATE tally SET n = 0")
            admin.execute("DELETE FROM sleepy")
            admin.execute("INSERT INTO sleepy VALUES (%s)", (slow,))
            if step == "routine":
                result = admin.execute("CALL public.bump_tally()").fetchone()[0]
                op_id = _result(admin, result)["operation_id"]
            else:
                op_id = admin.execute("SELECT public.bump_tally_start()").fetchone()[0]
                assert [c[1:4] for c in _chunks(admin, op_id)] == [("pending", None, "300"), ("pending", "300", None)]
                worker = Worker(url, "bump_tally", op_id).join()
                assert worker.error is None, worker.error
                assert [c[1] for c in _chunks(admin, op_id)] == ["done", "done"]
            seen[step] = _run(admin, op_id)
            assert seen[step][0] == "completed", step
            assert admin.execute("SELECT n, count(*) FROM tally GROUP BY 1").fetchall() == [(1, len(keys))], step
            # the timeout did pass in that batch: its log row took over a second
            assert admin.execute("SELECT max(completed_at - started_at) >= interval '1 second' "
                                 "FROM specql.batch_operation_logs WHERE operation_id = %s",
                                 (op_id,)).fetchone()[0], step
        assert seen["parallel"] == seen["routine"] == ("completed", len(keys), len(keys), 0, 0, 12)


# keys, rows deleted after the split, the slow row, then what the timed-out run applied and the
# chunks it left: `chunk end` the slow row ends chunk 1 (work left: chunks 2, 3); `last chunk` it
# is in the last chunk's 4th batch (its 5th and 6th left); `empty tail` chunk 2's tail (551..600)
# no longer exists, so after its slow batch (500, 550] chunk 2 holds only an empty key range:
# done, chunk 3 left.
@pytest.mark.parametrize("rows, gone, slow, applied, chunks", [
    (900, (), 300, 300, ["done", "pending", "pending"]),
    (600, (), 500, 500, ["done", "pending"]),
    (900, range(551, 601), 550, 550, ["done", "done", "pending"]),
], ids=["chunk end", "last chunk", "empty tail"])
def test_a_timeout_with_work_left_times_out_and_specql_run_resume_finishes_the_rest(database_url_any, tmp_path,
                                                                                   rows, gone, slow, applied,
                                                                                   chunks):
    # The timeout passes in a batch after which work is left: the run ends timed_out with what
    # it applied; `specql run --resume ID --workers 2` then applies exactly the rest (every row
    # changed once, none missed), and each stage's counts are the routine's (CALL bump_tally(),
    # then CALL bump_tally(resume => id)) on the same rows.
    url = database_url_any
    entities = _timed_tally(url, tmp_path, list(range(1, rows + 1)))
    left = rows - len(gone)
    with connect(url) as admin:
        seen = {}
        for step in ("routine", "parallel"):
            admin.execute("TRUNCATE tally")
            admin.execute("INSERT INTO tally SELECT g, 0 FROM generate_series(1, %s) g", (rows,))
            admin.execute("DELETE FROM sleepy")
            admin.execute("INSERT INTO sleepy VALUES (%s)", (slow,))
            if step == "routine":
                admin.execute("DELETE FROM tally WHERE id = ANY(%s)", (list(gone),))
                op_id = _result(admin, admin.execute("CALL public.bump_tally()").fetchone()[0])["operation_id"]
            else:
                op_id = admin.execute("SELECT public.bump_tally_start()").fetchone()[0]
                admin.execute("DELETE FROM tally WHERE id = ANY(%s)", (list(gone),))  # after the split
                worker = Worker(url, "bump_tally", op_id).join()
                assert worker.error is None, worker.error
                assert [c[1] for c in _chunks(admin, op_id)] == chunks
            first = _run(admin, op_id)
            assert first[0] == "timed_out" and first[2] == applied, (step, first)
            assert admin.execute("SELECT array_agg(id ORDER BY id) FROM tally WHERE n = 1").fetchone()[0] == \
                list(range(1, applied + 1)), step
            assert admin.execute("SELECT count(*) FROM tally WHERE n = 0").fetchone()[0] == left - applied
            if step == "routine":
                result = admin.execute("CALL public.bump_tally(resume => %s)", (op_id,)).fetchone()[0]
                assert _result(admin, result)["operation_id"] == op_id
            else:
                out = subprocess.run([str(Path(sys.executable).parent / "specql"), "run", "bump_tally", str(entities),
                                      "--database-url", url, "--resume", str(op_id), "--workers", "2",
                                      "--format", "json"], capture_output=True, text=True)
                assert out.returncode == 0, out.stdout + out.stderr
                assert json.loads(out.stdout)["status"] == "completed"
                assert [c[1] for c in _chunks(admin, op_id)] == ["done"] * len(chunks)
            last = _run(admin, op_id)
            # (total_records: the workers' is counted at the split, before the 50 rows went)
            assert (last[0], last[2]) == ("completed", left), (step, last)
            assert admin.execute("SELECT n, count(*) FROM tally GROUP BY 1").fetchall() == [(1, left)], step
            seen[step] = (first[0], *first[2:], last[0], *last[2:])
        assert seen["parallel"] == seen["routine"]


# per attempt of the failing batch (101..150, every record failing): error rows written; then the
# run once the rows are mended (status, processed): stop_on_error completes, past max_errors the
# run applies the mended batch and stops after it (its errors are still past the limit).
@pytest.mark.parametrize("errors, per_attempt, mended", [
    ("error_handling: stop_on_error", 1, ("completed_with_errors", 600)),
    ("error_handling: continue_on_error\n        max_errors: 0", 1, ("failed", 150)),
    ("error_handling: collect_errors\n        max_errors: 3", 50, ("failed", 150)),
], ids=["stop_on_error", "continue_on_error", "collect_errors"])
def test_a_batch_failing_entirely_counts_its_records_once_through_every_resume(database_url_any, tmp_path, errors,
                                                                              per_attempt, mended):
    # Batch 3 (rows 101..150) fails record by record and stops the run (stop_on_error, or past
    # max_errors): failed, and since it changed nothing each resume applies it again (4ca6fa0);
    # still failing, the run stops again. Through a run and three resumes, by one worker and by
    # the routine: the status stays failed, the processed (100), failed (50, the batch's) and
    # total records (the routine's: the 150 walked; the workers': 600 from the split) do not
    # grow, error_count is the run's error rows (each try logs its failures: one row a try, or
    # one per record), every try's rows name the same records, and no row changes twice. A
    # worker keeps the batch its number (3) and its chunk pending. Then mended, one more resume.
    # The routine's total counted the batch again on each try (150, 200, 250, 300; a
    # stop_on_error run resumed to its end: 600 rows, total 800, percent_done 75.0).
    url = database_url_any
    _seed_tally(url, tmp_path, errors=errors)
    with connect(url) as admin:
        seen = {}
        for step in ("routine", "parallel"):
            admin.execute("UPDATE tally SET n = 0")
            admin.execute("UPDATE tally SET n = 4 WHERE id BETWEEN 101 AND 150")
            op_id, stages = None, []

            def resume(op_id):
                if step == "routine":
                    result = admin.execute("CALL public.bump_tally(resume => %s)", (op_id,)).fetchone()[0]
                    return _result(admin, result)["operation_id"]
                if op_id is None:
                    op_id = admin.execute("SELECT public.bump_tally_start()").fetchone()[0]
                worker = Worker(url, "bump_tally", op_id, resume=True).join()
                assert worker.error is None, worker.error
                return op_id

            for attempt in range(1, 5):
                op_id = resume(op_id)
                if step == "parallel":
                    assert admin.execute("SELECT status, next_batch, failed_records FROM specql.batch_operation_chunks "
                                         "WHERE operation_id = %s AND chunk_number = 1", (op_id,)).fetchone() == (
                        "pending", 3, 0)
                status, total, processed, failed, error_count, _batches = _run(admin, op_id)
                rows = admin.execute("SELECT count(*), array_agg(DISTINCT sqlstate), array_agg(DISTINCT batch_number) "
                                     "FROM specql.batch_operation_errors WHERE operation_id = %s",
                                     (op_id,)).fetchone()
                records = admin.execute("SELECT r::bigint, count(*) FROM specql.batch_operation_errors AS e, "
                                        "jsonb_array_elements(e.failed_records) AS r WHERE e.operation_id = %s "
                                        "GROUP BY 1 ORDER BY 1", (op_id,)).fetchall()
                assert (status, processed, failed, error_count) == ("failed", 100, 50, attempt * per_attempt), (
                    step, attempt)
                assert total == (150 if step == "routine" else 600), (step, attempt)
                assert admin.execute("SELECT state FROM specql.batch_operation_status WHERE operation_id = %s",
                                     (op_id,)).fetchone()[0] == "failed"
                assert rows[:2] == (error_count, ["23514"])  # every error row counted once; the reason: the CHECK
                assert records == [(k, attempt) for k in range(101, 151)], (step, attempt)  # each try names them once
                if step == "parallel":
                    assert rows[2] == [3]  # the batch keeps its number
                assert admin.execute("SELECT n, count(*) FROM tally GROUP BY 1 ORDER BY 1").fetchall() == [
                    (0, 450), (1, 100), (4, 50)], (step, attempt)
                stages.append((status, processed, failed, error_count))
            admin.execute("UPDATE tally SET n = 0 WHERE id BETWEEN 101 AND 150")
            op_id = resume(op_id)
            status, total, processed, failed, error_count, _batches = _run(admin, op_id)
            assert (status, processed, failed, error_count) == (*mended, 0, 4 * per_attempt), step
            assert total == (mended[1] if step == "routine" else 600), step
            assert admin.execute("SELECT n, count(*) FROM tally GROUP BY 1 ORDER BY 1").fetchall() == (
                [(0, 600 - mended[1]), (1, mended[1])] if mended[1] < 600 else [(1, 600)]), step
            stages.append((status, processed, failed, error_count))
            seen[step] = stages
        assert seen["parallel"] == seen["routine"]


def test_status_shows_a_parallel_run_nobody_works_on_as_waiting_for_workers(database_url_any, tmp_path):
    # A run that <op>_start began is `running` (the view's state, as the contract names it)
    # before any worker is called; nothing showed that nobody works on it. The view's column
    # `workers` counts a running parallel run's live workers (the sessions holding its advisory
    # lock while in a statement): 0, then 1 and 2 as gated workers hold chunks 1 and 2, NULL
    # once the run is closed and for a run of the routine. `specql status` says `running
    # (waiting for workers)` with what to do, then `running (2 workers)`.
    url = database_url_any
    entities = _tally(url, tmp_path, 900)

    def view(op_id):
        return admin.execute("SELECT state, workers FROM specql.batch_operation_status WHERE operation_id = %s",
                             (op_id,)).fetchone()

    def status_line(op_id):
        out = subprocess.run([str(Path(sys.executable).parent / "specql"), "status", "--database-url", url],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        line = next(line for line in out.stdout.splitlines() if str(op_id) in line)
        return line, out.stdout

    with connect(url) as admin:
        routine = _result(admin, admin.execute("CALL public.bump_tally()").fetchone()[0])["operation_id"]
        assert view(routine) == ("completed", None)
        admin.execute("UPDATE tally SET n = 0")
        admin.execute("INSERT INTO gate VALUES (60), (400)")  # chunk 1 batch 2, chunk 2 batch 2
        admin.execute("SELECT pg_advisory_lock(%s)", (GATE,))
        op_id = admin.execute("SELECT public.bump_tally_start()").fetchone()[0]
        assert view(op_id) == ("running", 0)
        line, text = status_line(op_id)
        assert "running (waiting for workers)" in line and "0/900 (0.0%)" in line
        assert "waiting for workers: a parallel run that no worker is working on" in text
        assert "--resume" in text and "_worker(operation_id =>" in text
        assert json.loads(subprocess.run([str(Path(sys.executable).parent / "specql"), "status", "--database-url",
                                          url, "--format", "json"], capture_output=True, text=True).stdout)[0][
            "workers"] == 0
        first = Worker(url, "bump_tally", op_id)
        _wait_at_gate(admin, first.pid)
        assert view(op_id) == ("running", 1)
        assert "running (1 worker)" in status_line(op_id)[0]
        second = Worker(url, "bump_tally", op_id)
        _wait_at_gate(admin, second.pid)
        assert view(op_id) == ("running", 2)
        line, text = status_line(op_id)
        assert "running (2 workers)" in line and "waiting for workers" not in text
        admin.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
        for w in (first, second):
            assert w.join().error is None
        assert view(op_id) == ("completed", None)
        assert "completed" in status_line(op_id)[0] and "worker" not in status_line(op_id)[0]

        # The hint works: a run started and left, taken up by `specql run --resume ID --workers 2`.
        admin.execute("DELETE FROM gate")
        admin.execute("UPDATE tally SET n = 0")
        op_id = admin.execute("SELECT public.bump_tally_start()").fetchone()[0]
        assert view(op_id) == ("running", 0)
        out = subprocess.run([str(Path(sys.executable).parent / "specql"), "run", "bump_tally", str(entities),
                              "--database-url", url, "--resume", str(op_id), "--workers", "2"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        assert _run(admin, op_id)[:3] == ("completed", 900, 900)
        assert admin.execute("SELECT n, count(*) FROM tally GROUP BY 1").fetchall() == [(1, 900)]

        # And by a plain `specql run --resume ID`: nobody works on the run, so the command takes
        # it up with the operation's workers (it refused it as running before).
        admin.execute("UPDATE tally SET n = 0")
        op_id = admin.execute("SELECT public.bump_tally_start()").fetchone()[0]
        assert view(op_id) == ("running", 0)
        out = subprocess.run([str(Path(sys.executable).parent / "specql"), "run", "bump_tally", str(entities),
                              "--database-url", url, "--resume", str(op_id)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "is a parallel run (3 chunks pending): resuming it with" in out.stdout + out.stderr
        assert _run(admin, op_id)[:3] == ("completed", 900, 900)
        assert admin.execute("SELECT n, count(*) FROM tally GROUP BY 1").fetchall() == [(1, 900)]
