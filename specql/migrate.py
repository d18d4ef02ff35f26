"""``specql migrate``: apply generated migration files to a database (SPEC §6).

Each ``*.sql`` file in the migrations folder is applied once, in name order, inside its
own transaction, and recorded in ``specql.schema_migrations`` together with its sha256.
A session-level advisory lock serialises concurrent runs (two CI jobs, two app
replicas starting at once) and the ledger is read only after the lock is held, so
every file is applied exactly once.

Generated file names embed a content hash, so a changed entity produces a *new* file;
an applied file whose content changed under the *same* name means someone edited
history, and the run is refused before anything is applied.

Waiting is bounded (``lock_wait``): for the advisory lock, and for the table locks a
file's DDL needs, which it takes under a short ``lock_timeout`` and retries with
backoff, so it never queues for long in front of the readers of a busy table (see
lockwait.py).  SIGTERM is handled like Ctrl-C: the current file rolls back, the
connection closes, and the exit status says so (143; 130 for Ctrl-C).
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from .database import DatabaseError, connect
from .sqlfile import FileFailed, execute_file
from .lockwait import (APPLICATION_NAME, BlockerWatch, Terminated, check_client_connection, sigterm_as_interrupt,
                       take_advisory_lock)

__all__ = ["ADVISORY_LOCK_KEY", "DEFAULT_DIRECTORY", "DEFAULT_LOCK_TIMEOUT", "DEFAULT_LOCK_WAIT", "LEDGER_TABLE",
           "Migration", "find_migrations_dir", "load_migrations", "migrate"]

DEFAULT_DIRECTORY = "generated"
LEDGER_TABLE = "specql.schema_migrations"

# Seconds.  LOCK_WAIT bounds every wait for a lock (the migrate lock, or all attempts
# of one file); LOCK_TIMEOUT is one attempt of a file's DDL: readers of a table queue
# behind a waiting ALTER TABLE, so no attempt may keep them queued for long.
DEFAULT_LOCK_WAIT = 60.0
DEFAULT_LOCK_TIMEOUT = 3.0

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


@dataclass
class _Progress:
    """Where a run is, for the message when a signal interrupts it."""

    pending: int | None = None  # None: the ledger was not read yet
    done: int = 0
    current: str | None = None  # the file being applied


@dataclass(frozen=True)
class _Waits:
    url: str
    lock_wait: float
    lock_timeout: float


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


# ------------------------------------------------------------------- applying


def _apply_once(conn: psycopg.Connection, migration: Migration, waits: _Waits, remaining: float) -> float:
    start = time.perf_counter()
    timeout = min(waits.lock_timeout, max(remaining, 0.001))
    # Sampled often enough to see a blocker before this attempt's lock_timeout ends.
    every = max(0.05, min(1.0, timeout / 3))
    watch = BlockerWatch(waits.url, conn.info.backend_pid, delay=min(0.5, every), interval=every)
    with conn.transaction(), watch:
        conn.execute("SELECT set_config('lock_timeout', %s, true)", [f"{max(1, int(timeout * 1000))}ms"])
        try:
            execute_file(conn, migration.sql)
        except FileFailed as failure:
            failure.blockers = watch.blockers
            raise
        elapsed_ms = (time.perf_counter() - start) * 1000
        conn.execute(
            f"INSERT INTO {LEDGER_TABLE} (name, checksum, duration_ms) VALUES (%s, %s, %s)",
            [migration.name, migration.checksum, round(elapsed_ms, 3)],
        )
    _reset(conn)
    return elapsed_ms


def _reset(conn: psycopg.Connection) -> None:
    # A file's SET (search_path, role settings...) must not leak into the next file:
    # each should behave as it would when run alone with psql -f.
    conn.execute("RESET ALL")
    check_client_connection(conn)  # which RESET ALL just turned off


def _apply_one(conn: psycopg.Connection, migration: Migration, waits: _Waits, echo: Echo) -> float:
    """Apply *migration*, retrying with backoff while its DDL cannot get a lock in time."""
    started = time.monotonic()
    seen: list[str] = []  # the last blockers any attempt saw: a short last attempt may see none
    for attempt in range(1, 1000):
        try:
            return _apply_once(conn, migration, waits, waits.lock_wait - (time.monotonic() - started))
        except FileFailed as failure:
            seen = failure.blockers = failure.blockers or seen
            waited = time.monotonic() - started
            # Doubling, jittered so that two waiting runs do not retry in step.
            pause = min(0.25 * 2 ** attempt, 5.0) * random.uniform(0.75, 1.25)
            if not failure.lock_timeout or waited + pause >= waits.lock_wait:
                if failure.lock_timeout:
                    failure.gave_up_after = waited
                raise
            _reset(conn)
            holder = "; ".join(failure.blockers) or "another session"
            echo(f"{migration.name}: waiting for a lock held by {holder}: rolled back, "
                 f"attempt {attempt + 1} in {pause:.1f} s")
            time.sleep(pause)
    raise AssertionError("unreachable")


def _report_failure(migration: Migration, failure: FileFailed, echo: Echo) -> None:
    diag = failure.error.diag
    message = diag.message_primary or " ".join(str(failure.error).split())
    where = f"{migration.path}:{failure.line}" if failure.line else f"{migration.path}"
    if failure.gave_up_after is not None:
        holder = "; ".join(failure.blockers) or "another session"
        message = f"gave up after {failure.gave_up_after:.0f} s waiting for a lock held by {holder} ({message})"
    echo(f"{where}: error: {message}")
    if diag.message_detail:
        echo(f"  DETAIL: {diag.message_detail}")
    if diag.message_hint:
        echo(f"  HINT: {diag.message_hint}")


# ---------------------------------------------------------------------- modes


def _run(conn: psycopg.Connection, migrations: list[Migration], waits: _Waits, echo: Echo,
         progress: _Progress) -> int:
    if not take_advisory_lock(conn, ADVISORY_LOCK_KEY, waits.lock_wait, echo):
        return 1
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
    progress.pending = len(pending)
    for done, m in enumerate(pending):
        progress.done, progress.current = done, m.name
        try:
            elapsed_ms = _apply_one(conn, m, waits, echo)
        except FileFailed as failure:
            _report_failure(m, failure, echo)
            echo(f"rolled back {m.name}; {done} migration(s) applied before it, "
                 f"{len(pending) - done - 1} not attempted")
            return 1
        echo(f"applied {m.name} ({elapsed_ms:.0f} ms)")
    progress.done, progress.current = len(pending), None
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
            lock_wait: float = DEFAULT_LOCK_WAIT, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
            echo: Echo = print) -> int:
    """Apply (or with *status* / *dry_run* only describe) the migrations in *directory*.

    Returns the exit code: 0 on success, 1 when refused or failed (a lock not obtained
    within *lock_wait* seconds included), 130 / 143 when interrupted by SIGINT / SIGTERM.
    Everything, failures included, is reported as lines through *echo*; no exception
    escapes for problems a user can cause.
    """
    if not url:
        echo("error: no database: pass --database-url or set SPECQL_DATABASE_URL")
        return 1
    progress = _Progress()
    try:
        with sigterm_as_interrupt():
            return _connect_and_run(directory, url, status, dry_run, _Waits(url, lock_wait, lock_timeout),
                                    echo, progress)
    except (MigrationError, DatabaseError) as e:
        echo(f"error: {e}")
    except psycopg.Error as e:
        # Lost connection, no permission to create the ledger, ...
        echo(f"error: {' '.join(str(e).split())}")
    except KeyboardInterrupt as e:
        return _report_interrupt(e, progress, echo)
    return 1


def _connect_and_run(directory, url: str, status: bool, dry_run: bool, waits: _Waits, echo: Echo,
                     progress: _Progress) -> int:
    migrations = load_migrations(find_migrations_dir(directory))
    # prepare_threshold=None: identical statements repeated across files must not
    # become server-side prepared statements (DDL cannot be prepared).
    with connect(url, autocommit=True, prepare_threshold=None, application_name=APPLICATION_NAME) as conn:
        check_client_connection(conn)
        if status:
            return _status(conn, migrations, echo)
        if dry_run:
            return _dry_run(conn, migrations, echo)
        return _run(conn, migrations, waits, echo, progress)


def _report_interrupt(e: KeyboardInterrupt, progress: _Progress, echo: Echo) -> int:
    name, code = ("SIGTERM", 143) if isinstance(e, Terminated) else ("SIGINT", 130)
    if progress.current:
        # Rolled back by the transaction's exit; closing the connection would have too.
        left = progress.pending - progress.done - 1
        echo(f"interrupted by {name} while applying {progress.current}: rolled back; "
             f"{progress.done} migration(s) applied before it, {left} not attempted")
    elif progress.pending is None:
        echo(f"interrupted by {name}: nothing was applied")
    else:
        echo(f"interrupted by {name} after {progress.done} migration(s) were applied")
    return code
