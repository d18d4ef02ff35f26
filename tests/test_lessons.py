"""Issue 14, the lessons of the ORM bulk tools (SPEC §10), end to end on PostgreSQL 18 and 15:
seed 002's soft-delete flow on the example entity (create 5,000, soft delete 2,000 in batches of
500, statistics, restore 1,000, purge), seed 003's skipped conflicts, and seed 000's lesson
through a hook: an after hook that calls another generated routine, which batches by the
caller's batch_size argument (the transaction-local specql.batch_size). About 10 s a server."""

from __future__ import annotations

import json
import shutil
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
