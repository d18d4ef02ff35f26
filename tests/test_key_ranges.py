"""Condition walks over an integer primary key take dense stretches of keys as key ranges
(templates/sql/macros/keyset.sql.j2). Whatever the layout of the keys, the batches must be
exactly those of plain keyset pagination: the sorted matching keys, cut every batch_size.

A test trigger records, for every changed row, the batch number it was changed in (the
routine's batch log holds one row per finished batch), so each test compares the complete
batch composition with the model, not only counts."""

from __future__ import annotations

import pytest

from helpers import batch_log, call, call_procedure, connect, errors, generate_and_apply, write_entities

BATCH = 100
BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1

ENTRY = """
name: entry
schema: ledger
fields:
  id: bigint
  status: string
  amount: integer
patterns:
  - name: batch_operations
    operation: settle
    operation_type: update
    update_data: {status: ":to_status"}
    where_condition: "status = :from_status"
    batch_size: 100
    error_handling: continue_on_error
    progress_tracking: true
  - name: batch_operations
    operation: settle_stop
    operation_type: update
    update_data: {status: ":to_status"}
    where_condition: "status = :from_status"
    batch_size: 100
    progress_tracking: true
  - name: batch_operations
    operation: settle_collect
    operation_type: update
    update_data: {status: ":to_status"}
    where_condition: "status = :from_status"
    batch_size: 100
    error_handling: collect_errors
    progress_tracking: true
  - name: batch_operations
    operation: settle_single
    operation_type: update
    update_data: {status: done}
    where_condition: "status = 'open'"
    batch_size: 100
    transaction: single
    progress_tracking: true
  - name: batch_operations
    operation: settle_committing
    operation_type: update
    update_data: {status: done}
    where_condition: "status = 'open'"
    batch_size: 100
    transaction: commit_per_batch
    progress_tracking: true
  - name: batch_operations
    operation: purge
    operation_type: delete
    where_condition: "amount < :below"
    batch_size: 100
    progress_tracking: true
  - name: batch_operations
    operation: settle_all
    operation_type: update
    update_data: {amount: {sql: "amount + 1"}}
    batch_size: 100
    progress_tracking: true
"""

COUNTER = """
name: counter
schema: ledger
fields:
  id: integer
  status: string
patterns:
  - name: batch_operations
    operation: close_counters
    operation_type: update
    update_data: {status: closed}
    where_condition: "status = 'open'"
    batch_size: 100
    progress_tracking: true
"""


@pytest.fixture(scope="module")
def entities(tmp_path_factory):
    return write_entities(tmp_path_factory.mktemp("entities"), entry=ENTRY, counter=COUNTER)


@pytest.fixture
def db(database_url_any, entities, tmp_path):
    generate_and_apply(database_url_any, entities, tmp_path / "out")
    with connect(database_url_any) as conn:
        for table in ("entry", "counter"):
            # Which batch changed each row: the batch log has a row per batch finished before.
            conn.execute(f"""
                CREATE TABLE ledger.{table}_seen (id bigint PRIMARY KEY, batch integer);
                CREATE FUNCTION ledger.{table}_seen() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    INSERT INTO ledger.{table}_seen
                    VALUES (OLD.id, (SELECT count(*) + 1 FROM specql.batch_operation_logs));
                    RETURN NULL;
                END $$;
                CREATE TRIGGER seen AFTER UPDATE OR DELETE ON ledger.{table}
                    FOR EACH ROW EXECUTE FUNCTION ledger.{table}_seen();""")
        yield conn


def seed(conn, keys, matching, table="entry"):
    """Rows with the given keys; those in `matching` are 'open', the others 'closed'."""
    matching = set(matching)
    conn.execute(f"INSERT INTO ledger.{table} (id, status) SELECT k, CASE WHEN k = ANY(%s) THEN 'open' "
                 f"ELSE 'closed' END FROM unnest(%s::bigint[]) AS k",
                 (sorted(matching), list(keys)))
    return sorted(matching)


def expected_batches(target):
    return {k: i // BATCH + 1 for i, k in enumerate(sorted(target))}


def seen(conn, table="entry"):
    return dict(conn.execute(f"SELECT id, batch FROM ledger.{table}_seen").fetchall())


def heap_fetches(conn, table="entry"):
    """Rows fetched from the table through its primary key in the current transaction."""
    return conn.execute("SELECT pg_stat_get_xact_tuples_fetched(%s::regclass)",
                        (f"ledger.{table}_pkey",)).fetchone()[0]


def run_settle(conn, routine="ledger.settle", **extra):
    """Call in an explicit transaction, to read this call's heap fetches; commit."""
    conn.execute("BEGIN")
    # Index scans only, so the fetches count how often each row was visited.
    conn.execute("SET LOCAL enable_seqscan = off")
    conn.execute("SET LOCAL enable_bitmapscan = off")
    r = call(conn, routine, from_status="open", to_status="done", **extra)
    fetched = heap_fetches(conn)
    conn.execute("COMMIT")
    return r, fetched


def layout(name):
    """(all keys, matching keys) of a named key layout."""
    if name == "dense":
        keys = range(1, 5_001)
        return keys, keys
    if name == "dense_with_holes":  # every 7th row does not match, every 13th key missing
        keys = [k for k in range(1, 6_001) if k % 13]
        return keys, [k for k in keys if k % 7]
    if name == "sparse":  # one key in ten: never dense
        keys = range(10, 50_001, 10)
        return keys, keys
    if name == "half":  # every other key matches: around the density threshold
        keys = range(1, 4_001)
        return keys, [k for k in keys if k % 2]
    if name == "mixed":  # dense, sparse, dense again, negative keys, up to the bigint maximum
        dense1 = range(-2_050, 950)
        sparse = range(1_000, 40_000, 37)
        dense2 = range(100_000, 102_345)
        top = range(BIGINT_MAX - 250, BIGINT_MAX + 1)
        keys = [*dense1, *sparse, *dense2, *top]
        return keys, [k for k in keys if k % 97 != 5]
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["dense", "dense_with_holes", "sparse", "half", "mixed"])
def test_batches_are_exactly_those_of_keyset_pagination(db, name):
    keys, matching = layout(name)
    target = seed(db, keys, matching)
    r, _ = run_settle(db)
    assert r["status"] == "completed"
    assert r["processed_records"] == r["total_records"] == len(target)
    assert r["batch_count"] == -(-len(target) // BATCH)
    assert seen(db) == expected_batches(target)
    assert [b[1] for b in batch_log(db, r["operation_id"])] == [
        min(BATCH, len(target) - i * BATCH) for i in range(r["batch_count"])]
    assert db.execute("SELECT count(*) FROM ledger.entry WHERE status = 'done'").fetchone()[0] == len(target)
    again, _ = run_settle(db)
    assert (again["processed_records"], again["batch_count"]) == (0, 0)


def test_dense_keys_are_visited_once(db):
    """The point of key ranges: on dense keys each row is fetched once (to change it), not
    twice (to list it, then to change it)."""
    target = seed(db, *layout("dense"))
    r, fetched = run_settle(db)
    assert r["processed_records"] == len(target)
    # the first batch is listed: its rows are fetched twice
    assert fetched == len(target) + BATCH


def test_sparse_keys_stay_listed(db):
    target = seed(db, *layout("sparse"))
    r, fetched = run_settle(db)
    assert r["processed_records"] == len(target)
    assert fetched == 2 * len(target)  # no key range was tried


def test_integer_key_up_to_its_maximum(db):
    keys = range(INT_MAX - 450, INT_MAX + 1)
    target = seed(db, keys, [k for k in keys if k % 10 != 3], table="counter")
    r = call(db, "ledger.close_counters")
    assert (r["status"], r["processed_records"]) == ("completed", len(target))
    assert seen(db, "counter") == expected_batches(target)


def plant_failure(conn, key):
    conn.execute("""
        CREATE FUNCTION ledger.fail_planted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF OLD.id = %s THEN
                RAISE EXCEPTION 'planted failure' USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END $$""" % int(key))
    conn.execute("CREATE TRIGGER fail_planted BEFORE UPDATE OR DELETE ON ledger.entry "
                 "FOR EACH ROW EXECUTE FUNCTION ledger.fail_planted()")


def test_failure_in_a_key_range_batch_continue_on_error(db):
    target = seed(db, *layout("dense_with_holes"))
    batches = expected_batches(target)
    poisoned = target[7 * BATCH + 42]  # batch 8: a key range batch
    failing = [k for k in target if batches[k] == 8]
    plant_failure(db, poisoned)
    r, _ = run_settle(db)
    assert r["status"] == "completed_with_errors"
    assert r["failed_records"] == len(failing) == BATCH
    assert r["processed_records"] == len(target) - BATCH
    assert r["batch_count"] == -(-len(target) // BATCH)
    (err,) = errors(db, r["operation_id"])
    assert err[0] == 8 and err[1] == "23514"
    assert err[3] == failing  # the failed batch's keys, listed after its savepoint undid it
    assert seen(db) == {k: b for k, b in batches.items() if b != 8}


def test_failure_in_a_key_range_batch_stop_on_error(db):
    target = seed(db, *layout("dense"))
    poisoned = target[5 * BATCH + 99]  # the last key of batch 6
    plant_failure(db, poisoned)
    r, _ = run_settle(db, "ledger.settle_stop")
    assert (r["status"], r["processed_records"], r["batch_count"]) == ("failed", 5 * BATCH, 6)
    (err,) = errors(db, r["operation_id"])
    assert err[3] == target[5 * BATCH:6 * BATCH]
    assert set(seen(db)) == set(target[:5 * BATCH])


def test_failure_in_a_key_range_batch_collect_errors(db):
    target = seed(db, *layout("dense"))
    poisoned = target[3 * BATCH + 10]
    plant_failure(db, poisoned)
    r, _ = run_settle(db, "ledger.settle_collect")
    assert r["status"] == "completed_with_errors"
    assert (r["processed_records"], r["failed_records"], r["error_count"]) == (len(target) - 1, 1, 1)
    assert errors(db, r["operation_id"])[0][3] == [poisoned]
    assert set(seen(db)) == set(target) - {poisoned}


def test_single_transaction_over_key_ranges(db):
    target = seed(db, *layout("dense_with_holes"))
    r = call(db, "ledger.settle_single")
    assert (r["status"], r["processed_records"]) == ("completed", len(target))
    assert seen(db) == expected_batches(target)


def test_commit_per_batch_over_key_ranges(db):
    target = seed(db, *layout("mixed"))
    r = call_procedure(db, "ledger.settle_committing")
    assert (r["status"], r["processed_records"]) == ("completed", len(target))
    assert seen(db) == expected_batches(target)


def test_delete_over_key_ranges(db):
    keys = [k for k in range(1, 8_001) if k % 11]
    db.execute("INSERT INTO ledger.entry (id, status, amount) SELECT k, 'x', k %% 10 FROM unnest(%s::bigint[]) k",
               (keys,))
    target = [k for k in keys if k % 10 < 8]
    r = call(db, "ledger.purge", below=8)
    assert (r["status"], r["processed_records"], r["total_records"]) == ("completed", len(target), len(target))
    assert seen(db) == expected_batches(target)
    assert db.execute("SELECT count(*) FROM ledger.entry").fetchone()[0] == len(keys) - len(target)


def test_walk_without_condition_changes_every_row_once(db):
    """No where_condition: every row matches, before and after it is changed."""
    keys = [*range(1, 2_500), *range(10_000, 10_250, 3)]
    db.execute("INSERT INTO ledger.entry (id, status, amount) SELECT k, 'x', 0 FROM unnest(%s::bigint[]) k",
               (keys,))
    r = call(db, "ledger.settle_all")
    assert (r["status"], r["processed_records"]) == ("completed", len(keys))
    assert seen(db) == expected_batches(keys)
    assert db.execute("SELECT min(amount), max(amount) FROM ledger.entry").fetchone() == (1, 1)

