"""Issue 14, the lessons of the ORM bulk tools (SPEC §10), end to end on PostgreSQL 18 and 15:
seed 002's soft-delete flow on the example entity (create 5,000, soft delete 2,000 in batches of
500, statistics, restore 1,000, purge), seed 003's skipped conflicts, and seed 000's lesson
through a hook: an after hook that calls another generated routine, which batches by the
caller's batch_size argument (the transaction-local specql.batch_size); an audited update whose
rows another transaction changes while the batch waits for them (old and new rows still paired);
an audited insert step whose created keys a later step reads. About 15 s a server."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

from psycopg.rows import dict_row

from helpers import call, connect, generate_and_apply, write_entities

ROOT = Path(__file__).resolve().parent.parent

NOTE = """
name: member_note
fields:
  id: bigint
  member_id: bigint
  flagged: boolean
patterns:
  - name: batch_operations
    operation: flag_member_notes
    operation_type: update
    where_condition: "member_id = ANY(:member_ids)"
    update_data: {flagged: true}
    batch_size: 1000
"""

# The after hook of set_member_status (entities/member.yaml): flag the notes of the members
# the batch changed, through another generated routine called without a batch_size.
HOOK = """
CREATE OR REPLACE FUNCTION public.member_status_changed(operation_id uuid, batch_number integer, old_rows jsonb,
                                                        new_rows jsonb, changed_fields text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM public.flag_member_notes(
        member_ids => ARRAY(SELECT (r ->> 'id')::bigint FROM jsonb_array_elements(new_rows) AS r));
END $$;
"""


def setup(url: str, tmp_path: Path):
    folder = write_entities(tmp_path / "entities", member_note=NOTE)
    shutil.copy(ROOT / "entities" / "member.yaml", folder / "member.yaml")
    generate_and_apply(url, folder, tmp_path / "out")
    conn = connect(url)
    conn.execute(HOOK)
    return conn


def records(start: int, stop: int) -> str:
    return json.dumps([{"id": i, "email": f"member{i}@example.com", "name": f"Member {i}"} for i in range(start, stop)])


def stats(conn) -> tuple:
    return conn.execute("SELECT active, deleted, total FROM public.member_deletion_stats()").fetchone()


def test_the_soft_delete_flow_of_seed_002(database_url_any, tmp_path):
    conn = setup(database_url_any, tmp_path)
    r = call(conn, "public.create_members", members=records(1, 5001))
    assert (r["status"], r["processed_records"], r["skipped_records"], r["batch_count"]) == ("completed", 5000, 0, 5)

    # seed 003: records whose keys exist already are skipped and counted, the new ones inserted
    r = call(conn, "public.create_members", members=records(4901, 5101))
    assert (r["processed_records"], r["skipped_records"], r["failed_records"]) == (100, 100, 0)
    conn.execute("DELETE FROM public.member WHERE id > 5000")

    ids = list(range(1, 2001))
    r = call(conn, "public.soft_delete_members", member_ids=ids, deleted_by="system", reason="Performance test")
    assert (r["status"], r["processed_records"], r["batch_count"]) == ("completed", 2000, 4)
    assert conn.execute("SELECT count(*) FROM public.member WHERE deleted_by = 'system' AND "
                        "deletion_reason = 'Performance test' AND deleted_at IS NOT NULL").fetchone()[0] == 2000
    assert stats(conn) == (3000, 2000, 5000)

    # rows deleted already are skipped: their deleted_at stays
    first = conn.execute("SELECT deleted_at FROM public.member WHERE id = 1").fetchone()[0]
    r = call(conn, "public.soft_delete_members", member_ids=ids, deleted_by="again", reason="again")
    assert r["processed_records"] == 0
    assert conn.execute("SELECT deleted_at FROM public.member WHERE id = 1").fetchone()[0] == first

    # an ordinary update leaves soft-deleted rows alone
    r = call(conn, "public.set_member_status", old_status="active", new_status="gold")
    assert r["processed_records"] == 3000
    assert conn.execute("SELECT count(*) FROM public.member WHERE status = 'gold' AND deleted_at IS NOT NULL"
                        ).fetchone()[0] == 0

    r = call(conn, "public.restore_members", member_ids=ids[:1000])
    assert (r["processed_records"], r["batch_count"]) == (1000, 2)
    assert stats(conn) == (4000, 1000, 5000)

    # purge: rows soft-deleted before the cutoff (half of them two days ago), in batches of 100
    conn.execute("UPDATE public.member SET deleted_at = now() - interval '2 days' WHERE id BETWEEN 1001 AND 1500")
    cur = conn.cursor(row_factory=dict_row)
    r = cur.execute("SELECT * FROM public.purge_members(cutoff => now() - interval '1 day')").fetchone()
    assert (r["status"], r["processed_records"], r["batch_count"]) == ("completed", 500, 5)
    assert stats(conn) == (4000, 500, 4500)
    assert conn.execute("SELECT count(*) FROM public.member WHERE id BETWEEN 1001 AND 1500").fetchone()[0] == 0


def test_an_after_hook_calling_a_generated_routine_batches_by_the_callers_batch_size(database_url_any, tmp_path):
    """Seed 000: the routine a hook calls inherits the caller's batch_size argument."""
    conn = setup(database_url_any, tmp_path)
    call(conn, "public.create_members", members=records(1, 101))
    conn.execute("INSERT INTO public.member_note (id, member_id, flagged) "
                 "SELECT g, 1 + (g % 100), false FROM generate_series(1, 3000) AS g")

    r = call(conn, "public.set_member_status", old_status="active", new_status="gold", batch_size=25)
    assert (r["status"], r["processed_records"], r["batch_count"]) == ("completed", 100, 4)
    inner = conn.execute(
        "SELECT l.batch_size, l.records_processed FROM specql.batch_operation_logs AS l "
        "WHERE l.operation = 'flag_member_notes' ORDER BY l.id").fetchall()
    # each outer batch changes 25 members, whose 750 notes the hook's routine flags 25 at a time
    assert len(inner) == 4 * 30 and {size for size, _ in inner} == {25} and max(n for _, n in inner) <= 25
    assert conn.execute("SELECT count(*) FROM public.member_note WHERE flagged").fetchone()[0] == 3000
    # the caller's batch_size was restored when it returned: a later call uses the file's sizes
    conn.execute("UPDATE public.member SET status = 'active'")
    conn.execute("DELETE FROM specql.batch_operation_logs")
    r = call(conn, "public.set_member_status", old_status="active", new_status="gold")
    assert r["batch_count"] == 1  # batch_size 200 in entities/member.yaml
    sizes = {s for (s,) in conn.execute("SELECT batch_size FROM specql.batch_operation_logs "
                                        "WHERE operation = 'flag_member_notes'").fetchall()}
    assert sizes == {1000}


COUNTER = """
name: counter
schema: lc
fields:
  id: bigint
  label: string
  n: integer
patterns:
  - name: batch_operations
    operation: bump_counters
    operation_type: update
    where_condition: "id = ANY(:ids)"
    update_data: {n: {sql: "n + 1"}}
    audit: true
    hooks: {after: lc.counted}
    batch_size: 10
"""

COUNTED = """
CREATE TABLE lc.seen (batch_number integer, old_rows jsonb, new_rows jsonb, changed_fields text[]);
CREATE OR REPLACE FUNCTION lc.counted(operation_id uuid, batch_number integer, old_rows jsonb, new_rows jsonb,
                                      changed_fields text[])
RETURNS void LANGUAGE sql AS $$ INSERT INTO lc.seen VALUES (batch_number, old_rows, new_rows, changed_fields) $$;
"""


def test_a_row_changed_by_another_transaction_while_the_batch_waits_is_changed_once_and_paired(
        database_url_any, tmp_path):
    """The run waits for row 5, which another transaction holds, and that transaction commits a
    change to it. PostgreSQL 18: RETURNING old gives the version the update replaced. PostgreSQL
    15 (no RETURNING old): the batch read its rows without a lock and updates them by where it
    read them (ctid); the update leaves row 5 out (its version moved) and row 5 is read again,
    locked, and changed. Either way row 5 is changed once, on top of the other change, and its
    audit row and the hook see the version it replaced, paired with the new one."""
    url = database_url_any
    generate_and_apply(url, write_entities(tmp_path / "entities", counter=COUNTER), tmp_path / "out")
    conn = connect(url)
    conn.execute(COUNTED)
    conn.execute("INSERT INTO lc.counter (id, label, n) SELECT g, 'c' || g, 0 FROM generate_series(1, 10) AS g")
    other = connect(url, autocommit=False)
    other.execute("UPDATE lc.counter SET n = 100, label = 'other' WHERE id = 5")  # holds row 5
    box: dict = {}

    def run():
        with connect(url) as c:
            box["pid"] = c.info.backend_pid
            box["result"] = call(c, "lc.bump_counters", ids=list(range(1, 11)))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                           "AND query LIKE '%bump_counters%'").fetchone()[0]:
        assert time.monotonic() < deadline, "the run never waited for row 5"
        time.sleep(0.02)
    other.commit()
    thread.join(30)
    r = box["result"]
    assert (r["status"], r["processed_records"], r["batch_count"]) == ("completed", 10, 1)
    assert conn.execute("SELECT id, label, n FROM lc.counter WHERE id IN (4, 5) ORDER BY id").fetchall() == \
        [(4, "c4", 1), (5, "other", 101)]
    audit = conn.execute("SELECT record_key, old_row, new_row, changed_fields FROM specql.batch_operation_audit "
                         "WHERE operation_id = %s ORDER BY id", (r["operation_id"],)).fetchall()
    assert len(audit) == 10
    row5 = [a for a in audit if a[0] == {"id": 5}]
    assert [(o["n"], o["label"], w["n"], w["label"], f) for _, o, w, f in row5] == [(100, "other", 101, "other", ["n"])]
    (batch, old_rows, new_rows, fields), = conn.execute("SELECT * FROM lc.seen").fetchall()
    assert (batch, fields) == (1, ["n"])
    assert sorted(o["id"] for o in old_rows) == list(range(1, 11))
    assert all(o["id"] == w["id"] and w["n"] == o["n"] + 1 for o, w in zip(old_rows, new_rows))
    assert {o["id"]: o["n"] for o in old_rows}[5] == 100
    other.close()


GIFT = """
name: gift
schema: lg
fields:
  id: bigint
  label: string
  wrapped: boolean
patterns:
  - name: batch_operations
    operation: make_and_wrap
    params: {gifts: jsonb}
    audit: true
    steps:
      - name: add
        operation_type: insert
        data_source: :gifts
        insert_data: {id: ":rec.id", label: ":rec.label", wrapped: "false"}
        output: added
        batch_size: 2
      - name: wrap
        operation_type: update
        where_condition: "id = ANY(:added)"
        update_data: {wrapped: "true"}
"""


def test_an_audited_insert_step_whose_keys_a_later_step_reads_writes_its_audit_rows(database_url_any, tmp_path):
    """audit: true covers every step: the insert step writes its chunk of created keys and, in
    the same statement, one audit row per inserted record (it once wrote the chunk only)."""
    url = database_url_any
    generate_and_apply(url, write_entities(tmp_path / "entities", gift=GIFT), tmp_path / "out")
    conn = connect(url)
    gifts = json.dumps([{"id": i, "label": f"gift {i}"} for i in range(1, 6)])
    r = call(conn, "lg.make_and_wrap", gifts=gifts)
    assert (r["status"], r["processed_records"]) == ("completed", 10)
    assert conn.execute("SELECT count(*) FROM lg.gift WHERE wrapped").fetchone()[0] == 5
    audit = conn.execute("SELECT action, record_key, old_row, new_row, changed_fields FROM "
                         "specql.batch_operation_audit WHERE operation_id = %s ORDER BY id",
                         (r["operation_id"],)).fetchall()
    inserts = [a for a in audit if a[0] == "insert"]
    assert sorted(a[1]["id"] for a in inserts) == [1, 2, 3, 4, 5]
    assert all(a[2] is None and a[3]["label"] == f"gift {a[1]['id']}" and a[3]["wrapped"] is False
               and a[4] == ["id", "label", "wrapped"] for a in inserts)
    updates = [a for a in audit if a[0] == "update"]
    assert sorted(a[1]["id"] for a in updates) == [1, 2, 3, 4, 5]
    assert all(a[4] == ["wrapped"] for a in updates)
