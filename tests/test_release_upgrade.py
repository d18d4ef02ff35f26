"""A production database of the last landed release takes this release's migrations.

tests/fixtures/release_stop17 holds `generated/migrations/` of commit 33852cc, never
regenerated: the runtime and the example routines as a user applied them. On a database
holding them, with rows written and runs made by those routines — among them a
commit_per_batch run whose backend was killed mid-run — this checkout's migrations apply
with `specql migrate` and again with `psql -f` (nothing to do the second time), leave one
signature per routine, keep the old rows, and the new routines resume the old run where it
stopped: the operator who deploys a fix in the middle of a crashed job does not redo it.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

from specql.database import connect
from test_migrate import query, scalar
from test_resume import call_in_thread, interrupt, resume, run_row, wait_for
from test_runtime_upgrade import apply, psql_f

ROOT = Path(__file__).resolve().parent.parent
RELEASE = Path(__file__).resolve().parent / "fixtures" / "release_stop17"
SPECQL = Path(sys.executable).parent / "specql"
PRODUCTS = 1200  # reprice_category in batches of 500: the run dies in its second batch


def _sorted_product_ids(url: str) -> list[str]:
    return [str(i) for (i,) in query(url, "SELECT id FROM public.product WHERE category_id = 3 ORDER BY id")]


def _crashed_reprice(url: str) -> uuid.UUID:
    """A reprice_category run of the old release whose backend is terminated while its second
    batch waits for a row lock: its first batch (500 rows) is committed, the rest is not."""
    blocker = _sorted_product_ids(url)[700]  # in the second batch of the keyset walk
    with connect(url) as hold:
        hold.execute("SELECT 1 FROM public.product WHERE id = %s FOR UPDATE", [blocker])
        thread, box = call_in_thread(url, "CALL public.reprice_category(category_id => 3, new_price => 9.90, "
                                          "result => NULL)")
        wait_for(url, "SELECT true FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'",
                 (box["pid"],))
        interrupt(url, box["pid"], "terminate")
        thread.join(30)
        hold.rollback()
    run = run_row(url, "reprice_category")
    assert (run["status"], run["processed_records"]) == ("running", 500), run
    assert scalar(url, "SELECT count(*) FROM public.product WHERE price = 9.90") == 500
    return run["operation_id"]


def test_a_database_of_the_last_release_takes_this_release(tmp_path, database_url_any):
    url = database_url_any
    apply(RELEASE / "migrations", url)
    with connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO public.product (name, price, category_id) "
                     "SELECT 'p' || i, 1, 3 FROM generate_series(1, %s) i", [PRODUCTS])
        conn.execute("INSERT INTO public.member (id, email, name) SELECT i, 'm' || i || '@x', 'm' "
                     "FROM generate_series(1, 300) i")
        # The user's hook replaces the release's placeholder; the upgrade must keep it.
        conn.execute("CREATE TABLE public.status_seen (new_status text, n integer)")
        conn.execute("CREATE OR REPLACE FUNCTION public.member_status_changed(operation_id uuid, batch_number "
                     "integer, old_rows jsonb, new_rows jsonb, changed_fields text[]) RETURNS void LANGUAGE sql "
                     "AS $$ INSERT INTO public.status_seen SELECT r ->> 'status', 1 "
                     "FROM jsonb_array_elements(new_rows) r $$")
        old = conn.execute("SELECT status, processed_records FROM public.set_member_status("
                           "old_status => 'active', new_status => 'idle')").fetchone()
    assert old == ("completed", 300)
    audit_before = scalar(url, "SELECT count(*) FROM specql.batch_operation_audit")
    assert audit_before == 300
    old_audit_ids = query(url, "SELECT min(id), max(id) FROM specql.batch_operation_audit")[0]
    assert old_audit_ids == (1, 300)
    crashed = _crashed_reprice(url)

    # This release, generated from the examples: with migrate, then every file again with psql.
    out = tmp_path / "generated"
    made = subprocess.run([str(SPECQL), "generate", "entities/", "-o", str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    apply(out, url)
    for path in sorted((out / "migrations").glob("*.sql")):
        again = psql_f(url, path)
        assert again.returncode == 0, f"{path.name}: {again.stderr}"

    overloads = query(url, "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON "
                           "n.oid = p.pronamespace WHERE n.nspname IN ('public', 'audit', 'specql') AND "
                           "(n.nspname, p.proname) IN (SELECT n2.nspname, p2.proname FROM pg_proc p2 JOIN "
                           "pg_namespace n2 ON n2.oid = p2.pronamespace GROUP BY 1, 2 HAVING count(*) > 1)")
    assert overloads == []

    # The crashed run, resumed by this release's routine, finishes only what was left.
    result = resume(url, "public.reprice_category", crashed, category_id=3, new_price=Decimal("9.90"))
    assert (result["status"], result["processed_records"]) == ("completed", PRODUCTS), result
    assert scalar(url, "SELECT count(*) FROM public.product WHERE price = 9.90") == PRODUCTS
    batches = query(url, "SELECT batch_number, records_processed FROM specql.batch_operation_logs "
                         "WHERE operation_id = %s AND status = 'completed' ORDER BY batch_number", [crashed])
    assert [n for _, n in batches] == [500, 500, 200], batches

    # Old rows kept; the new hooked, audited routine writes beside them.
    with connect(url, autocommit=True) as conn:
        new = conn.execute("SELECT status, processed_records FROM public.set_member_status("
                           "old_status => 'idle', new_status => 'active')").fetchone()
    assert new == ("completed", 300)
    assert query(url, "SELECT new_status, sum(n) FROM public.status_seen GROUP BY 1 ORDER BY 1") == [
        ("active", 300), ("idle", 300)]
    assert query(url, "SELECT count(*), count(DISTINCT operation_id) FROM specql.batch_operation_audit") == [(600, 2)]
    # The audit table's btrees (the release's identity primary key and (operation_id,
    # batch_number)) are gone, a BRIN index in their place; the old rows keep their ids and
    # the new ones are numbered after them.
    assert query(url, "SELECT indexname, indexdef LIKE '%USING brin (operation_id uuid_bloom_ops, batch_number)%' "
                      "FROM pg_indexes WHERE schemaname = 'specql' AND tablename = 'batch_operation_audit'") == [
        ("batch_operation_audit_run_idx", True)]
    assert query(url, "SELECT min(id), max(id), count(DISTINCT id) FROM specql.batch_operation_audit "
                      "WHERE operation_id <> (SELECT operation_id FROM specql.batch_operation_audit WHERE id = 1)") == [
        (301, 600, 300)]
    # Without a key it replicates by the whole row: a publication FOR ALL TABLES takes its deletes.
    assert scalar(url, "SELECT relreplident FROM pg_class WHERE oid = 'specql.batch_operation_audit'::regclass") == "f"
    with connect(url, autocommit=True) as conn:
        conn.execute("CREATE PUBLICATION everything FOR ALL TABLES")
        purged = conn.execute("DELETE FROM specql.batch_operation_audit WHERE id <= 300").rowcount
        conn.execute("DROP PUBLICATION everything")
    assert purged == 300
    assert scalar(url, "SELECT count(*) FROM specql.batch_operation_runs") == 3  # two set_member_status runs, one reprice_category run
