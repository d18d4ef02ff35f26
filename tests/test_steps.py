"""Multi-step operations (SPEC §8, issue 11), proven on a real server.

- the steps run in dependency order, each in batches of its own size, and their counts add up
  exactly (step rows, log rows naming the step, the run's result = the sum of its steps);
- what a step hands on reaches the next: a select's keys drive an update, a function's rows
  (RETURNS TABLE) feed an insert as `:x.field`, an insert's created keys feed a function's
  `input`; a missing function, or one returning rows without a field a later step reads,
  fails its step with an error naming it;
- a failing step stops the steps that depend on it (continue_on_error: an independent step
  still runs; stop_on_error: the run stops);
- commit_per_batch: a run killed inside its second step, or between two steps, resumes and
  changes every target row exactly once, its counts continuing.

The refusals (duplicate names, cycles, loose output names, ...) are in tests/bad_entities/steps_*.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from helpers import call, connect, write_entities
from specql.generate import generate
from specql.migrate import migrate

# ----------------------------------------------------------------------------- entities

ITEM = """
name: item
schema: st
fields:
  id: bigint
  grp: integer
  n: integer
patterns:
  # 1. select -> update (the selected keys) -> delete, each with its own batch_size.
  - name: batch_operations
    operation: sweep
    params: {grp: integer}
    steps:
      - name: pick
        operation_type: select
        where_condition: "grp = :grp"
        batch_size: 7
      - name: bump
        operation_type: update
        update_data: {n: {sql: "n + 1"}}
        where_condition: "id IN (:pick_ids)"
        batch_size: 5
      - name: purge
        operation_type: delete
        where_condition: "n >= 1 AND grp = :grp"
        batch_size: 4
    batch_size: 100

  # 3. A function that raises: its dependant does not run, an independent step does.
  - name: batch_operations
    operation: chain_continue
    params: {grp: integer}
    steps:
      - name: boom
        operation_type: custom_function
        function: st.boom
        input: :grp
        output: boom_keys
      - name: use_boom
        operation_type: update
        update_data: {n: {sql: "n + 100"}}
        where_condition: "id IN (:boom_keys)"
      - name: solo
        operation_type: update
        update_data: {n: {sql: "n + 10"}}
        where_condition: "grp = :grp"
        depends_on: []
    error_handling: continue_on_error
    batch_size: 50
  - name: batch_operations
    operation: chain_stop
    params: {grp: integer}
    steps:
      - name: boom
        operation_type: custom_function
        function: st.boom
        input: :grp
        output: boom_keys
      - name: use_boom
        operation_type: update
        update_data: {n: {sql: "n + 100"}}
        where_condition: "id IN (:boom_keys)"
      - name: solo
        operation_type: update
        update_data: {n: {sql: "n + 10"}}
        where_condition: "grp = :grp"
        depends_on: []
    error_handling: stop_on_error
    batch_size: 50

  # 4. commit_per_batch: a select handing its keys to a non-idempotent update.
  - name: batch_operations
    operation: bump_picked
    params: {grp: integer}
    transaction: commit_per_batch
    steps:
      - name: pick
        operation_type: select
        where_condition: "grp = :grp"
        batch_size: 100
      - name: bump
        operation_type: update
        update_data: {n: {sql: "n + 1"}}
        where_condition: "id IN (:pick_ids)"
        batch_size: 7
"""

NOTE = """
name: note
schema: st
sql_files: [sql/note.sql]
fields:
  id: uuid
  item_id: bigint
  amount: decimal
  tagged: boolean
patterns:
  # 2. A function's rows feed an insert (:totals.field); the insert's keys feed a function.
  - name: batch_operations
    operation: make_notes
    params: {grp: integer}
    steps:
      - name: totals
        operation_type: custom_function
        function: st.item_totals
        input: :grp
        output: totals
        batch_size: 4
      - name: add_notes
        operation_type: insert
        insert_data:
          item_id: :totals.item_id
          amount: :totals.amount
          tagged: "false"
        output: note_ids
        batch_size: 3
      - name: tag
        operation_type: custom_function
        function: st.tag_notes
        input: :note_ids
    batch_size: 100
  # 2. The same, collect_errors: a record that fails is isolated, the others inserted, and
  #    the keys of every inserted one reach the next step.
  - name: batch_operations
    operation: make_notes_collect
    params: {grp: integer}
    error_handling: collect_errors
    steps:
      - name: totals
        operation_type: custom_function
        function: st.item_totals
        input: :grp
        output: totals
        batch_size: 4
      - name: add_notes
        operation_type: insert
        insert_data:
          item_id: :totals.item_id
          amount: :totals.amount
          tagged: "false"
        output: note_ids
        batch_size: 3
      - name: tag
        operation_type: update
        update_data: {tagged: "true"}
        where_condition: "id IN (:note_ids)"
        batch_size: 4
  # 4. The same, commit_per_batch: the insert resumes inside the function's records.
  - name: batch_operations
    operation: make_notes_resumable
    params: {grp: integer}
    transaction: commit_per_batch
    steps:
      - name: totals
        operation_type: custom_function
        function: st.item_totals
        input: :grp
        output: totals
        batch_size: 4
      - name: add_notes
        operation_type: insert
        insert_data:
          item_id: :totals.item_id
          amount: :totals.amount
          tagged: "false"
        batch_size: 3
  # 2. A function RETURNS TABLE of one column: its rows are records too.
  - name: batch_operations
    operation: make_bare_notes
    params: {grp: integer}
    steps:
      - name: ids
        operation_type: custom_function
        function: st.item_ids_table
        input: :grp
        output: found
      - name: add_notes
        operation_type: insert
        insert_data:
          item_id: :found.item_id
          amount: "0"
          tagged: "false"
  - name: batch_operations
    operation: make_notes_short
    params: {grp: integer}
    steps:
      - name: totals
        operation_type: custom_function
        function: st.item_totals_short
        input: :grp
        output: totals
      - name: add_notes
        operation_type: insert
        insert_data:
          item_id: :totals.item_id
          amount: :totals.amount
    batch_size: 100
  - name: batch_operations
    operation: call_missing
    params: {grp: integer}
    steps:
      - name: fetch
        operation_type: custom_function
        function: st.no_such_function
        input: :grp
        output: fetched
      - name: add_notes
        operation_type: insert
        insert_data:
          item_id: :fetched.item_id
    batch_size: 100
"""

NOTE_SQL = """
-- Functions the steps of st.note's operations call (plpgsql: the item table may come later).
CREATE OR REPLACE FUNCTION st.item_totals(grp integer)
RETURNS TABLE (item_id bigint, amount numeric)
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN QUERY SELECT i.id, i.id * 1.5 FROM st.item AS i WHERE i.grp = item_totals.grp ORDER BY i.id;
END
$$;

-- Its rows lack the field make_notes_short's insert reads (amount).
CREATE OR REPLACE FUNCTION st.item_totals_short(grp integer)
RETURNS TABLE (item_id bigint, total numeric)
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN QUERY SELECT i.id, i.id * 1.5 FROM st.item AS i WHERE i.grp = item_totals_short.grp ORDER BY i.id;
END
$$;

CREATE OR REPLACE FUNCTION st.item_ids_table(grp integer)
RETURNS TABLE (item_id bigint)
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN QUERY SELECT i.id FROM st.item AS i WHERE i.grp = item_ids_table.grp ORDER BY i.id;
END
$$;

CREATE OR REPLACE FUNCTION st.tag_notes(ids uuid[])
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE st.note SET tagged = true WHERE id = ANY(ids);
    INSERT INTO st.tag_calls (keys) VALUES (cardinality(ids));
END
$$;

CREATE TABLE IF NOT EXISTS st.tag_calls (keys integer);

-- chain_*'s first step: raises.
CREATE OR REPLACE FUNCTION st.boom(grp integer)
RETURNS SETOF bigint
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'boom for group %', grp;
END
$$;
"""


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """The migrations of ITEM and NOTE, generated once for the module."""
    folder = tmp_path_factory.mktemp("steps")
    entities = write_entities(folder / "entities", item=ITEM, note=NOTE)
    (entities / "sql").mkdir()
    (entities / "sql" / "note.sql").write_text(NOTE_SQL, encoding="utf-8")
    generate([str(entities)], folder / "out")
    return folder / "out"


def setup(url: str, out: Path, rows: int = 50, grp1: int = 23) -> None:
    """Both entities applied; st.item holds ids 1..rows, the first grp1 of them in group 1."""
    lines: list[str] = []
    assert migrate(out, url, echo=lines.append) == 0, "\n".join(lines)
    with connect(url) as conn:
        conn.execute("INSERT INTO st.item (id, grp, n) SELECT g, CASE WHEN g <= %s THEN 1 ELSE 2 END, 0 "
                     "FROM generate_series(1, %s) g", (grp1, rows))


def step_rows(conn, operation_id) -> list[tuple]:
    return conn.execute(
        "SELECT step_number, step_name, status, total_records, processed_records, failed_records, batch_count, "
        "output_records FROM specql.batch_operation_steps WHERE operation_id = %s ORDER BY step_number",
        (operation_id,)).fetchall()


def step_messages(conn, operation_id) -> dict:
    return dict(conn.execute("SELECT step_name, error_message FROM specql.batch_operation_steps "
                             "WHERE operation_id = %s", (operation_id,)).fetchall())


def log_sizes(conn, operation_id) -> dict[str, list[int]]:
    """Per step (by name): records_processed of its log rows, in batch order."""
    found: dict[str, list[int]] = {}
    for step, n in conn.execute("SELECT step, records_processed FROM specql.batch_operation_logs "
                                "WHERE operation_id = %s ORDER BY batch_number", (operation_id,)).fetchall():
        found.setdefault(step, []).append(n)
    return found


def outputs_left(conn, operation_id) -> int:
    return conn.execute("SELECT count(*) FROM specql.batch_operation_outputs WHERE operation_id = %s",
                        (operation_id,)).fetchone()[0]


def error_rows(conn, operation_id) -> list[tuple]:
    return conn.execute("SELECT step, sqlstate, error_message FROM specql.batch_operation_errors "
                        "WHERE operation_id = %s ORDER BY id", (operation_id,)).fetchall()


# ----------------------------------------------------------------------------- 1. order and counts


def test_steps_run_in_order_with_exact_counts(generated, database_url_any):
    url = database_url_any
    setup(url, generated)  # 50 rows, ids 1..23 in group 1
    with connect(url) as conn:
        result = call(conn, "st.sweep", grp=1)
        op = result["operation_id"]
        # pick: 23 keys in batches of 7; bump: 23 rows in 5s; purge: the 23 bumped rows in 4s
        assert step_rows(conn, op) == [
            (1, "pick", "completed", 23, 23, 0, 4, 23),
            (2, "bump", "completed", 23, 23, 0, 5, 0),
            (3, "purge", "completed", 23, 23, 0, 6, 0),
        ]
        assert log_sizes(conn, op) == {"pick": [7, 7, 7, 2], "bump": [5, 5, 5, 5, 3], "purge": [4, 4, 4, 4, 4, 3]}
        # the log rows follow the steps in run order, each batch within its step's size
        logs = conn.execute("SELECT batch_number, step, batch_size, records_processed, status "
                            "FROM specql.batch_operation_logs WHERE operation_id = %s ORDER BY batch_number",
                            (op,)).fetchall()
        assert [b for b, *_ in logs] == list(range(1, 16))
        assert [s for _, s, *_ in logs] == ["pick"] * 4 + ["bump"] * 5 + ["purge"] * 6
        sizes = {"pick": 7, "bump": 5, "purge": 4}
        assert all(size == sizes[step] and n <= size and status == "completed"
                   for _, step, size, n, status in logs), logs
        # the run's result is the sum of its steps
        assert (result["status"], result["total_records"], result["processed_records"], result["failed_records"],
                result["batch_count"], result["error_count"]) == ("completed", 69, 69, 0, 15, 0)
        run = conn.execute("SELECT status, total_records, processed_records, batch_count FROM "
                           "specql.batch_operation_runs WHERE operation_id = %s", (op,)).fetchone()
        assert run == ("completed", 69, 69, 15)
        assert outputs_left(conn, op) == 0
        # the data: group 1 gone (each row bumped then deleted), group 2 untouched
        assert conn.execute("SELECT grp, count(*), sum(n) FROM st.item GROUP BY grp ORDER BY grp").fetchall() == \
            [(2, 27, 0)]

        # a second run finds nothing: three steps with zero counts, still in order
        again = call(conn, "st.sweep", grp=1)
        assert (again["status"], again["total_records"], again["processed_records"], again["batch_count"]) == \
            ("completed", 0, 0, 0)
        assert step_rows(conn, again["operation_id"]) == [
            (1, "pick", "completed", 0, 0, 0, 0, 0),
            (2, "bump", "completed", 0, 0, 0, 0, 0),
            (3, "purge", "completed", 0, 0, 0, 0, 0),
        ]


# ----------------------------------------------------------------------------- 2. outputs


def test_a_functions_records_feed_an_insert_whose_keys_feed_a_function(generated, database_url_any):
    url = database_url_any
    setup(url, generated)
    with connect(url) as conn:
        result = call(conn, "st.make_notes", grp=1)
        op = result["operation_id"]
        # totals: one call (one record), 23 rows stored as 6 chunks of 4; add_notes: 23 rows in
        # batches of 3, their 23 keys stored; tag: one call with all 23 keys
        assert step_rows(conn, op) == [
            (1, "totals", "completed", 1, 1, 0, 1, 23),
            (2, "add_notes", "completed", 23, 23, 0, 8, 23),
            (3, "tag", "completed", 1, 1, 0, 1, 0),
        ]
        assert log_sizes(conn, op) == {"totals": [1], "add_notes": [3] * 7 + [2], "tag": [1]}
        assert (result["status"], result["total_records"], result["processed_records"], result["batch_count"]) == \
            ("completed", 25, 25, 10)
        notes = conn.execute("SELECT item_id, amount, tagged FROM st.note ORDER BY item_id").fetchall()
        assert notes == [(i, i * __import__("decimal").Decimal("1.5"), True) for i in range(1, 24)]
        assert conn.execute("SELECT array_agg(keys) FROM st.tag_calls").fetchone()[0] == [23]
        assert outputs_left(conn, op) == 0

        # RETURNS TABLE (item_id bigint): one column, still records with a field item_id
        bare = call(conn, "st.make_bare_notes", grp=2)
        assert (bare["status"], bare["processed_records"]) == ("completed", 1 + 27)
        assert conn.execute("SELECT count(*), min(item_id), max(item_id) FROM st.note WHERE amount = 0").fetchone() == \
            (27, 24, 50)


def test_a_failing_record_of_a_functions_output_is_isolated(generated, database_url_any):
    """collect_errors: add_notes' 2nd batch holds records 4, 5, 6 (the last of totals' first
    chunk of 4 and the first two of its second); record 5 fails and is logged with its place.
    That batch is applied again record by record: the keys of 4 and 6 both reach tag."""
    url = database_url_any
    setup(url, generated)
    with connect(url) as conn:
        conn.execute("""
            CREATE FUNCTION st.refuse_five() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.item_id = 5 THEN RAISE EXCEPTION 'item 5 refused'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_five BEFORE INSERT ON st.note FOR EACH ROW EXECUTE FUNCTION st.refuse_five();
        """)
        result = call(conn, "st.make_notes_collect", grp=1)
        op = result["operation_id"]
        assert step_rows(conn, op) == [
            (1, "totals", "completed", 1, 1, 0, 1, 23),
            (2, "add_notes", "completed_with_errors", 23, 22, 1, 8, 22),
            (3, "tag", "completed", 22, 22, 0, 6, 0),
        ]
        assert (result["status"], result["processed_records"], result["failed_records"], result["error_count"]) == \
            ("completed_with_errors", 1 + 22 + 22, 1, 1)
        [(step, _, message)] = error_rows(conn, op)
        assert (step, message) == ("add_notes", "item 5 refused")
        failed = conn.execute("SELECT batch_number, failed_records FROM specql.batch_operation_errors "
                              "WHERE operation_id = %s", (op,)).fetchone()
        assert failed == (3, [{"chunk": 2, "index": 0, "record": {"item_id": 5, "amount": 7.5}}])
        assert conn.execute("SELECT array_agg(item_id ORDER BY item_id) FROM st.note WHERE tagged").fetchone()[0] == \
            [i for i in range(1, 24) if i != 5]
        assert conn.execute("SELECT count(*) FROM st.note WHERE NOT tagged").fetchone() == (0,)
        assert log_sizes(conn, op) == {"totals": [1], "add_notes": [3, 2, 3, 3, 3, 3, 3, 2], "tag": [4] * 5 + [2]}


def test_a_missing_function_or_a_row_without_a_read_field_fails_its_step_named(generated, database_url_any):
    url = database_url_any
    setup(url, generated)
    with connect(url) as conn:
        missing = call(conn, "st.call_missing", grp=1)
        op = missing["operation_id"]
        assert missing["status"] == "failed"
        assert step_rows(conn, op) == [(1, "fetch", "failed", 1, 0, 1, 1, 0)]  # stop_on_error: no step 2 row
        [(step, sqlstate, message)] = error_rows(conn, op)
        assert (step, sqlstate) == ("fetch", "42883")
        assert "st.no_such_function(integer)" in message and "does not exist" in message, message

        short = call(conn, "st.make_notes_short", grp=1)
        op = short["operation_id"]
        assert short["status"] == "failed"
        assert step_rows(conn, op) == [(1, "totals", "failed", 1, 0, 1, 1, 0)]
        [(step, sqlstate, message)] = error_rows(conn, op)
        assert (step, sqlstate) == ("totals", "42804")
        assert "st.item_totals_short(integer)" in message and "without amount" in message, message
        assert conn.execute("SELECT count(*) FROM st.note").fetchone()[0] == 0
        assert outputs_left(conn, op) == 0


# ----------------------------------------------------------------------------- 3. a failing step


def test_a_failing_step_stops_its_dependants_not_the_others(generated, database_url_any):
    url = database_url_any
    setup(url, generated)
    with connect(url) as conn:
        result = call(conn, "st.chain_continue", grp=1)
        op = result["operation_id"]
        assert step_rows(conn, op) == [
            (1, "boom", "failed", 1, 0, 1, 1, 0),
            (2, "use_boom", "failed", 0, 0, 0, 0, 0),
            (3, "solo", "completed", 23, 23, 0, 1, 0),
        ]
        messages = step_messages(conn, op)
        assert messages["use_boom"] == "not run: step boom, which it depends on, failed"
        assert messages["solo"] is None
        [(step, _, message)] = error_rows(conn, op)
        assert step == "boom" and "boom for group 1" in message
        assert log_sizes(conn, op) == {"boom": [0], "solo": [23]}
        # only solo changed anything: +10 on group 1, never +100
        assert conn.execute("SELECT grp, array_agg(DISTINCT n) FROM st.item GROUP BY grp ORDER BY grp").fetchall() == \
            [(1, [10]), (2, [0])]
        assert (result["status"], result["processed_records"], result["failed_records"], result["error_count"]) == \
            ("completed_with_errors", 23, 1, 1)

        stopped = call(conn, "st.chain_stop", grp=1)
        op = stopped["operation_id"]
        assert stopped["status"] == "failed"
        assert step_rows(conn, op) == [(1, "boom", "failed", 1, 0, 1, 1, 0)]  # later steps: no row
        assert conn.execute("SELECT grp, array_agg(DISTINCT n) FROM st.item GROUP BY grp ORDER BY grp").fetchall() == \
            [(1, [10]), (2, [0])]
        assert conn.execute("SELECT status FROM specql.batch_operation_runs WHERE operation_id = %s",
                            (op,)).fetchone() == ("failed",)


# ----------------------------------------------------------------------------- 4. resume

ROWS, GRP1 = 400, 300  # bump_picked: pick 300 keys in 3 batches of 100, bump them in 43 batches of 7

HOLD = """
-- While st.hold has a row for a batch number, that batch waits between its statement and its
-- COMMIT (the log row is written in between); st.hold_step does the same for a step's row.
CREATE TABLE st.hold (batch integer, step integer);
CREATE FUNCTION st.hold_batch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WHILE EXISTS (SELECT 1 FROM st.hold WHERE batch = NEW.batch_number) LOOP
        PERFORM pg_sleep(0.02);
    END LOOP;
    RETURN NEW;
END $$;
CREATE TRIGGER hold_batch BEFORE INSERT ON specql.batch_operation_logs
    FOR EACH ROW EXECUTE FUNCTION st.hold_batch();
CREATE FUNCTION st.hold_step() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WHILE EXISTS (SELECT 1 FROM st.hold WHERE step = NEW.step_number) LOOP
        PERFORM pg_sleep(0.02);
    END LOOP;
    RETURN NEW;
END $$;
CREATE TRIGGER hold_step BEFORE INSERT ON specql.batch_operation_steps
    FOR EACH ROW EXECUTE FUNCTION st.hold_step();
-- While st.slow has a row, each bumped row costs a little: the run stays mid-step long enough
-- to be killed at a moment nobody chose.
CREATE TABLE st.slow (on_ boolean);
CREATE FUNCTION st.slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM st.slow) THEN
        PERFORM pg_sleep(0.01);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER slow_row BEFORE UPDATE ON st.item FOR EACH ROW EXECUTE FUNCTION st.slow_row();
"""


def start_in_thread(url: str, sql: str) -> tuple[threading.Thread, dict]:
    """Run `sql` on a connection of its own in a thread; box['pid'] is its backend."""
    box: dict = {}
    conn = psycopg.connect(url, autocommit=True)
    box["pid"] = conn.info.backend_pid

    def work():
        try:
            box["row"] = conn.execute(sql).fetchone()
        except psycopg.Error as exc:
            box["error"] = exc
        finally:
            conn.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, box


def wait_for(url: str, query: str, params: tuple = (), timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connect(url) as conn:
            row = conn.execute(query, params).fetchone()
        if row and row[0]:
            return row[0]
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for: {query}")


def kill(url: str, thread: threading.Thread, box: dict, operation: str = "bump_picked") -> dict:
    """pg_terminate_backend the run's backend; the run row as it was left, with its state."""
    with connect(url) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (box["pid"],)).fetchone() == (True,)
    thread.join(30)
    assert "error" in box, box  # the CALL did not finish
    with connect(url) as conn:
        conn.execute("DELETE FROM st.hold")
        conn.execute("DELETE FROM st.slow")
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        return cur.execute("SELECT r.*, s.state FROM specql.batch_operation_runs r "
                           "JOIN specql.batch_operation_status s USING (operation_id) "
                           "WHERE r.operation = %s", (operation,)).fetchone()


def resume(url: str, operation_id) -> dict:
    with connect(url) as conn:
        row = conn.execute("CALL st.bump_picked(grp => 1, resume => %s, result => NULL)",
                           (str(operation_id),)).fetchone()
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        return cur.execute("SELECT (%s::specql.batch_operation_result).*", (row[0],)).fetchone()


def assert_resumed_exactly_once(url: str, run: dict) -> None:
    op = run["operation_id"]
    result = resume(url, op)
    assert result["operation_id"] == op
    # pick: 300 keys in 3 batches of 100; bump: 300 rows in 43 batches of 7 (42 x 7 + 6)
    assert (result["status"], result["total_records"], result["processed_records"], result["failed_records"],
            result["batch_count"]) == ("completed", 2 * GRP1, 2 * GRP1, 0, 3 + 43)
    with connect(url) as conn:
        assert conn.execute("SELECT grp, array_agg(DISTINCT n) FROM st.item GROUP BY grp ORDER BY grp").fetchall() == \
            [(1, [1]), (2, [0])]
        assert step_rows(conn, op) == [
            (1, "pick", "completed", GRP1, GRP1, 0, 3, GRP1),
            (2, "bump", "completed", GRP1, GRP1, 0, 43, 0),
        ]
        assert log_sizes(conn, op) == {"pick": [100] * 3, "bump": [7] * 42 + [6]}
        batches = conn.execute("SELECT array_agg(batch_number ORDER BY batch_number) FROM specql.batch_operation_logs "
                               "WHERE operation_id = %s", (op,)).fetchone()[0]
        assert batches == list(range(1, 47))  # each batch logged once: none applied twice, none skipped
        assert outputs_left(conn, op) == 0
        assert conn.execute("SELECT status, processed_records FROM specql.batch_operation_runs "
                            "WHERE operation_id = %s", (op,)).fetchone() == ("completed", 2 * GRP1)


# bump's batches of 7 over pick's chunks of 100: its 6th lies inside the first chunk, its 15th
# (keys 99..105) takes the end of the first and the start of the second, its 16th follows it.
@pytest.mark.parametrize("point", ["held_at_6", "held_at_15", "held_at_16", "after_commits"])
def test_a_run_killed_inside_its_second_step_resumes_exactly_once(generated, database_url_any, point):
    url = database_url_any
    setup(url, generated, rows=ROWS, grp1=GRP1)
    with connect(url) as conn:
        conn.execute(HOLD)
        if point.startswith("held_at_"):
            conn.execute("INSERT INTO st.hold (batch) VALUES (3 + %s)", (int(point[8:]),))  # after pick's 3
        else:
            conn.execute("INSERT INTO st.slow VALUES (true)")
    thread, box = start_in_thread(url, "CALL st.bump_picked(grp => 1, result => NULL)")
    if point.startswith("held_at_"):
        wait_for(url, "SELECT true FROM pg_stat_activity WHERE pid = %s AND wait_event = 'PgSleep'", (box["pid"],))
    else:
        wait_for(url, "SELECT count(*) >= 5 FROM specql.batch_operation_logs WHERE step = 'bump'")
    run = kill(url, thread, box)
    assert (run["status"], run["state"]) == ("running", "abandoned"), run
    with connect(url) as conn:
        done = conn.execute("SELECT count(*) FROM specql.batch_operation_logs WHERE step = 'bump'").fetchone()[0]
        if point.startswith("held_at_"):
            assert done == int(point[8:]) - 1
        assert done >= 5 and done < 43, done
        # the committed batches are applied, the rest not yet: a resume must skip exactly those
        assert conn.execute("SELECT count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n > 1) FROM st.item"
                            ).fetchone() == (min(7 * done, GRP1), 0)
        assert run["processed_records"] == GRP1 + 7 * done
        assert step_rows(conn, run["operation_id"])[1][2] == "running"
        assert outputs_left(conn, run["operation_id"]) == 3  # pick's chunks, kept for the resume
    assert_resumed_exactly_once(url, run)


def test_a_run_killed_inside_its_first_step_resumes_exactly_once(generated, database_url_any):
    """Killed while pick's 2nd batch (its 2nd chunk of keys) waits before its commit: the resume
    walks on from pick's first 100 keys, then bump takes all 300."""
    url = database_url_any
    setup(url, generated, rows=ROWS, grp1=GRP1)
    with connect(url) as conn:
        conn.execute(HOLD)
        conn.execute("INSERT INTO st.hold (batch) VALUES (2)")
    thread, box = start_in_thread(url, "CALL st.bump_picked(grp => 1, result => NULL)")
    wait_for(url, "SELECT true FROM pg_stat_activity WHERE pid = %s AND wait_event = 'PgSleep'", (box["pid"],))
    run = kill(url, thread, box)
    assert (run["state"], run["processed_records"], run["batch_count"]) == ("abandoned", 100, 1), run
    with connect(url) as conn:
        assert step_rows(conn, run["operation_id"]) == [(1, "pick", "running", 0, 0, 0, 0, 0)]
        assert outputs_left(conn, run["operation_id"]) == 1
    assert_resumed_exactly_once(url, run)


def test_a_run_killed_between_two_steps_resumes_with_the_next(generated, database_url_any):
    url = database_url_any
    setup(url, generated, rows=ROWS, grp1=GRP1)
    with connect(url) as conn:
        conn.execute(HOLD)
        conn.execute("INSERT INTO st.hold (step) VALUES (2)")  # bump's step row waits, uncommitted
    thread, box = start_in_thread(url, "CALL st.bump_picked(grp => 1, result => NULL)")
    wait_for(url, "SELECT true FROM pg_stat_activity WHERE pid = %s AND wait_event = 'PgSleep'", (box["pid"],))
    run = kill(url, thread, box)
    assert (run["status"], run["state"], run["processed_records"], run["batch_count"]) == \
        ("running", "abandoned", GRP1, 3), run
    with connect(url) as conn:
        assert step_rows(conn, run["operation_id"]) == [(1, "pick", "completed", GRP1, GRP1, 0, 3, GRP1)]
        assert conn.execute("SELECT count(*) FROM st.item WHERE n <> 0").fetchone() == (0,)
    assert_resumed_exactly_once(url, run)


def test_an_insert_killed_inside_a_functions_records_resumes_exactly_once(generated, database_url_any):
    """make_notes_resumable: totals stores 23 records in chunks of 4; add_notes inserts them 3 at a
    time, its 2nd batch taking the last record of chunk 1 and two of chunk 2. Killed while that
    batch waits before its commit, the resume inserts every record once (no unique key would
    stop a record inserted twice)."""
    url = database_url_any
    setup(url, generated)
    with connect(url) as conn:
        conn.execute(HOLD)
        conn.execute("INSERT INTO st.hold (batch) VALUES (3)")  # the call is batch 1, add_notes 2..9
    thread, box = start_in_thread(url, "CALL st.make_notes_resumable(grp => 1, result => NULL)")
    wait_for(url, "SELECT true FROM pg_stat_activity WHERE pid = %s AND wait_event = 'PgSleep'", (box["pid"],))
    run = kill(url, thread, box, "make_notes_resumable")
    assert (run["state"], run["processed_records"], run["batch_count"]) == ("abandoned", 1 + 3, 2), run
    with connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM st.note").fetchone() == (3,)
        row = conn.execute("CALL st.make_notes_resumable(grp => 1, resume => %s, result => NULL)",
                           (str(run["operation_id"]),)).fetchone()
        result = conn.execute("SELECT ((%s::specql.batch_operation_result)).status, "
                              "((%s::specql.batch_operation_result)).processed_records, "
                              "((%s::specql.batch_operation_result)).batch_count", (row[0],) * 3).fetchone()
        assert result == ("completed", 1 + 23, 1 + 8)
        assert conn.execute("SELECT count(*), count(DISTINCT item_id), min(item_id), max(item_id), "
                            "bool_and(amount = item_id * 1.5) FROM st.note").fetchone() == (23, 23, 1, 23, True)
        assert step_rows(conn, run["operation_id"]) == [
            (1, "totals", "completed", 1, 1, 0, 1, 23),
            (2, "add_notes", "completed", 23, 23, 0, 8, 0),
        ]
        assert log_sizes(conn, run["operation_id"]) == {"totals": [1], "add_notes": [3] * 7 + [2]}
        assert outputs_left(conn, run["operation_id"]) == 0


def test_a_run_cancelled_between_two_steps_resumes_with_the_next(generated, database_url_any):
    """specql.cancel_operation while bump's step row waits: bump starts, sees the request before
    its first batch and stops (cancelled, nothing changed, pick's keys kept); the resume runs it."""
    url = database_url_any
    setup(url, generated, rows=ROWS, grp1=GRP1)
    with connect(url) as conn:
        conn.execute(HOLD)
        conn.execute("INSERT INTO st.hold (step) VALUES (2)")
    thread, box = start_in_thread(url, "CALL st.bump_picked(grp => 1, result => NULL)")
    wait_for(url, "SELECT true FROM pg_stat_activity WHERE pid = %s AND wait_event = 'PgSleep'", (box["pid"],))
    with connect(url) as conn:
        op = conn.execute("SELECT operation_id FROM specql.batch_operation_runs").fetchone()[0]
        assert conn.execute("SELECT specql.cancel_operation(%s)", (op,)).fetchone() == (True,)
        conn.execute("DELETE FROM st.hold")
    thread.join(30)
    assert "row" in box, box
    with connect(url) as conn:
        status = conn.execute("SELECT (%s::specql.batch_operation_result).status", (box["row"][0],)).fetchone()
        assert status == ("cancelled",)
        assert step_rows(conn, op) == [
            (1, "pick", "completed", GRP1, GRP1, 0, 3, GRP1),
            (2, "bump", "cancelled", GRP1, 0, 0, 0, 0),
        ]
        assert conn.execute("SELECT count(*) FROM st.item WHERE n <> 0").fetchone() == (0,)
        assert outputs_left(conn, op) == 3
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        run = cur.execute("SELECT * FROM specql.batch_operation_runs WHERE operation_id = %s", (op,)).fetchone()
    assert_resumed_exactly_once(url, run)


# ----------------------------------------------------------------------------- the seed's examples

REPO = Path(__file__).resolve().parent.parent


def test_the_seeds_three_multi_step_examples_do_what_they_say(tmp_path, database_url_any):
    """entities/user.yaml migrate_user_data, entities/product_cache.yaml refresh_product_cache and
    entities/invoice.yaml generate_monthly_invoices (with entities/sql/*.sql), as shipped."""
    url = database_url_any
    files = [str(REPO / "entities" / f"{name}.yaml") for name in ("user", "product", "product_cache", "invoice")]
    generate(files, tmp_path / "out")
    lines: list[str] = []
    assert migrate(tmp_path / "out", url, echo=lines.append) == 0, "\n".join(lines)
    with connect(url) as conn:
        # 1,200 users with a legacy id; 300 without, 100 of them migrated 40 days ago
        conn.execute("INSERT INTO public.\"user\" (email, status, legacy_id) "
                     "SELECT 'u' || g || '@example.com', 'active', g FROM generate_series(1, 1200) g")
        conn.execute("INSERT INTO public.\"user\" (email, status, migrated_at) "
                     "SELECT 'n' || g || '@example.com', 'active', "
                     "CASE WHEN g <= 100 THEN now() - interval '40 days' END FROM generate_series(1, 300) g")
        result = call(conn, "public.migrate_user_data")
        op = result["operation_id"]
        assert step_rows(conn, op) == [
            (1, "validate_data", "completed", 1200, 1200, 0, 3, 1200),  # batches of 500
            (2, "update_profiles", "completed", 1200, 1200, 0, 12, 0),  # batches of 100
            (3, "cleanup_legacy", "completed", 100, 100, 0, 1, 0),  # batches of 1000
        ]
        assert (result["status"], result["processed_records"], result["batch_count"]) == ("completed", 2500, 16)
        assert conn.execute("SELECT count(*), count(*) FILTER (WHERE migration_version = '2.0'), "
                            "count(*) FILTER (WHERE legacy_id IS NOT NULL AND migrated_at > now() - interval '1 hour') "
                            "FROM public.\"user\"").fetchone() == (1400, 1200, 1200)

        # 150 products; the cache holds 120 of them, stale (2 hours old) under old names, 30 fresh
        conn.execute("INSERT INTO public.product (name, price) SELECT 'p' || g, g FROM generate_series(1, 150) g")
        conn.execute("INSERT INTO public.product_cache (product_id, name, price, last_updated) "
                     "SELECT id, 'old', 0, now() - CASE WHEN price <= 120 THEN interval '2 hours' ELSE interval '1 minute' END "
                     "FROM public.product")
        result = call(conn, "public.refresh_product_cache")
        op = result["operation_id"]
        assert step_rows(conn, op) == [
            (1, "identify_stale", "completed", 120, 120, 0, 3, 120),  # batches of 50
            (2, "fetch_fresh_data", "completed", 1, 1, 0, 1, 120),
            (3, "update_cache", "completed", 120, 120, 0, 3, 0),
        ]
        assert conn.execute("SELECT count(*) FILTER (WHERE c.name = p.name AND c.price = p.price), "
                            "count(*) FILTER (WHERE c.name = 'old') FROM public.product_cache c "
                            "JOIN public.product p ON p.id = c.product_id").fetchone() == (120, 30)

        # 30 customers with usage in March 2026 (2 rows each), 5 with usage in April only
        conn.execute("INSERT INTO public.customer_usage (customer_id, used_on, amount) "
                     "SELECT c, d, 10 FROM (SELECT gen_random_uuid() AS c FROM generate_series(1, 30)) AS cs, "
                     "(VALUES (date '2026-03-02'), (date '2026-03-20')) AS ds(d)")
        conn.execute("INSERT INTO public.customer_usage (customer_id, used_on, amount) "
                     "SELECT gen_random_uuid(), date '2026-04-02', 5 FROM generate_series(1, 5)")
        result = call(conn, "public.generate_monthly_invoices", target_month="2026-03-01")
        op = result["operation_id"]
        assert [r[:3] + r[4:5] + r[7:] for r in step_rows(conn, op)] == [
            (1, "calculate_usage", "completed", 1, 30),
            (2, "create_invoices", "completed", 30, 30),
            (3, "generate_pdf", "completed", 1, 0),
            (4, "send_notifications", "completed", 1, 0),
        ]
        assert conn.execute("SELECT count(*), sum(amount), count(pdf_url), count(n.invoice_id), "
                            "bool_and(month = date '2026-03-01' AND status = 'pending') "
                            "FROM public.invoice i LEFT JOIN public.invoice_notifications n ON n.invoice_id = i.id"
                            ).fetchone() == (30, 600, 30, 30, True)
        assert conn.execute("SELECT count(*) FROM specql.batch_operation_outputs").fetchone() == (0,)


def test_a_run_failed_inside_its_second_step_resumes_after_the_fix(generated, database_url_any):
    """stop_on_error: bump's batch holding row 150 fails (a trigger refuses the row), the run
    stops failed with pick's keys kept; once the row is accepted, the resume applies that batch
    and the rest, each row once."""
    url = database_url_any
    setup(url, generated, rows=ROWS, grp1=GRP1)
    with connect(url) as conn:
        conn.execute("""
            CREATE TABLE st.refused (id bigint);
            INSERT INTO st.refused VALUES (150);
            CREATE FUNCTION st.refuse_row() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF EXISTS (SELECT 1 FROM st.refused WHERE id = NEW.id) THEN
                    RAISE EXCEPTION 'row % refused', NEW.id;
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_row BEFORE UPDATE ON st.item FOR EACH ROW EXECUTE FUNCTION st.refuse_row();
        """)
        row = conn.execute("CALL st.bump_picked(grp => 1, result => NULL)").fetchone()
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        failed = cur.execute("SELECT (%s::specql.batch_operation_result).*", (row[0],)).fetchone()
        op = failed["operation_id"]
        # bump's batches of 7: 21 applied (147 rows), the 22nd (rows 148..154) failed
        assert (failed["status"], failed["processed_records"], failed["failed_records"], failed["batch_count"]) == \
            ("failed", GRP1 + 147, 7, 3 + 22)
        assert step_rows(conn, op) == [
            (1, "pick", "completed", GRP1, GRP1, 0, 3, GRP1),
            (2, "bump", "failed", GRP1, 147, 7, 22, 0),
        ]
        assert conn.execute("SELECT count(*) FROM st.item WHERE n = 1").fetchone() == (147,)
        assert outputs_left(conn, op) == 3
        conn.execute("DELETE FROM st.refused")
    result = resume(url, op)
    assert (result["status"], result["processed_records"], result["failed_records"], result["error_count"]) == \
        ("completed_with_errors", 2 * GRP1, 0, 1)  # the error row of the first attempt stays
    with connect(url) as conn:
        assert conn.execute("SELECT grp, array_agg(DISTINCT n) FROM st.item GROUP BY grp ORDER BY grp").fetchall() == \
            [(1, [1]), (2, [0])]
        assert step_rows(conn, op)[1][:6] == (2, "bump", "completed_with_errors", GRP1, GRP1, 0)
        assert outputs_left(conn, op) == 0


# ----------------------------------------------------------------------------- refusals across files


def test_keys_of_another_type_are_refused_where_they_are_walked(tmp_path, monkeypatch):
    """A step walking the users' uuid keys as keys of order (bigint): refused, located (the run
    would otherwise stop on a cast error outside any batch). Two entity files, so not in the
    one-file corpus of tests/bad_entities/."""
    from click.testing import CliRunner

    from specql.cli import main

    write_entities(tmp_path / "e", user="""
        name: user
        fields:
          id: uuid
          status: string
        patterns:
          - name: batch_operations
            operation: close_users
            steps:
              - name: find
                operation_type: select
                where_condition: "status = 'closed'"
              - name: close_orders
                operation_type: update
                target_entity: order
                update_data:
                  status: cancelled
                where_condition: "id IN (:find_ids)"
        """, order="""
        name: order
        fields:
          id: bigint
          user_id: uuid
          status: string
        """)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["validate", "e"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "e/user.yaml:18:34: error: output :find_ids holds uuid keys (of step 'find'), but id of order is bigint: "
        "a step walks an output as keys of its own table",
        "1 error(s); nothing was written.",
    ]


# ----------------------------------------------------------------------------- a step on another table

SHELF = """
name: shelf
schema: xt
fields:
  id: bigint
  grp: integer
patterns:
  - name: batch_operations
    operation: flag_boxes
    params: {grp: integer}
    steps:
      - name: pick_boxes
        operation_type: select
        target_entity: box
        where_condition: "grp = :grp"
        batch_size: 3
      - name: flag
        operation_type: update
        target_entity: box
        update_data: {flag: "1"}
        where_condition: "box_no IN (:pick_boxes_ids)"
"""

BOX = """
name: box
schema: xt
primary_key: box_no
fields:
  box_no: bigint
  grp: integer
  flag: integer
"""


def test_a_step_on_another_table_walks_that_table(tmp_path, database_url):
    """flag_boxes runs on shelf, its steps on box (target_entity): pick_boxes must select boxes of
    group 1 (box_no 1..4), not shelves of group 1 (id 1..2, whose numbers are boxes 1 and 2)."""
    url = database_url
    entities = write_entities(tmp_path / "entities", shelf=SHELF, box=BOX)
    generate([str(entities)], tmp_path / "out")
    assert migrate(tmp_path / "out", url, echo=lambda line: None) == 0
    with connect(url) as conn:
        conn.execute("INSERT INTO xt.shelf (id, grp) VALUES (1, 1), (2, 1), (3, 2)")
        conn.execute("INSERT INTO xt.box (box_no, grp, flag) SELECT g, CASE WHEN g <= 4 THEN 1 ELSE 2 END, 0 "
                     "FROM generate_series(1, 10) g")
        result = call(conn, "xt.flag_boxes", grp=1)
        assert conn.execute("SELECT array_agg(box_no ORDER BY box_no) FROM xt.box WHERE flag = 1").fetchone()[0] == \
            [1, 2, 3, 4]
        assert step_rows(conn, result["operation_id"])[0][:5] == (1, "pick_boxes", "completed", 4, 4)
