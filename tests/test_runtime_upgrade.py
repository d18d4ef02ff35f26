"""The runtime migration brings a database of an earlier specql up to date (issue 9).

The result type and the runtime tables are defined once, in specql/contract.py; the
runtime migration creates them when missing and adds every field and column an older
database lacks.  Proved here against the real previous release (tests/fixtures/
release_0_1_0: `generated/migrations/` of commit ebadc74, never regenerated), against a
contract grown by a field and columns, with `specql migrate` and `psql -f`, twice, on
PostgreSQL 18 and 15.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from specql import contract
from specql.database import connect, throwaway_database
from specql.migrate import migrate
from test_migrate import SCHEMA_SNAPSHOT, find_psql, query, scalar

ROOT = Path(__file__).resolve().parent.parent
RELEASE_0_1_0 = Path(__file__).resolve().parent / "fixtures" / "release_0_1_0"
SPECQL = Path(sys.executable).parent / "specql"

# SPEC §4, as written there: what the contract must keep.
SPEC_RESULT_FIELDS = [("operation_id", "uuid"), ("operation", "text"), ("status", "text"),
                      ("total_records", "bigint"), ("processed_records", "bigint"), ("failed_records", "bigint"),
                      ("error_count", "integer"), ("batch_count", "integer"), ("started_at", "timestamptz"),
                      ("completed_at", "timestamptz")]
SPEC_TABLE_COLUMNS = {
    "batch_operation_logs": {"operation_id", "operation", "batch_number", "records_processed", "started_at",
                             "completed_at", "status"},
    "batch_operation_errors": {"operation_id", "operation", "batch_number", "sqlstate", "error_message",
                               "failed_records", "occurred_at"},
    "batch_performance_metrics": {"operation_id", "operation", "metric_name", "metric_value", "recorded_at"},
    "batch_operation_notifications": set(),
    # §7 and issue 10: liveness, resume, cancel, throttle.
    "batch_operation_runs": {"operation_id", "operation", "status", "heartbeat_at", "backend_pid", "backend_start",
                             "resumed_at", "routine", "transaction_mode", "params", "position", "batch_size",
                             "cancel_requested_at", "waited_ms"},
    "batch_operation_cancellations": {"operation_id", "requested_at"},
    # §8: multi-step operations.
    "batch_operation_steps": {"operation_id", "step_name", "step_number", "status", "total_records",
                              "processed_records", "failed_records", "started_at", "completed_at"},
    "batch_operation_outputs": {"operation_id", "output", "chunk", "keys", "records"},
    # §9: parallel workers (names of their own).
    "batch_operation_chunks": set(),
    "batch_operation_parallel_runs": set(),
    # §10: audit.
    "batch_operation_audit": {"operation_id", "batch_number", "record_key", "action", "old_row", "new_row",
                              "changed_fields", "recorded_at"},
}
SHIPPED_STATUS_COLUMNS = ("operation_id", "operation", "state", "status", "total_records", "processed_records",
                          "failed_records", "error_count", "batch_count", "percent_done", "records_per_second",
                          "eta_seconds", "started_at", "heartbeat_at", "completed_at", "resumed_at",
                          "cancel_requested", "run_by", "backend_pid", "transaction_mode", "batch_size")
RUNTIME_BEFORE_ISSUE_10 = Path(__file__).resolve().parent / "fixtures" / "runtime_before_issue10"
STATUS_VIEW = f"{contract.SCHEMA}.{contract.STATUS_VIEW}"


def execute(url: str, sql: str) -> None:
    with connect(url, autocommit=True) as conn:
        conn.execute(sql)


def apply(folder: Path, url: str, **options) -> list[str]:
    lines: list[str] = []
    code = migrate(folder, url, echo=lines.append, **options)
    assert code == 0, "\n".join(lines)
    return lines


def runtime_folder(root: Path, name: str = "0000_specql_runtime.sql") -> Path:
    """A migrations folder holding the runtime rendered from the contract as it is now."""
    folder = root / "migrations"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(contract.render_runtime())
    return root


def psql_f(url: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(find_psql()), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(path)],
                          capture_output=True, text=True)


def call_status(url: str, call: str) -> str:
    """The status in the INOUT result of a procedure CALL."""
    with connect(url, autocommit=True) as conn:
        result = conn.execute(call).fetchone()[0]  # the composite, as text
        return conn.execute("SELECT (%s::specql.batch_operation_result).status", [result]).fetchone()[0]


def catalog(url: str) -> dict[str, list[tuple[str, str]]]:
    """relation -> [(column, type)] in column order, for the type and the runtime tables."""
    relations = [contract.RESULT_TYPE.qualified] + [t.qualified for t in contract.RUNTIME_TABLES]
    rows = query(url, "SELECT a.attrelid::regclass::text, a.attname, format_type(a.atttypid, a.atttypmod) "
                      "FROM pg_attribute a WHERE a.attrelid IN (SELECT to_regclass(r) FROM unnest(%s::text[]) r) "
                      "AND a.attnum > 0 "
                      "AND NOT a.attisdropped ORDER BY a.attrelid, a.attnum", [relations])
    shape: dict[str, list[tuple[str, str]]] = {}
    for relation, name, type_ in rows:
        shape.setdefault(relation, []).append((name, type_))
    return shape


def view_columns(url: str) -> list[str]:
    return [name for (name,) in query(url, "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
                                           "AND attnum > 0 ORDER BY attnum", [STATUS_VIEW])]


def expected(url: str) -> dict[str, list[tuple[str, str]]]:
    """What catalog() must show for the contract, types spelled as the server prints them."""
    pairs = contract.runtime_columns()
    types = dict(query(url, "SELECT t, t::regtype::text FROM unnest(%s::text[]) AS t",
                       [sorted({c.type for _, c in pairs})]))
    shape: dict[str, list[tuple[str, str]]] = {}
    for relation, column in pairs:
        shape.setdefault(relation, []).append((column.name, types[column.type]))
    return shape


# ------------------------------------------------------------- the contract


def test_contract_keeps_the_names_and_types_of_spec_section_4():
    assert [(f.name, f.type) for f in contract.RESULT_TYPE.fields[:len(SPEC_RESULT_FIELDS)]] == SPEC_RESULT_FIELDS
    assert contract.RESULT_FIELDS == tuple(f.name for f in contract.RESULT_TYPE.fields)
    assert contract.RESULT_TYPE.qualified == "specql.batch_operation_result"
    assert {t.name for t in contract.RUNTIME_TABLES} == set(SPEC_TABLE_COLUMNS)
    for name, columns in SPEC_TABLE_COLUMNS.items():
        assert columns <= {c.name for c in contract.table(name).columns}, name
    assert {"worker", "attempt", "wait_reason", "wait_ms", "batch_size"} <= {
        c.name for c in contract.table("batch_operation_logs").columns}
    assert "cancelled" in contract.RESULT_STATUSES and {"running", "abandoned"} <= set(contract.RUN_STATES)
    with pytest.raises(KeyError):
        contract.table("no_such_table")
    # The status view, as first shipped (issue 10): CREATE OR REPLACE VIEW only takes appended columns.
    assert contract.STATUS_COLUMNS[:len(SHIPPED_STATUS_COLUMNS)] == SHIPPED_STATUS_COLUMNS


def test_runtime_sql_is_rendered_from_the_contract():
    sql = contract.render_runtime()
    for field in contract.RESULT_TYPE.fields:
        assert f"ADD ATTRIBUTE {field.name} {field.type} CASCADE;" in sql
    for table in contract.RUNTIME_TABLES:
        assert f"CREATE TABLE IF NOT EXISTS {table.qualified} (" in sql
        for column in table.columns:
            assert f"ADD COLUMN IF NOT EXISTS {column.definition}" in sql
        for index in table.indexes:
            assert f"CREATE INDEX IF NOT EXISTS {index.name}\n" in sql
        for what in table.retired:  # dropped only if there, and never a column
            kind, name = what.split(" ", 1)
            assert kind in ("INDEX", "CONSTRAINT") and f"{kind} IF EXISTS {name};" in sql
    assert f"CREATE OR REPLACE VIEW {STATUS_VIEW} AS" in sql
    assert "CREATE OR REPLACE FUNCTION specql.cancel_operation(operation_id uuid)" in sql
    # psql -f and specql migrate both apply it: no transaction control of its own.
    statements = [line.strip().upper() for line in sql.splitlines()]
    assert not {"BEGIN;", "COMMIT;", "ROLLBACK;"} & set(statements)


@pytest.mark.parametrize("earlier", ["release_0_1_0", "runtime_before_issue10"])
def test_contract_only_appends_to_an_earlier_runtime(database_url, earlier):
    """Fields and columns are never renamed, retyped or reordered; new NOT NULL ones have a DEFAULT
    (a table new since then may have NOT NULL columns: it is created, not altered)."""
    apply(Path(__file__).resolve().parent / "fixtures" / earlier / "migrations", database_url)
    old, new = catalog(database_url), expected(database_url)
    assert set(old) <= set(new)
    for relation, columns in old.items():
        assert new[relation][:len(columns)] == columns, relation
    by_relation = {}
    for relation, column in contract.runtime_columns():
        by_relation.setdefault(relation, []).append(column)
    for relation, columns in by_relation.items():
        for column in columns[len(old.get(relation, columns)):]:
            assert "NOT NULL" not in column.constraints or "DEFAULT" in column.constraints, (relation, column)


# ------------------------------------------------------------------ applying


def test_fresh_runtime_applies_twice_with_psql_and_with_migrate(tmp_path, server_url, database_url_any):
    root = runtime_folder(tmp_path)
    path = next((root / "migrations").glob("*.sql"))
    apply(root, database_url_any)
    # Re-applied under another name (what a changed runtime is): no error, no change.
    path.rename(path.with_name("0000_specql_runtime.again.sql"))
    before = query(database_url_any, SCHEMA_SNAPSHOT)
    assert apply(root, database_url_any)[-1] == "1 migration(s) applied"
    assert query(database_url_any, SCHEMA_SNAPSHOT) == before
    assert catalog(database_url_any) == expected(database_url_any)

    with throwaway_database(server_url, prefix="specql_psql") as psql_url:
        for _ in range(2):
            result = psql_f(psql_url, path.with_name("0000_specql_runtime.again.sql"))
            assert result.returncode == 0, result.stderr
            assert result.stderr == ""  # no "already exists, skipping" noise
        assert query(psql_url, SCHEMA_SNAPSHOT) == before


def test_upgrade_from_release_0_1_0_keeps_old_routines_working_and_runs_new_ones(tmp_path, database_url_any):
    url = database_url_any
    apply(RELEASE_0_1_0 / "migrations", url)
    # What users build on the runtime: a table of results, a table declared OF the type.
    execute(url, "CREATE TABLE public.kept_results (id serial, result specql.batch_operation_result); "
                 "CREATE TABLE public.typed_results OF specql.batch_operation_result")
    ids = [uuid.uuid4() for _ in range(5)]
    with connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO public.\"user\" (id, status) SELECT unnest(%s::uuid[]), 'active'", [ids])
        conn.execute("INSERT INTO public.kept_results (result) "
                     "SELECT r FROM public.bulk_update_user_status(user_ids => %s, new_status => 'old') r", [ids[:2]])

    # The current runtime over it, with migrate, then again with psql.
    root = runtime_folder(tmp_path / "runtime")
    apply(root, url)
    assert psql_f(url, next((root / "migrations").glob("*.sql"))).returncode == 0
    assert catalog(url) == expected(url)
    typed = [name for (name,) in query(url, "SELECT attname FROM pg_attribute WHERE attnum > 0 AND "
                                            "attrelid = 'public.typed_results'::regclass ORDER BY attnum")]
    assert typed == list(contract.RESULT_FIELDS)
    assert scalar(url, "SELECT (result).processed_records FROM public.kept_results") == 2

    # The routines of the previous release still run on the upgraded runtime...
    with connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT status, processed_records FROM "
                           "public.bulk_update_user_status(user_ids => %s, new_status => 'older')", [ids[2:4]]).fetchone()
        conn.execute("INSERT INTO public.product (name, category_id) SELECT 'p' || i, 3 FROM generate_series(1, 4) i")
    assert row == ("completed", 2)
    assert call_status(url, "CALL public.reprice_category(category_id => 3, new_price => 9.90)") == "completed"
    assert scalar(url, "SELECT count(*) FROM public.product WHERE price = 9.90") == 4

    # ...and so do the routines the current version generates from the examples.
    out = tmp_path / "generated"
    result = subprocess.run([str(SPECQL), "generate", "entities/", "-o", str(out)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    apply(out, url)
    with connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT status, processed_records, batch_count FROM "
                           "public.bulk_update_user_status(user_ids => %s, new_status => 'new')", [ids]).fetchone()
        assert row == ("completed", 5, 1)
        assert conn.execute("SELECT count(*) FROM public.\"user\" WHERE status = 'new'").fetchone()[0] == 5
        assert conn.execute("SELECT count(*) FROM specql.batch_operation_runs").fetchone()[0] == 4
        # Runs of old and new routines alike are in the status view; an ended run cannot be cancelled.
        assert conn.execute(f"SELECT state, count(*) FROM {STATUS_VIEW} GROUP BY 1").fetchall() == [("completed", 4)]
        assert conn.execute("SELECT specql.cancel_operation(operation_id) FROM specql.batch_operation_runs "
                            "LIMIT 1").fetchone() == (False,)
    assert catalog(url) == expected(url)
    assert view_columns(url) == list(contract.STATUS_COLUMNS)


def test_upgrade_from_the_runtime_before_issue_10(tmp_path, database_url_any):
    """Liveness, cancel and throttle columns, the cancellations table, the status view and
    cancel_operation reach a database holding the previous runtime, rows kept."""
    url = database_url_any
    apply(RUNTIME_BEFORE_ISSUE_10 / "migrations", url)
    assert scalar(url, f"SELECT to_regclass('{STATUS_VIEW}')") is None
    stuck, done = uuid.uuid4(), uuid.uuid4()
    with connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO specql.batch_operation_runs (operation_id, operation, status, started_at, "
                     "heartbeat_at, total_records, processed_records) VALUES "
                     "(%s, 'stuck', 'running', now(), now(), 10, 4), (%s, 'done', 'completed', now(), now(), 2, 2)",
                     [stuck, done])
        conn.execute("INSERT INTO specql.batch_operation_logs (operation_id, operation, batch_number, "
                     "records_processed, started_at, completed_at, status) VALUES (%s, 'done', 1, 2, now(), now(), "
                     "'completed')", [done])

    root = runtime_folder(tmp_path, "0001_specql_runtime.current.sql")
    apply(root, url)
    for _ in range(2):  # and again with psql, twice: nothing to add, nothing said
        result = psql_f(url, next((root / "migrations").glob("*.sql")))
        assert result.returncode == 0 and result.stderr == "", result.stderr
    assert catalog(url) == expected(url)
    assert view_columns(url) == list(contract.STATUS_COLUMNS)
    # Old rows: new columns NULL (or their default); a run of a routine that records no backend
    # keeps its status (liveness unknown), an ended one cannot be cancelled.
    assert query(url, "SELECT worker, attempt FROM specql.batch_operation_logs") == [(1, None)]
    assert query(url, f"SELECT operation, state, percent_done, backend_pid FROM {STATUS_VIEW} ORDER BY operation") == [
        ("done", "completed", 100, None), ("stuck", "running", 40, None)]
    assert query(url, "SELECT specql.cancel_operation(%s), specql.cancel_operation(%s)", [stuck, done]) == [
        (True, False)]
    assert scalar(url, f"SELECT cancel_requested FROM {STATUS_VIEW} WHERE operation_id = %s", [stuck]) is True


def test_a_field_and_columns_added_to_the_contract_reach_an_existing_database(tmp_path, monkeypatch,
                                                                              database_url_any):
    url = database_url_any
    apply(runtime_folder(tmp_path / "now"), url)
    # Rows and a routine that exist before the upgrade.
    execute(url, "INSERT INTO specql.batch_operation_runs (operation_id, operation, started_at, heartbeat_at) "
                 "VALUES (gen_random_uuid(), 'before', now(), now())")
    execute(url, "CREATE FUNCTION public.made_before() RETURNS specql.batch_operation_result LANGUAGE plpgsql AS "
                 "$$ DECLARE r specql.batch_operation_result; BEGIN r.status := 'completed'; RETURN r; END $$")
    execute(url, "CREATE PROCEDURE public.called_before(INOUT result specql.batch_operation_result DEFAULT NULL) "
                 "LANGUAGE plpgsql AS $$ BEGIN result.status := 'completed'; END $$")
    assert scalar(url, "SELECT status FROM public.made_before()") == "completed"
    assert call_status(url, "CALL public.called_before()") == "completed"

    grown = dataclasses.replace(contract.RESULT_TYPE, fields=contract.RESULT_TYPE.fields + (
        contract.Column("cancelled_at", "timestamptz"),))
    runs = contract.table("batch_operation_runs")
    tables = tuple(dataclasses.replace(t, columns=t.columns + (
        contract.Column("cancel_requested", "boolean", "NOT NULL DEFAULT false"),
        contract.Column("worker", "text"))) if t is runs else t for t in contract.RUNTIME_TABLES)
    monkeypatch.setattr(contract, "RESULT_TYPE", grown)
    monkeypatch.setattr(contract, "RUNTIME_TABLES", tables)

    # A pooled session that ran the routine before the upgrade and runs it again after.
    pooled = connect(url, autocommit=True)
    assert pooled.execute("SELECT status FROM public.made_before()").fetchone() == ("completed",)

    later = runtime_folder(tmp_path / "later", "0000_specql_runtime.later.sql")
    apply(later, url)
    with pooled:
        assert pooled.execute("SELECT status, cancelled_at FROM public.made_before()").fetchone() == ("completed", None)
    assert catalog(url) == expected(url)
    assert catalog(url)["specql.batch_operation_result"][-1] == ("cancelled_at", "timestamp with time zone")
    assert query(url, "SELECT operation, cancel_requested, worker FROM specql.batch_operation_runs") == [
        ("before", False, None)]
    # Routines compiled against the old shape still return the type, new field NULL.
    assert query(url, "SELECT status, cancelled_at FROM public.made_before()") == [("completed", None)]
    assert call_status(url, "CALL public.called_before()") == "completed"
    # And the grown runtime is as re-appliable as the first.
    result = psql_f(url, next((later / "migrations").glob("*.sql")))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert catalog(url) == expected(url)


def test_a_runtime_object_of_another_shape_stops_the_migration(tmp_path, database_url_any):
    url = database_url_any
    execute(url, "CREATE SCHEMA specql; CREATE TABLE specql.batch_operation_runs (operation_id uuid PRIMARY KEY, "
                 "total_records text)")
    root = runtime_folder(tmp_path)
    lines: list[str] = []

    assert migrate(root, url, echo=lines.append) == 1
    assert any("the specql runtime in this database does not match this version: "
               "specql.batch_operation_runs.total_records is text, expected bigint" in line for line in lines), lines
    assert scalar(url, "SELECT to_regclass('specql.batch_operation_logs')") is None  # all rolled back


def test_generate_writes_the_runtime_rendered_from_the_contract():
    from specql.render import render_runtime

    assert render_runtime() == contract.render_runtime(), (
        "specql/render.py render_runtime() must render sql/runtime.sql.j2 with contract=specql.contract "
        "(until then the template's transitional branch writes the previous runtime)")
