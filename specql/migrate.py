"""``specql migrate``: apply generated migration files to a database (SPEC §6).

Each ``*.sql`` file in the migrations folder is applied once, in name order, inside its
own transaction, and recorded in ``specql.schema_migrations`` together with its sha256.
A session-level advisory lock serialises concurrent runs (two CI jobs, two app
replicas starting at once) and the ledger is read only after the lock is held, so
every file is applied exactly once.

Generated file names embed a content hash, so a changed entity produces a *new* file;
an applied file whose content changed under the *same* name means someone edited
history, and the run is refused before anything is applied.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pglast
import psycopg
from pglast.parser import ParseError

from .database import DatabaseError, connect

__all__ = ["ADVISORY_LOCK_KEY", "DEFAULT_DIRECTORY", "LEDGER_TABLE", "Migration",
           "find_migrations_dir", "load_migrations", "migrate"]

DEFAULT_DIRECTORY = "generated"
LEDGER_TABLE = "specql.schema_migrations"

# A fixed bigint every specql process agrees on without coordination: the first eight
# bytes of sha256("specql.migrate"), signed because pg_advisory_lock takes a bigint.
ADVISORY_LOCK_KEY = int.from_bytes(hashlib.sha256(b"specql.migrate").digest()[:8], "big", signed=True)

# IF NOT EXISTS on both: the generated runtime migration creates schema specql too,
# and whichever runs first must not break the other.
_CREATE_LEDGER = """
CREATE SCHEMA IF NOT EXISTS specql;
CREATE TABLE IF NOT EXISTS specql.schema_migrations (
    name        text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    duration_ms numeric NOT NULL,
    applied_by  text NOT NULL DEFAULT current_user
);
"""

Echo = Callable[[str], object]


class MigrationError(Exception):
    """A problem reported to the user as one line (missing folder, unreadable file)."""


@dataclass(frozen=True)
class Migration:
    name: str
    path: Path
    sql: str
    checksum: str


@dataclass(frozen=True)
class _Applied:
    checksum: str
    applied_at: object
    duration_ms: object


class _FileFailed(Exception):
    def __init__(self, line: int | None, error: psycopg.Error):
        super().__init__(str(error))
        self.line = line
        self.error = error


# ----------------------------------------------------------------------- files


def find_migrations_dir(directory: str | Path | None) -> Path:
    """The migrations folder for DIR: ``DIR/migrations`` or DIR itself."""
    base = Path(directory if directory is not None else DEFAULT_DIRECTORY)
    if (base / "migrations").is_dir():
        return base / "migrations"
    if base.is_dir():
        if base.name == "migrations" or any(base.glob("*.sql")):
            return base
        raise MigrationError(f"no migrations in {base} (expected {base / 'migrations'}/*.sql)")
    raise MigrationError(f"{base}: no such directory")


def load_migrations(folder: Path) -> list[Migration]:
    migrations = []
    for path in sorted(folder.glob("*.sql"), key=lambda p: p.name):
        if not path.is_file():
            continue
        data = path.read_bytes()
        try:
            # utf-8-sig: an editor-added BOM would otherwise be a syntax error.
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise MigrationError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        migrations.append(Migration(path.name, path, text, hashlib.sha256(data).hexdigest()))
    return migrations


# ---------------------------------------------------------------------- ledger


def _read_ledger(conn: psycopg.Connection) -> dict[str, _Applied]:
    # --status and --dry-run must not create anything, so a missing ledger is empty.
    if conn.execute("SELECT to_regclass(%s)", [LEDGER_TABLE]).fetchone()[0] is None:
        return {}
    rows = conn.execute(f"SELECT name, checksum, applied_at, duration_ms FROM {LEDGER_TABLE} ORDER BY name")
    return {name: _Applied(checksum, at, ms) for name, checksum, at, ms in rows}


def _changed(migrations: list[Migration], ledger: dict[str, _Applied]) -> list[Migration]:
    return [m for m in migrations if m.name in ledger and ledger[m.name].checksum != m.checksum]


def _report_changed(changed: list[Migration], ledger: dict[str, _Applied], echo: Echo) -> None:
    for m in changed:
        echo(f"error: {m.path} changed after it was applied "
             f"(ledger sha256 {ledger[m.name].checksum[:12]}…, file sha256 {m.checksum[:12]}…)")
    echo("refusing to migrate: applied migrations must not be edited; nothing was applied")


# ------------------------------------------------------------------- execution


def _split(sql: str) -> list[tuple[int, str]] | None:
    """(offset, text) of each statement, or None when pglast cannot parse the file.

    Statements run one at a time (still in one transaction) only so that an error can
    be pinned to its statement: many errors ("relation already exists") carry no
    position.  Unparseable files run whole; the server then reports the syntax error
    with a position of its own.
    """
    try:
        slices = pglast.split(sql, only_slices=True)
    except (ParseError, ValueError):
        return None
    return [(s.start, sql[s]) for s in slices]


def _line_at(text: str, index: int) -> int:
    return text.count("\n", 0, max(index, 0)) + 1


_DO_BODY = re.compile(r"\s*DO\s+(?:LANGUAGE\s+\w+\s+)?\$\w*\$", re.IGNORECASE)
_DO_LINE = re.compile(r"inline_code_block line (\d+)")


def _error_line(sql: str, offset: int, statement: str | None, error: psycopg.Error) -> int | None:
    """Line in the file that *error* (raised by *statement* at *offset*) points at."""
    diag = error.diag
    if diag.statement_position:
        # 1-based and counted in characters, like Python string indices.
        return _line_at(sql, offset + int(diag.statement_position) - 1)
    if statement is None:
        return None
    # Errors raised while a DO block runs only say "inline_code_block line N", counted
    # from the line holding the opening dollar quote.
    match = _DO_LINE.search(diag.context or "")
    body = _DO_BODY.match(statement)
    if match and body:
        return _line_at(sql, offset + body.end()) + int(match.group(1)) - 1
    return _line_at(sql, offset)


def _execute_file(conn: psycopg.Connection, migration: Migration) -> None:
    sql = migration.sql
    statements = _split(sql)
    if statements is None:
        try:
            # No parameters: psycopg sends a simple query, which may hold many statements.
            conn.execute(sql)
        except psycopg.Error as e:
            raise _FileFailed(_error_line(sql, 0, None, e), e) from None
        return
    for offset, statement in statements:
        try:
            conn.execute(statement)
        except psycopg.Error as e:
            raise _FileFailed(_error_line(sql, offset, statement, e), e) from None


def _apply_one(conn: psycopg.Connection, migration: Migration) -> float:
    start = time.perf_counter()
    with conn.transaction():
        _execute_file(conn, migration)
        elapsed_ms = (time.perf_counter() - start) * 1000
        conn.execute(
            f"INSERT INTO {LEDGER_TABLE} (name, checksum, duration_ms) VALUES (%s, %s, %s)",
            [migration.name, migration.checksum, round(elapsed_ms, 3)],
        )
    # A file's SET (search_path, role settings...) must not leak into the next file:
    # each should behave as it would when run alone with psql -f.
    conn.execute("RESET ALL")
    return elapsed_ms


def _report_failure(migration: Migration, failure: _FileFailed, echo: Echo) -> None:
    diag = failure.error.diag
    message = diag.message_primary or " ".join(str(failure.error).split())
    where = f"{migration.path}:{failure.line}" if failure.line else f"{migration.path}"
    echo(f"{where}: error: {message}")
    if diag.message_detail:
        echo(f"  DETAIL: {diag.message_detail}")
    if diag.message_hint:
        echo(f"  HINT: {diag.message_hint}")


# ---------------------------------------------------------------------- modes


def _run(conn: psycopg.Connection, migrations: list[Migration], echo: Echo) -> int:
    if not conn.execute("SELECT pg_try_advisory_lock(%s)", [ADVISORY_LOCK_KEY]).fetchone()[0]:
        echo("waiting for another specql migrate to finish...")
        conn.execute("SELECT pg_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
    # The lock is session-level and dies with the connection, which the caller closes
    # on every path; no explicit unlock that could itself fail on a broken connection.
    with conn.transaction():
        conn.execute(_CREATE_LEDGER)
    # Only now, under the lock, is the ledger final: a run we waited for may have
    # applied everything we saw as pending.
    ledger = _read_ledger(conn)

    changed = _changed(migrations, ledger)
    if changed:
        _report_changed(changed, ledger, echo)
        return 1

    pending = [m for m in migrations if m.name not in ledger]
    for m in migrations:
        if m.name in ledger:
            echo(f"skip {m.name} (already applied)")
    for done, m in enumerate(pending):
        try:
            elapsed_ms = _apply_one(conn, m)
        except _FileFailed as failure:
            _report_failure(m, failure, echo)
            echo(f"rolled back {m.name}; {done} migration(s) applied before it, "
                 f"{len(pending) - done - 1} not attempted")
            return 1
        echo(f"applied {m.name} ({elapsed_ms:.0f} ms)")
    echo(f"{len(pending)} migration(s) applied" if pending else "nothing to apply")
    return 0


def _dry_run(conn: psycopg.Connection, migrations: list[Migration], echo: Echo) -> int:
    ledger = _read_ledger(conn)
    changed = _changed(migrations, ledger)
    if changed:
        _report_changed(changed, ledger, echo)
        return 1
    pending = [m for m in migrations if m.name not in ledger]
    for m in migrations:
        echo(f"would apply {m.name}" if m.name not in ledger else f"skip {m.name} (already applied)")
    echo(f"dry run: {len(pending)} migration(s) would be applied" if pending else "nothing to apply")
    return 0


def _status(conn: psycopg.Connection, migrations: list[Migration], echo: Echo) -> int:
    ledger = _read_ledger(conn)
    on_disk = {m.name: m for m in migrations}
    counts = {"applied": 0, "pending": 0, "changed": 0}
    for name in sorted(on_disk.keys() | ledger.keys()):
        applied, migration = ledger.get(name), on_disk.get(name)
        if applied is None:
            counts["pending"] += 1
            echo(f"{'pending':<19}  {name}")
        elif migration is None:
            # Normal after an entity changed: the generator wrote a new file name.
            counts["applied"] += 1
            echo(f"{'applied (file gone)':<19}  {name}")
        elif applied.checksum != migration.checksum:
            counts["changed"] += 1
            echo(f"{'changed':<19}  {name}  (edited after it was applied)")
        else:
            counts["applied"] += 1
            at = applied.applied_at.isoformat(sep=" ", timespec="seconds")
            echo(f"{'applied':<19}  {name}  ({at}, {float(applied.duration_ms):.0f} ms)")
    echo(", ".join(f"{n} {label}" for label, n in counts.items()))
    return 0


def migrate(directory: str | Path | None, url: str | None, *, status: bool = False, dry_run: bool = False,
            echo: Echo = print) -> int:
    """Apply (or with *status* / *dry_run* only describe) the migrations in *directory*.

    Returns the exit code: 0 on success, 1 when refused or failed.  Everything,
    failures included, is reported as lines through *echo*; no exception escapes for
    problems a user can cause.
    """
    if not url:
        echo("error: no database: pass --database-url or set SPECQL_DATABASE_URL")
        return 1
    try:
        migrations = load_migrations(find_migrations_dir(directory))
        # prepare_threshold=None: identical statements repeated across files must not
        # become server-side prepared statements (DDL cannot be prepared).
        with connect(url, autocommit=True, prepare_threshold=None) as conn:
            if status:
                return _status(conn, migrations, echo)
            if dry_run:
                return _dry_run(conn, migrations, echo)
            return _run(conn, migrations, echo)
    except (MigrationError, DatabaseError) as e:
        echo(f"error: {e}")
    except psycopg.Error as e:
        # Lost connection, no permission to create the ledger, ...
        echo(f"error: {' '.join(str(e).split())}")
    return 1
