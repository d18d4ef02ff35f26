"""The generated tests catch real bugs: each fault below is injected into the generated SQL
of the example entities (and of NOTE, an insert whose fields declare defaults, LEDGER,
an update that retries lock waits, and SESSION, a delete over a uuid key, which no example
has), one at a time, and the generated tests must fail."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from specql.generate import generate
from specql.testgen import generate_tests

ROOT = Path(__file__).resolve().parent.parent

# name -> (migration file part, generated test module, regex, replacement)
FAULTS = {
    "processed count off by one": (
        "public.user", "test_public_bulk_update_user_status",
        r"_batch_processed := _n;", "_batch_processed := _n + 1;"),
    "continue_on_error stops at the first error": (
        "public.user", "test_public_bulk_update_user_status",
        r"(_batch_failed := cardinality\(_keys\);)", r"\1 _stop := 'failed';"),
    "batch size not respected": (
        "public.user", "test_public_bulk_update_user_status",
        r"_to := least\(_from \+ _batch_size - 1,", "_to := least(_from + _batch_size + 49,"),
    "a record skipped per batch": (
        "public.user", "test_public_bulk_update_user_status",
        r"_from := _to \+ 1;", "_from := _to + 2;"),
    "timeout never checked": (
        "public.user", "test_public_bulk_update_user_status",
        r"IF _result\.batch_count > 0 AND clock_timestamp\(\)", "IF false AND clock_timestamp()"),
    # the timeout checked before the driver looks for a next batch: a timeout that passes in
    # the last batch stops the run timed_out with nothing left (it must complete)
    "timeout checked before the next batch is found": (
        "public.user", "test_public_bulk_update_user_status",
        r"\n(\s+)(-- Select the next batch\.\n\s+EXIT WHEN _from > _last_index;)",
        "\n\\1IF _result.batch_count > 0 AND clock_timestamp() - _run_started >= interval '30 minutes' THEN "
        "_stop := 'timed_out'; EXIT; END IF;\n\\1\\2"),
    "WHERE clause dropped from the batch UPDATE": (
        "public.user", "test_public_bulk_update_user_status",
        r"\n\s*WHERE id = ANY\(_keys\);", ";"),
    "condition dropped from a delete": (
        "audit.audit_log", "test_audit_purge_audit_log",
        r"occurred_at < purge_audit_log\.cutoff", "true"),
    "key range batch not topped up": (
        "audit.audit_log", "test_audit_purge_audit_log",
        r"IF _n < _batch_size THEN", "IF false THEN"),
    "key range wider than a batch": (
        "audit.audit_log", "test_audit_purge_audit_log",
        r"ELSE _last \+ _batch_size END;", "ELSE _last + _batch_size * 3 / 2 END;"),
    "transaction single without rollback (errors swallowed per batch)": (
        "audit.audit_log", "test_audit_purge_audit_log",
        r"(DELETE FROM audit\.audit_log\s+WHERE [^;]*;)", r"BEGIN \1 EXCEPTION WHEN OTHERS THEN NULL; END;"),
    "max_records not enforced": (
        "public.order", "test_public_bulk_approve_orders",
        r"IF _n > 1000 THEN", "IF false THEN"),
    "confirmation ignored": (
        "public.order", "test_public_bulk_approve_orders",
        r"IF confirm IS NOT TRUE THEN", "IF false THEN"),
    "collect_errors does not retry the good records": (
        "public.product.", "test_public_import_products",
        r"FOR _i IN _batch_from\.\._batch_to LOOP", "FOR _i IN _batch_from.._batch_from - 1 LOOP"),
    # collect_errors stops its record-by-record pass at the first error past max_errors (100):
    # the rest of that batch is neither applied nor logged, and a resume starts after the batch
    "collect_errors leaves a batch at max_errors": (
        "public.product_cache", "test_public_upsert_product_cache",
        r"(_batch_failed := _batch_failed \+ 1;)", r"\1 EXIT WHEN _result.error_count > 100;"),
    "failed records miscounted": (
        "public.product.", "test_public_reprice_category",
        r"_batch_failed := cardinality\(_keys\);", "_batch_failed := 1;"),
    "upsert never updates": (
        "public.product_cache", "test_public_upsert_product_cache",
        r"DO UPDATE SET name = CASE[^;]*;", "DO NOTHING;"),
    "upsert overwrites the fields a record leaves out": (
        "public.product_cache", "test_public_upsert_product_cache",
        r"CASE WHEN _shape\[(\d)\] THEN (EXCLUDED\.\w+) ELSE product_cache\.\w+ END", r"\2"),
    "insert ignores the declared default of a field a record leaves out": (
        "public.note", "test_public_import_notes",
        r"ELSE 'new' END", "ELSE NULL END"),
    "completion notification not sent": (
        "public.product_cache", "test_public_upsert_product_cache",
        r"PERFORM pg_notify\(", "PERFORM concat("),
    "cancel ignored": (
        "public.user", "test_public_bulk_update_user_status",
        r"IF EXISTS \(SELECT 1 FROM specql\.batch_operation_cancellations WHERE",
        "IF false AND EXISTS (SELECT 1 FROM specql.batch_operation_cancellations WHERE"),
    # the position committed with a batch is its first key, not its last: a resume redoes it
    "resume redoes a batch": (
        "public.product.", "test_public_reprice_category",
        r"ELSE jsonb_build_object\('last', _last\) END", "ELSE jsonb_build_object('last', _keys[1]) END"),
    # a resume starts one batch past the saved position
    "resume skips a batch": (
        "public.product.", "test_public_reprice_category",
        r"_last := \(_run\.position ->> 'last'\)::uuid;",
        "_last := (SELECT max(s.id) FROM (SELECT p.id FROM public.product AS p "
        "WHERE p.id > (_run.position ->> 'last')::uuid AND p.category_id = reprice_category.category_id "
        "ORDER BY p.id LIMIT _batch_size) AS s);"),
    "retry never retries": (
        "public.ledger_entry", "test_public_settle_ledger_entries",
        r"IF _attempt <= \d+ THEN", "IF _attempt <= 0 THEN"),
    # issue 14 (entities/member.yaml): the after hook is never called
    "hook not called": (
        "public.member", "test_public_set_member_status",
        r"PERFORM public\.member_status_changed\(", "PERFORM concat("),
    # an audit row missing: the first changed record of each batch is not audited
    "audit row missing": (
        "public.member", "test_public_set_member_status",
        r"(\s+clock_timestamp\(\)\n\s+FROM _changed)", r"\1 OFFSET 1"),
    # the soft-delete filter of an ordinary update dropped: it touches soft-deleted rows
    "soft-deleted row touched": (
        "public.member", "test_public_set_member_status",
        r"\(status = set_member_status\.old_status\) AND deleted_at IS NULL", "(status = set_member_status.old_status)"),
    # issue 15, the heap walk (SESSION: a delete over a uuid key, walked in physical order): each
    # batch's ctid range ends before its last listed row, which the walk has passed: never deleted
    "heap walk skips the last row of each batch": (
        "public.session", "test_public_purge_sessions",
        r"ctid <= _tids\[cardinality\(_tids\)\]", "ctid < _tids[cardinality(_tids)]"),
    # a listing takes more rows than a batch holds
    "heap walk batch wider than batch_size": (
        "public.session", "test_public_purge_sessions",
        r"LIMIT _batch_size - cardinality\(_tids\)", "LIMIT _batch_size + 5 - cardinality(_tids)"),
    # ignore_conflicts: a record skipped by a unique conflict counted as processed
    "a conflict counted as processed": (
        "public.member", "test_public_create_members",
        r"ON CONFLICT DO NOTHING;\n(\s+)GET DIAGNOSTICS _n = ROW_COUNT;", r"ON CONFLICT DO NOTHING;\n\1_n := _to - _from + 1;"),
    # CSV import (issue 12): a rejected line without its error row, a line number off by one,
    # a batch one staged row wider than batch_size
    "csv: rejected lines not logged": (
        "public.product.", "test_public_import_products_csv",
        r"IF _n < _csv_records THEN", "IF false THEN"),
    "csv: rejected line numbered one too far": (
        "public.product.", "test_public_import_products_csv",
        r"coalesce\(_s\._line, _s\._record - _csv_line_base\) AS _line", "_s._line + 1 AS _line"),
    "csv: a batch wider than batch_size": (
        "public.product.", "test_public_import_products_csv",
        r"_csv_to := least\(_csv_to \+ _batch_size, _csv_last\);", "_csv_to := least(_csv_to + _batch_size + 1, _csv_last);"),
    # a load with gaps in its _record numbers (psql's identity) lists each batch from the
    # primary key: one that starts at the previous batch's last row imports that row twice
    # (the routine's listing, at its indent: only the generated test that stages a load with
    # gaps takes this path; the parallel worker's own listing is left alone)
    "csv: a batch of a load with gaps starts at the last batch's last row": (
        "public.product.", "test_public_import_products_csv",
        r"(\n {18}WHERE _s\._staging_id = import_products_csv\.staging_id AND _s\._record )> _csv_to AND",
        r"\1>= _csv_to AND"),
    # parallel workers (issue 13): a claim that waits for the chunk another worker holds; a
    # claim that takes no lock (two workers apply one chunk); a chunk marked done and committed
    # when claimed, before its batches (a worker that dies in it loses it)
    "parallel: a claim without SKIP LOCKED": (
        "public.product.", "test_public_import_products",
        r"FOR UPDATE SKIP LOCKED;", "FOR UPDATE;"),
    "parallel: a chunk claimed without a lock": (
        "public.product.", "test_public_import_products",
        r"\n\s*FOR UPDATE SKIP LOCKED;", ";"),
    "parallel: a chunk marked done when claimed": (
        "public.product.", "test_public_import_products_csv",
        r"(_chunk_claimed_at := clock_timestamp\(\);)",
        r"\1 UPDATE specql.batch_operation_chunks SET status = 'done' WHERE id = _chunk.id; COMMIT;"),
}


NOTE = """
name: note
fields:
  id: uuid
  body: string
  status: {type: string, default: "new"}
  pinned: {type: boolean, default: false}
patterns:
  - name: batch_operations
    operation: import_notes
    operation_type: insert
    insert_data: {body: ":rec.body", status: ":rec.status", pinned: ":rec.pinned"}
    data_source: ":rows"
    batch_size: 40
"""


# No example declares retry: a per_batch settlement that waits briefly for locks and retries.
LEDGER = """
name: ledger_entry
fields:
  id: integer
  amount: numeric
  settled: boolean
patterns:
  - name: batch_operations
    operation: settle_ledger_entries
    operation_type: update
    update_data: {settled: true}
    where_condition: "amount < :threshold AND NOT settled"
    batch_size: 40
    progress_tracking: true
    lock_timeout: "300 milliseconds"
    retry: {attempts: 2, backoff: "100 milliseconds"}
"""


# No example deletes by a condition over a uuid key (the heap walk, issue 15).
SESSION = """
name: session
fields:
  id: uuid
  expires_at: timestamp
  user_name: string
patterns:
  - name: batch_operations
    operation: purge_sessions
    operation_type: delete
    where_condition: "expires_at < :cutoff"
    batch_size: 40
    progress_tracking: true
"""


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("generated")
    extra = tmp_path_factory.mktemp("extra_entities")
    (extra / "note.yaml").write_text(NOTE)
    (extra / "ledger_entry.yaml").write_text(LEDGER)
    (extra / "session.yaml").write_text(SESSION)
    sources = [str(ROOT / "entities"), str(extra)]
    generate(sources, out)
    generate_tests(sources, out)
    return out


def run_generated_tests(out: Path, migrations: Path, module: str, server: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SPECQL_DATABASE_URL=server, SPECQL_MIGRATIONS=str(migrations))
    env.pop("SPECQL_TEMPLATE_DATABASE", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(out / "tests" / f"{module}.py"), "-q", "-p", "no:cacheprovider",
         "--rootdir", str(out)],
        cwd=out, env=env, capture_output=True, text=True, timeout=600)


def with_fault(out: Path, tmp_path: Path, part: str, pattern: str, replacement: str) -> Path:
    faulty = tmp_path / "migrations"
    shutil.copytree(out / "migrations", faulty)
    [target] = [p for p in faulty.glob("*.sql") if part in p.name]
    sql = target.read_text()
    mutated, count = re.subn(pattern, replacement, sql)
    assert count >= 1, f"the fault's pattern no longer matches {target.name}: update FAULTS"
    target.write_text(mutated)
    return faulty


def test_the_unchanged_sql_passes_its_generated_tests(generated, pg_server_url):
    modules = sorted({module for _, module, _, _ in FAULTS.values()})
    for module in modules:
        proc = run_generated_tests(generated, generated / "migrations", module, pg_server_url)
        assert proc.returncode == 0, f"{module}:\n{proc.stdout[-3000:]}"


@pytest.mark.parametrize("fault", list(FAULTS))
def test_the_generated_tests_catch_the_fault(fault, generated, pg_server_url, tmp_path):
    part, module, pattern, replacement = FAULTS[fault]
    faulty = with_fault(generated, tmp_path, part, pattern, replacement)
    proc = run_generated_tests(generated, faulty, module, pg_server_url)
    assert proc.returncode == 1, f"fault not caught: {fault}\n{proc.stdout[-3000:]}"
    caught_by = re.findall(r"^FAILED \S+::(\w+)", proc.stdout, flags=re.M)
    assert caught_by, proc.stdout[-3000:]
    print(f"{fault}: caught by {', '.join(sorted(set(caught_by)))}")
