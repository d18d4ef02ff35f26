"""CSV import with staging and the routine overlapping (issue 12's speed): `specql run --csv`
starts the routine on the file's first committed rows while a second connection stages the
rest behind the load's marker row (templates/sql/csv/streamed.sql.j2); and the reader's block
path (lines read a megabyte at a time, the plain ones sent to COPY as they are).

The corpus (tests/csv_corpus, its exact expected outcomes) is imported again with blocks of a
few bytes, so every line that can take the block path takes it; a routine waits for rows
committed after it started and imports them; a staging session that dies leaves a run that
stops (failed, its rows so far imported once) and that cannot be resumed.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import psycopg
import pytest

import specql.csvimport as csvimport
from helpers import generate_and_apply, write_entities
from specql.csvimport import FileLoad, _separators, read_records, run_csv, split_fields
from specql.generate import load_project
from specql.run import RunError, bind_params, execute, find_operation
from specql.staging import staging_connection
from test_csv_import import CASES, CORPUS, corpus_db, corpus_db_pg15, corpus_db_pg18, outcome  # noqa: F401

ITEMS = """
    name: item
    schema: st
    fields:
      id: bigint
      n: integer
      note: string
    patterns:
      - name: batch_operations
        operation: import_items
        data_source: csv_file
        field_mapping: {id: id, n: n, note: note}
        validation_rules: ["n >= 0"]
        skip_invalid_rows: true
        batch_size: 10
      - name: batch_operations
        operation: import_items_resumable
        data_source: csv_file
        field_mapping: {id: id, n: n, note: note}
        transaction: commit_per_batch
        batch_size: 10
"""


@pytest.fixture
def items(database_url, tmp_path):
    ents = write_entities(tmp_path / "e", item=ITEMS)
    generate_and_apply(database_url, ents, tmp_path / "gen")
    return database_url, load_project([str(ents)])


@pytest.fixture
def items_any(database_url_any, tmp_path):
    """ITEMS on PostgreSQL 18 and 15."""
    ents = write_entities(tmp_path / "e", item=ITEMS)
    generate_and_apply(database_url_any, ents, tmp_path / "gen")
    return database_url_any, load_project([str(ents)])


def write_items(path: Path, n: int) -> None:
    """n records; one in seven with a quoted note holding the delimiter and a doubled quote,
    record 50 breaking the rule (n < 0)."""
    lines = ["id,n,note"]
    for i in range(1, n + 1):
        note = f'"note {i}, ""q"""' if i % 7 == 0 else f"note {i}"
        lines.append(f"{i},{-1 if i == 50 else i},{note}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_separators_outside_quotes():
    assert _separators("a,b,c", ",") == 2
    assert _separators('a,"b,c",d', ",") == 2
    assert _separators('"say ""hi, you""",x', ",") == 1
    assert _separators('ab"c,d"e,f', ",") == 1
    assert _separators('"",,""', ",") == 2


@pytest.mark.parametrize("name", CASES)
def test_corpus_file_read_in_small_blocks(corpus_db, name, monkeypatch):  # noqa: F811
    """Blocks of 8 bytes (each about one line): every plain line takes the block path."""
    monkeypatch.setattr(csvimport, "BLOCK", 8)
    expected = json.loads((CORPUS / f"{name}.expected.json").read_text())
    assert outcome(corpus_db, name) == expected


def test_block_path_and_line_path_stage_the_same_lines(tmp_path, monkeypatch):
    path = tmp_path / "f.csv"
    path.write_bytes(b'id,n,note\n1,1,a\n2,2,"b,""c"""\n3,3\n\n4,4,"multi\nline"\n5,5,x\r\n6,6,\xff\n7,7,y\n8,8,"open\n')
    op = find_operation(load_project([str(write_entities(tmp_path / "e", item=ITEMS))]), "import_items")

    def staged_lines(block: int) -> tuple[list, int]:
        """What COPY reads from the staging lines: each record's values (None: NULL)."""
        monkeypatch.setattr(csvimport, "BLOCK", block)
        with FileLoad(op, path, "00000000-0000-0000-0000-000000000000") as load:
            staged = list(load.lines)
        text = "".join(lines for lines, _ in staged)
        with io.BytesIO(text.encode()) as fh:
            values = [[v if v or q else None for v, q in split_fields(r.text, ",")] for r in read_records(fh, ",")]
        for row in values:  # no _line: the routine takes the record's number plus the header line
            row[1] = row[1] or str(int(row[0]) + 1)
        return values, sum(n for _, n in staged)

    line_by_line = staged_lines(1 << 20)  # one block: the file is read line by line
    assert line_by_line[1] == len(line_by_line[0]) == 8
    assert line_by_line[0][1] == ["2", "3", None, None, None, "2", "2", 'b,"c"']
    assert line_by_line[0][7][2].startswith("unterminated quoted field")
    for block in (1, 5, 12, 30):
        assert staged_lines(block) == line_by_line, block


def test_routine_follows_a_load_still_being_staged(items, tmp_path, monkeypatch):
    url, project = items
    op = find_operation(project, "import_items")
    path = tmp_path / "items.csv"
    write_items(path, 400)
    monkeypatch.setattr(csvimport, "COPY_CHUNK", 200)  # a COPY sends ~200 bytes at a time
    results: list[dict] = []
    with staging_connection(url, op) as stager, FileLoad(op, path) as load:
        load.open_marker(stager)
        assert load.copy(stager, 200)  # the first few records only, committed
        first = load.staged.records
        assert 0 < first < 400 and first % 10  # the first chunk ends inside a batch
        bound = bind_params(op, [f"staging_id={load.staged.staging_id}"])
        runner = threading.Thread(target=lambda: results.append(execute(url, op, bound)))
        runner.start()
        time.sleep(1.0)
        assert runner.is_alive()  # it imported what was there and waits for the rest
        load.copy_streamed(stager)
        runner.join(60)
    r = results[0]
    assert (r["status"], r["total_records"], r["processed_records"], r["error_count"]) == \
        ("completed_with_errors", 400, 399, 1)
    # Every batch is whole but the last, wherever the chunks end: it waited for a tenth row
    # (it took a short batch at the end of each chunk before: 41 or more).
    assert r["batch_count"] == 40
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id), sum(n) FROM st.item").fetchone() == \
            (399, 399, sum(range(1, 401)) - 50)
        assert conn.execute("SELECT failed_records FROM specql.batch_operation_errors").fetchone()[0]["line"] == 51
        # the marker row is gone with the last chunk
        assert conn.execute("SELECT count(*) FROM st.import_items_staging WHERE _record = 0").fetchone()[0] == 0


def test_run_csv_overlaps_staging_and_routine(items, tmp_path):
    """specql run's path: several committed chunks (1 MB, 2 MB...), every record once."""
    url, project = items
    op = find_operation(project, "import_items")
    path = tmp_path / "items.csv"
    write_items(path, 120_000)  # ~2.4 MB
    r = run_csv(url, op, str(path), [], confirm=False, batch_size=1000, resume=None, rejects=None,
                execute=execute, bind_params=bind_params, echo=lambda m: None)
    assert (r["status"], r["total_records"], r["processed_records"], r["error_count"]) == \
        ("completed_with_errors", 120_000, 119_999, 1)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id), sum(n) FROM st.item").fetchone() == \
            (119_999, 119_999, sum(range(1, 120_001)) - 50)
        assert conn.execute("SELECT count(*) FROM st.item WHERE note LIKE '%, \"q\"'").fetchone()[0] == 120_000 // 7
        assert conn.execute("SELECT count(*) FROM st.import_items_staging").fetchone()[0] == 0


def test_a_cancel_stops_a_run_waiting_for_its_load(items_any, tmp_path):
    """A run that has imported every whole batch staged so far and waits for more notices
    specql.cancel_operation while it waits (a stalled staging does not hold it): cancelled at
    once, its whole batches kept; resumed once the load is whole, every record once."""
    url, project = items_any
    op = find_operation(project, "import_items_resumable")
    path = tmp_path / "items.csv"
    write_items(path, 400)
    results: list[dict] = []
    with (staging_connection(url, op) as stager, FileLoad(op, path) as load,
          psycopg.connect(url, autocommit=True) as admin):
        load.open_marker(stager)
        assert load.copy(stager, 200)  # some records, committed; the rest is not staged yet
        first = load.staged.records
        bound = bind_params(op, [f"staging_id={load.staged.staging_id}"])
        runner = threading.Thread(target=lambda: results.append(execute(url, op, bound)))
        runner.start()
        op_id = None
        for _ in range(200):
            row = admin.execute("SELECT operation_id FROM specql.batch_operation_runs "
                                "WHERE operation = 'import_items_resumable' AND status = 'running'").fetchone()
            if row:
                op_id = row[0]
                break
            time.sleep(0.05)
        assert op_id is not None
        time.sleep(0.5)
        assert runner.is_alive()  # waiting for the rest of the load
        assert admin.execute("SELECT specql.cancel_operation(%s)", (op_id,)).fetchone()[0]
        runner.join(10)
        assert not runner.is_alive()
        r = results[0]
        assert (r["status"], r["processed_records"]) == ("cancelled", first // 10 * 10)
        load.copy_streamed(stager)  # the rest of the file
    r = execute(url, op, bound, resume=str(op_id))
    assert (r["status"], r["total_records"], r["processed_records"]) == ("completed", 400, 400)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM st.item").fetchone() == (400, 400)


def test_the_timeout_stops_a_run_waiting_for_its_load(database_url_any, tmp_path):
    """A run that has imported every whole batch staged so far and waits for more times out
    while it waits (timeout 1 second): timed_out with its whole batches, where it waited for
    the next rows whatever its timeout; resumed once the load is whole, every record once."""
    url = database_url_any
    timed = ITEMS.replace("transaction: commit_per_batch\n", "transaction: commit_per_batch\n        timeout: 1 second\n")
    ents = write_entities(tmp_path / "e", item=timed)
    generate_and_apply(url, ents, tmp_path / "gen")
    op = find_operation(load_project([str(ents)]), "import_items_resumable")
    path = tmp_path / "items.csv"
    write_items(path, 400)
    results: list[dict] = []
    with (staging_connection(url, op) as stager, FileLoad(op, path) as load,
          psycopg.connect(url, autocommit=True) as admin):
        load.open_marker(stager)
        assert load.copy(stager, 200)  # some records, committed; the rest is not staged yet
        first = load.staged.records
        bound = bind_params(op, [f"staging_id={load.staged.staging_id}"])
        started = time.monotonic()
        runner = threading.Thread(target=lambda: results.append(execute(url, op, bound)))
        runner.start()
        runner.join(10)
        assert not runner.is_alive(), "the run waited for its load past its timeout"
        assert 1 <= time.monotonic() - started < 10
        r = results[0]
        assert (r["status"], r["processed_records"]) == ("timed_out", first // 10 * 10)
        assert admin.execute("SELECT count(*) FROM st.item").fetchone()[0] == first // 10 * 10
        load.copy_streamed(stager)  # the rest of the file
    r = execute(url, op, bound, resume=str(r["operation_id"]))
    assert (r["status"], r["total_records"], r["processed_records"]) == ("completed", 400, 400)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id), sum(n) FROM st.item").fetchone() == \
            (400, 400, sum(range(1, 401)) - 51)  # record 50 holds n = -1


def test_a_staging_session_that_dies_stops_the_run(items, tmp_path, monkeypatch):
    """The marker stays and its backend is gone: the run imports what was staged, once, stops
    failed with an error row saying so, and a resume is refused (the load will never be whole)."""
    url, project = items
    op = find_operation(project, "import_items_resumable")
    path = tmp_path / "items.csv"
    write_items(path, 300)
    monkeypatch.setattr(csvimport, "COPY_CHUNK", 200)
    stager = staging_connection(url, op)
    with FileLoad(op, path) as load:
        load.open_marker(stager)
        assert load.copy(stager, 200)
        staged = load.staged.records
    stager.close()
    bound = bind_params(op, [f"staging_id={load.staged.staging_id}"])
    r = execute(url, op, bound)
    assert (r["status"], r["total_records"], r["processed_records"], r["error_count"]) == ("failed", staged, staged, 1)
    with psycopg.connect(url) as conn:
        # the run row, what specql status shows, has the rows the load got before its staging ended
        assert conn.execute("SELECT status, total_records, processed_records FROM specql.batch_operation_runs "
                            "WHERE operation_id = %s", (r["operation_id"],)).fetchone() == ("failed", staged, staged)
        state, detail, message = conn.execute(
            "SELECT sqlstate, error_detail, error_message FROM specql.batch_operation_errors "
            "WHERE operation_id = %s", (r["operation_id"],)).fetchone()
        assert (state, detail) == ("SQ004", "incomplete load")
        assert f"after {staged} row(s)" in message
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM st.item").fetchone() == (staged, staged)
    with pytest.raises(RunError, match="never completely staged"):
        execute(url, op, bound, resume=str(r["operation_id"]))


def _stage_rows(conn, staging_id: str, records) -> None:
    """Stage records (their _record numbers) by hand, as psql's \\copy would with gaps in its identity."""
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO st.import_items_staging (_staging_id, _record, id, n, note) "
                        "VALUES (%s, %s, %s, %s, 'x')", [(staging_id, r, str(r), str(r)) for r in records])


def test_a_load_with_gaps_in_its_numbers_is_cut_by_staged_rows(items_any):
    """A batch is batch_size staged rows: in a load numbered without gaps (specql run's) the
    routine cuts the next batch_size numbers; a load whose numbers skip (psql's identity), from
    the start or in rows staged while the routine follows the load, is listed from the index."""
    url, project = items_any
    op = find_operation(project, "import_items")
    gappy = [r for r in range(1, 41) if r % 4 != 0]  # 30 rows, numbers 1..39
    with psycopg.connect(url, autocommit=True) as conn:
        dense_id, gappy_id, open_id = (str(conn.execute("SELECT gen_random_uuid()").fetchone()[0]) for _ in "abc")
        _stage_rows(conn, dense_id, range(101, 126))  # 25 rows without gaps, from 101
        _stage_rows(conn, gappy_id, gappy)
    for staging_id, rows, batches in ((dense_id, 25, 4), (gappy_id, 30, 5)):  # batches of 7 rows
        r = execute(url, op, bind_params(op, [f"staging_id={staging_id}"]), batch_size=7)
        assert (r["status"], r["total_records"], r["processed_records"], r["batch_count"]) == \
            ("completed", rows, rows, batches), staging_id
    # An open load (its marker row names a live staging session): 10 rows, then 10 after a gap.
    with psycopg.connect(url, autocommit=True) as stager:
        stager.execute("INSERT INTO st.import_items_staging (_staging_id, _record, _line, _raw) "
                       "SELECT %s, 0, 0, jsonb_build_object('pid', a.pid, 'backend_start', a.backend_start) "
                       "FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) AS a", (open_id,))
        _stage_rows(stager, open_id, range(1001, 1011))
        results: list[dict] = []
        runner = threading.Thread(target=lambda: results.append(
            execute(url, op, bind_params(op, [f"staging_id={open_id}"]))))
        runner.start()
        time.sleep(1.0)
        assert runner.is_alive()  # waiting for more rows
        with stager.transaction():
            _stage_rows(stager, open_id, range(1015, 1025))
        stager.execute("DELETE FROM st.import_items_staging WHERE _staging_id = %s AND _record = 0", (open_id,))
        runner.join(60)
    r = results[0]
    assert (r["status"], r["total_records"], r["processed_records"], r["batch_count"]) == ("completed", 20, 20, 2)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM st.item").fetchone() == (75, 75)


def test_read_ahead_keeps_order_raises_the_producers_error_and_stops_when_closed():
    """copy_streamed reads the file a few pieces ahead on a thread of its own (csvimport._read_ahead)."""
    assert list(csvimport._read_ahead(iter(range(1000)), 2)) == list(range(1000))

    def broken():
        yield 1
        raise ValueError("bad block")

    got = csvimport._read_ahead(broken(), 2)
    assert next(got) == 1
    with pytest.raises(ValueError, match="bad block"):
        next(got)
    produced: list[int] = []

    def endless():
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    reader = csvimport._read_ahead(endless(), 2)
    assert [next(reader) for _ in range(3)] == [0, 1, 2]
    reader.close()
    time.sleep(0.5)
    stopped_at = len(produced)
    time.sleep(0.3)
    assert len(produced) == stopped_at <= 3 + 2 + 2  # at most depth ahead, then it stops


PARTS = """
    name: part
    schema: st
    fields:
      id: bigint
      n: integer
    patterns:
      - name: batch_operations
        operation: import_parts
        data_source: csv_file
        field_mapping: {id: id, n: n}
        batch_size: 4
        parallel: true
        worker_batch_size: 10
"""


def test_parallel_workers_cut_a_chunk_with_gaps_by_staged_rows(database_url_any, tmp_path):
    """A worker's chunk of a load whose numbers skip is listed batch by batch (batch_size staged
    rows, not numbers); a chunk without gaps is cut by number. 3 chunks of 10 rows, 3 batches each."""
    from specql.workers import run_parallel

    ents = write_entities(tmp_path / "e", part=PARTS)
    generate_and_apply(database_url_any, ents, tmp_path / "gen")
    op = find_operation(load_project([str(ents)]), "import_parts")
    with psycopg.connect(database_url_any, autocommit=True) as conn:
        gappy_id, dense_id = (str(conn.execute("SELECT gen_random_uuid()").fetchone()[0]) for _ in "ab")
        with conn.cursor() as cur:
            for staging_id, records in ((gappy_id, [r for r in range(1, 41) if r % 4 != 0]),
                                        (dense_id, range(101, 131))):
                cur.executemany("INSERT INTO st.import_parts_staging (_staging_id, _record, id, n) "
                                "VALUES (%s, %s, %s, '1')", [(staging_id, r, str(r)) for r in records])
    # op_start cuts the load without gaps by arithmetic on its numbers, the other in a pass over
    # the rows: chunks of 10 staged rows either way, each up to its upper_key, the last one open
    # (lower_key is a worker's position by now).
    expected_chunks = {gappy_id: [("13", 10), ("26", 10), (None, 10)],
                       dense_id: [("110", 10), ("120", 10), (None, 10)]}
    for staging_id in (gappy_id, dense_id):
        r = run_parallel(database_url_any, op, bind_params(op, [f"staging_id={staging_id}"]), workers=2)
        assert (r["status"], r["total_records"], r["processed_records"], r["batch_count"]) == \
            ("completed", 30, 30, 9), staging_id
        with psycopg.connect(database_url_any) as conn:
            chunks = conn.execute("SELECT upper_key, records FROM specql.batch_operation_chunks "
                                  "WHERE operation_id = %s ORDER BY chunk_number", (r["operation_id"],)).fetchall()
        assert chunks == expected_chunks[staging_id], staging_id
    with psycopg.connect(database_url_any) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM st.part").fetchone() == (60, 60)
