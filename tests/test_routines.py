"""Generated routines on a real PostgreSQL: exact counts, batching, error and transaction
modes, limits and observability (SPEC §4), on 10,000+ rows."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from helpers import batch_log, call, call_procedure, connect, errors, generate_and_apply, write_entities

WIDGET = """
name: widget
fields:
  id: uuid
  name: string
  status: string
  qty: integer
  updated_at: timestamp
patterns:
  - name: batch_operations
    operation: widget_set_status
    description: "Set the status of widgets by id"
    operation_type: update
    update_data: {status: ":new_status", updated_at: "NOW()"}
    where_condition: "id = ANY(:ids)"
    error_handling: continue_on_error
    progress_tracking: true
  - name: batch_operations
    operation: widget_set_status_stop
    operation_type: update
    update_data: {status: ":new_status"}
    where_condition: "id = ANY(:ids)"
    progress_tracking: true
  - name: batch_operations
    operation: widget_set_status_collect
    operation_type: update
    update_data: {status: ":new_status"}
    where_condition: "id = ANY(:ids)"
    error_handling: collect_errors
    batch_size: 500
  - name: batch_operations
    operation: widget_set_status_max_errors
    operation_type: update
    update_data: {status: ":new_status"}
    where_condition: "id = ANY(:ids)"
    error_handling: continue_on_error
    max_errors: 1
    batch_size: 100
  - name: batch_operations
    operation: widget_promote
    operation_type: update
    update_data: {status: ":to_status", updated_at: "NOW()"}
    where_condition: "status = :from_status"
    progress_tracking: true
    progress_notification_interval: 2000
    collect_metrics: true
    notify_on_completion: true
    notification_channels: [email, webhook]
    notification_message: "Promoted {processed_records} of {total_records} widgets"
  - name: batch_operations
    operation: widget_finish_all_or_nothing
    operation_type: update
    update_data: {status: done}
    where_condition: "status = 'pending'"
    transaction: single
    progress_tracking: true
  - name: batch_operations
    operation: widget_finish_committing
    operation_type: update
    update_data: {status: done}
    where_condition: "status = 'pending'"
    transaction: commit_per_batch
    error_handling: continue_on_error
    progress_tracking: true
  - name: batch_operations
    operation: widget_finish_limited
    operation_type: update
    update_data: {status: done}
    where_condition: "status = 'pending'"
    max_records: 500
  - name: batch_operations
    operation: widget_restock
    operation_type: update
    update_data: {qty: 0}
    where_condition: "qty > :min_qty"
    requires_confirmation: true
  - name: batch_operations
    operation: widget_guarded
    operation_type: update
    update_data: {status: done}
    where_condition: "status = 'pending'"
    params: {allowed: boolean}
    preconditions:
      - "count(*) FILTER (WHERE status = 'pending') > 0"
      - ":allowed"
  - name: batch_operations
    operation: widget_slow
    operation_type: update
    update_data: {status: done}
    where_condition: "status = 'pending'"
    batch_size: 100
    timeout: "50 milliseconds"
  - name: batch_operations
    operation: widget_purge
    operation_type: delete
    where_condition: "qty < :max_qty"
    progress_tracking: true
  - name: batch_operations
    operation: widget_import
    operation_type: insert
    data_source: :rows
    insert_data: {id: ":w.id", name: ":w.name", qty: ":w.qty", status: pending}
    error_handling: collect_errors
    progress_tracking: true
  - name: batch_operations
    operation: widget_sync
    operation_type: upsert
    data_source: :rows
    upsert_data: {id: ":w.id", name: ":w.name", qty: ":w.qty"}
    conflict_target: id
    batch_size: 250
"""

N = 10_500  # > 10 batches of 1000, the last one partial


@pytest.fixture(scope="module")
def entities(tmp_path_factory):
    return write_entities(tmp_path_factory.mktemp("entities"), widget=WIDGET)


@pytest.fixture
def db(database_url_any, entities, tmp_path):
    generate_and_apply(database_url_any, entities, tmp_path / "out")
    with connect(database_url_any) as conn:
        yield conn


def seed(conn, n=N, status="pending"):
    ids = [uuid.UUID(int=i + 1) for i in range(n)]
    conn.execute(
        "INSERT INTO public.widget (id, name, status, qty) "
        "SELECT id, 'w' || ord, %s, ord %% 100 FROM unnest(%s::uuid[]) WITH ORDINALITY AS u(id, ord)",
        (status, ids))
    return ids


def poison(conn, *ids):
    """A trigger that fails any change of the given rows (the planted failing records)."""
    conn.execute("CREATE TABLE poisoned (id uuid PRIMARY KEY)")
    conn.execute("INSERT INTO poisoned SELECT unnest(%s::uuid[])", (list(ids),))
    conn.execute("""
        CREATE FUNCTION fail_poisoned() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM poisoned WHERE id = OLD.id) THEN
                RAISE EXCEPTION 'poisoned row %', OLD.id USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END $$""")
    conn.execute("CREATE TRIGGER fail_poisoned BEFORE UPDATE OR DELETE ON public.widget "
                 "FOR EACH ROW EXECUTE FUNCTION fail_poisoned()")


def status_counts(conn) -> dict[str, int]:
    return dict(conn.execute("SELECT status, count(*) FROM public.widget GROUP BY status").fetchall())


# ----------------------------------------------------------------------------- id arrays


def test_id_array_update_counts_exactly_in_input_order(db):
    ids = seed(db)
    db.execute("CREATE TABLE seen (seq bigserial, id uuid)")
    db.execute("""CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN INSERT INTO seen (id) VALUES (NEW.id); RETURN NEW; END $$""")
    db.execute("CREATE TRIGGER note AFTER UPDATE ON public.widget FOR EACH ROW EXECUTE FUNCTION note()")
    wanted = list(reversed(ids[:N - 100])) + [uuid.uuid4(), uuid.uuid4()]  # two unknown ids
    r = call(db, "public.widget_set_status", ids=wanted, new_status="active")

    assert r["status"] == "completed"
    assert r["total_records"] == len(wanted)
    assert r["processed_records"] == N - 100  # unknown ids change nothing and are not counted
    assert r["failed_records"] == 0 and r["error_count"] == 0
    assert status_counts(db) == {"active": N - 100, "pending": 100}
    log = batch_log(db, r["operation_id"])
    assert [b[0] for b in log] == list(range(1, 12))
    assert [b[1] for b in log] == [1000] * 10 + [400]
    assert r["batch_count"] == 11
    # batch k holds slice k of the input, in input order
    seen = [row[0] for row in db.execute("SELECT id FROM seen ORDER BY seq").fetchall()]
    assert set(seen[:1000]) == set(wanted[:1000])
    assert set(seen[9000:]) == set(wanted[9000:]) - set(wanted[-2:])


@pytest.mark.parametrize("ids", [None, []], ids=["null", "empty"])
def test_empty_or_null_array_is_a_clean_zero(db, ids):
    seed(db, 10)
    r = call(db, "public.widget_set_status", ids=ids, new_status="active")
    assert (r["status"], r["total_records"], r["processed_records"], r["batch_count"]) == ("completed", 0, 0, 0)
    assert status_counts(db) == {"pending": 10}


def test_hostile_parameter_values_are_data(db):
    ids = seed(db, 5)
    hostile = "x'); DROP TABLE public.widget; --"
    r = call(db, "public.widget_set_status", ids=ids, new_status=hostile)
    assert r["processed_records"] == 5
    assert status_counts(db) == {hostile: 5}


def test_continue_on_error_logs_the_failed_batch_and_goes_on(db):
    ids = seed(db)
    poison(db, ids[2500])  # in batch 3
    r = call(db, "public.widget_set_status", ids=ids, new_status="active")
    assert r["status"] == "completed_with_errors"
    assert r["processed_records"] == N - 1000
    assert r["failed_records"] == 1000
    assert r["error_count"] == 1
    (batch, sqlstate, message, failed), = errors(db, r["operation_id"])
    assert (batch, sqlstate) == (3, "23514")
    assert "poisoned row" in message
    assert failed == [str(i) for i in ids[2000:3000]]
    assert [b[3] for b in batch_log(db, r["operation_id"])][1:4] == ["completed", "failed", "completed"]
    assert status_counts(db) == {"active": N - 1000, "pending": 1000}


def test_stop_on_error_stops_at_the_failing_batch(db):
    ids = seed(db)
    poison(db, ids[2500])
    r = call(db, "public.widget_set_status_stop", ids=ids, new_status="active")
    assert r["status"] == "failed"
    assert r["processed_records"] == 2000  # batches 1-2 stay (per_batch), batch 3 rolled back
    assert r["batch_count"] == 3
    assert r["error_count"] == 1
    assert status_counts(db) == {"active": 2000, "pending": N - 2000}


def test_collect_errors_isolates_the_failing_records(db):
    ids = seed(db)
    bad = [ids[10], ids[11], ids[7000]]
    poison(db, *bad)
    r = call(db, "public.widget_set_status_collect", ids=ids, new_status="active")
    assert r["status"] == "completed_with_errors"
    assert r["processed_records"] == N - 3
    assert r["failed_records"] == 3
    assert r["error_count"] == 3
    rows = errors(db, r["operation_id"])
    assert [row[3] for row in rows] == [[str(b)] for b in bad]
    assert [row[0] for row in rows] == [1, 1, 15]  # batch_size 500
    assert db.execute("SELECT count(*) FROM public.widget WHERE status = 'pending'").fetchone()[0] == 3


def test_max_errors_stops_once_exceeded(db):
    ids = seed(db, 1000)
    poison(db, ids[50], ids[150], ids[250], ids[350])  # batches 1-4 of 100
    r = call(db, "public.widget_set_status_max_errors", ids=ids, new_status="active")
    assert r["status"] == "failed"
    assert r["error_count"] == 2  # stopped once more than max_errors (1) were logged
    assert r["batch_count"] == 2
    assert r["processed_records"] == 0


# ----------------------------------------------------------------------------- keyset walk


def test_condition_walk_counts_exactly_and_second_run_changes_nothing(db):
    seed(db, 12_345)
    db.execute("UPDATE public.widget SET status = 'other' WHERE qty %% 3 = 0", ())
    pending = status_counts(db)["pending"]
    notices = []
    db.add_notice_handler(lambda d: notices.append(d.message_primary))
    r = call(db, "public.widget_promote", from_status="pending", to_status="active")
    assert r["status"] == "completed"
    assert r["processed_records"] == pending == r["total_records"]
    assert status_counts(db) == {"active": pending, "other": 12_345 - pending}
    log = batch_log(db, r["operation_id"])
    assert all(b[1] <= 1000 for b in log)
    assert sum(b[1] for b in log) == pending
    assert len(log) == -(-pending // 1000)
    # progress every 2000 records
    assert sum("records done" in n for n in notices) == pending // 2000
    # a second run finds nothing left to do
    again = call(db, "public.widget_promote", from_status="pending", to_status="active")
    assert (again["processed_records"], again["batch_count"]) == (0, 0)


def test_metrics_and_notification(db, database_url_any):
    seed(db, 3000)
    with psycopg.connect(database_url_any, autocommit=True) as listener:
        listener.execute("LISTEN specql_batch_operations")
        r = call(db, "public.widget_promote", from_status="pending", to_status="active")
        note = next(listener.notifies(timeout=5, stop_after=1))
    payload = json.loads(note.payload)
    assert payload["operation_id"] == str(r["operation_id"])
    assert payload["message"] == "Promoted 3000 of 3000 widgets"
    assert payload["channels"] == ["email", "webhook"]
    outbox = db.execute("SELECT channels, message FROM specql.batch_operation_notifications "
                        "WHERE operation_id = %s", (r["operation_id"],)).fetchall()
    assert outbox == [(["email", "webhook"], "Promoted 3000 of 3000 widgets")]
    metrics = dict(db.execute("SELECT metric_name, metric_value FROM specql.batch_performance_metrics "
                              "WHERE operation_id = %s", (r["operation_id"],)).fetchall())
    assert metrics["processed_records"] == 3000 and metrics["batch_count"] == 3
    assert metrics["records_per_second"] > 0
    run = db.execute("SELECT status, processed_records FROM specql.batch_operation_runs "
                     "WHERE operation_id = %s", (r["operation_id"],)).fetchone()
    assert run == ("completed", 3000)


# ----------------------------------------------------------------------------- transactions


def test_single_transaction_is_all_or_nothing(db):
    ids = seed(db)
    poison(db, ids[-1])  # the very last batch fails
    with pytest.raises(psycopg.errors.CheckViolation) as err:
        call(db, "public.widget_finish_all_or_nothing")
    assert "poisoned row" in str(err.value)
    assert "failed in batch 11" in (err.value.diag.message_detail or "")
    assert status_counts(db) == {"pending": N}
    assert db.execute("SELECT count(*) FROM specql.batch_operation_logs").fetchone()[0] == 0


def test_single_transaction_success(db):
    seed(db)
    r = call(db, "public.widget_finish_all_or_nothing")
    assert (r["status"], r["processed_records"], r["batch_count"]) == ("completed", N, 11)


def test_commit_per_batch_procedure_commits_each_batch(db):
    ids = seed(db)
    poison(db, ids[4242])
    r = call_procedure(db, "public.widget_finish_committing")
    assert r["status"] == "completed_with_errors"
    assert r["processed_records"] == N - 1000
    assert r["batch_count"] == 11
    # every batch was its own transaction: the changed rows carry 10 distinct xmins
    xmins = db.execute("SELECT count(DISTINCT xmin::text) FROM public.widget WHERE status = 'done'").fetchone()[0]
    assert xmins == 10
    # the caller's search_path is back as it was
    assert db.execute("SHOW search_path").fetchone()[0] == '"$user", public'


def test_commit_per_batch_refuses_a_transaction_block(db):
    seed(db, 10)
    db.autocommit = False
    with pytest.raises(psycopg.errors.InvalidTransactionTermination):
        call_procedure(db, "public.widget_finish_committing")
    db.rollback()
    db.autocommit = True


# ----------------------------------------------------------------------------- limits


def test_max_records_refuses_and_changes_nothing(db):
    seed(db, 501)
    with pytest.raises(psycopg.Error) as err:
        call(db, "public.widget_finish_limited")
    assert err.value.sqlstate == "SQ002"
    assert "would touch 501 records, more than max_records 500" in str(err.value)
    assert status_counts(db) == {"pending": 501}
    db.execute("DELETE FROM public.widget WHERE id = (SELECT id FROM public.widget ORDER BY id LIMIT 1)")
    assert call(db, "public.widget_finish_limited")["processed_records"] == 500


def test_confirmation(db):
    seed(db, 2000)
    over = db.execute("SELECT count(*) FROM public.widget WHERE qty > 90").fetchone()[0]
    r = call(db, "public.widget_restock", min_qty=90)
    assert (r["status"], r["total_records"], r["processed_records"]) == ("awaiting_confirmation", over, 0)
    assert db.execute("SELECT count(*) FROM public.widget WHERE qty > 90").fetchone()[0] == over
    assert db.execute("SELECT count(*) FROM specql.batch_operation_runs").fetchone()[0] == 0
    r = call(db, "public.widget_restock", min_qty=90, confirm=True)
    assert (r["status"], r["processed_records"]) == ("completed", over)
    assert db.execute("SELECT count(*) FROM public.widget WHERE qty > 90").fetchone()[0] == 0


def test_preconditions(db):
    with pytest.raises(psycopg.Error) as err:
        call(db, "public.widget_guarded", allowed=True)  # no pending rows
    assert err.value.sqlstate == "SQ001"
    assert "count(*) FILTER (WHERE status = 'pending') > 0" in str(err.value)
    seed(db, 10)
    with pytest.raises(psycopg.Error) as err:
        call(db, "public.widget_guarded", allowed=False)
    assert "precondition failed: :allowed" in str(err.value)
    assert status_counts(db) == {"pending": 10}
    assert call(db, "public.widget_guarded", allowed=True)["processed_records"] == 10


def test_timeout_stops_between_batches(db):
    seed(db, 1000)
    db.execute("""CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN PERFORM pg_sleep(0.03); RETURN NULL; END $$""")
    db.execute("CREATE TRIGGER slow AFTER UPDATE ON public.widget FOR EACH STATEMENT EXECUTE FUNCTION slow()")
    r = call(db, "public.widget_slow")
    assert r["status"] == "timed_out"
    assert 1 <= r["batch_count"] < 10
    assert r["processed_records"] == r["batch_count"] * 100
    assert status_counts(db)["done"] == r["processed_records"]


# ----------------------------------------------------------------------------- delete, insert, upsert


def test_delete_walks_and_counts(db):
    seed(db)
    below = db.execute("SELECT count(*) FROM public.widget WHERE qty < 40").fetchone()[0]
    r = call(db, "public.widget_purge", max_qty=40)
    assert r["processed_records"] == below
    assert db.execute("SELECT count(*) FROM public.widget").fetchone()[0] == N - below
    assert db.execute("SELECT count(*) FROM public.widget WHERE qty < 40").fetchone()[0] == 0
    assert all(b[1] <= 1000 for b in batch_log(db, r["operation_id"]))


def test_jsonb_insert_with_collect_errors(db):
    db.execute("ALTER TABLE public.widget ADD CONSTRAINT qty_not_negative CHECK (qty >= 0)")
    rows = [{"id": str(uuid.UUID(int=i + 1)), "name": f"n{i}", "qty": i % 50} for i in range(N)]
    rows[1234]["qty"] = -1
    rows[9999]["qty"] = -5
    r = call(db, "public.widget_import", rows=json.dumps(rows))
    assert (r["total_records"], r["processed_records"], r["failed_records"]) == (N, N - 2, 2)
    bad = errors(db, r["operation_id"])
    assert [(b[1], b[3][0]["index"]) for b in bad] == [("23514", 1234), ("23514", 9999)]
    assert bad[0][3][0]["record"] == rows[1234]
    assert db.execute("SELECT count(*) FROM public.widget").fetchone()[0] == N - 2
    got = db.execute("SELECT name, qty FROM public.widget WHERE id = %s", (rows[42]["id"],)).fetchone()
    assert got == ("n42", 42)
    assert [b[1] for b in batch_log(db, r["operation_id"])] == [1000, 999] + [1000] * 7 + [999, 500]


@pytest.mark.parametrize("rows", [None, "[]"], ids=["null", "empty"])
def test_insert_of_nothing(db, rows):
    r = call(db, "public.widget_import", rows=rows)
    assert (r["status"], r["total_records"], r["processed_records"]) == ("completed", 0, 0)


def test_upsert_inserts_then_updates(db):
    rows = [{"id": str(uuid.uuid4()), "name": f"n{i}", "qty": i} for i in range(1000)]
    r = call(db, "public.widget_sync", rows=json.dumps(rows))
    assert (r["processed_records"], r["batch_count"]) == (1000, 4)
    for row in rows[:300]:
        row["qty"] = 7
    r = call(db, "public.widget_sync", rows=json.dumps(rows[:300] + [{"id": str(uuid.uuid4()), "name": "x", "qty": 1}]))
    assert r["processed_records"] == 301
    assert db.execute("SELECT count(*) FROM public.widget").fetchone()[0] == 1001
    assert db.execute("SELECT count(*) FROM public.widget WHERE qty = 7").fetchone()[0] == 300
