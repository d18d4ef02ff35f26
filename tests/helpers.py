"""Helpers for tests that generate SQL from entity YAML and run it on a real server."""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import psycopg

from specql.contract import RESULT_FIELDS
from specql.generate import generate
from specql.sqlnames import qi
from specql.migrate import migrate


def write_entities(folder: Path, **files: str) -> Path:
    """Write name=yaml pairs as folder/name.yaml (dedented) and return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


def generate_and_apply(url: str, entities: Path, out: Path) -> list[Path]:
    """Generate migrations for `entities` into `out` and apply them with specql migrate."""
    result = generate([str(entities)], out)
    lines: list[str] = []
    code = migrate(out, url, echo=lines.append)
    assert code == 0, "\n".join(lines)
    return result.written


def connect(url: str, autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=autocommit)


def call(conn: psycopg.Connection, routine: str, **args) -> dict:
    """Call a generated function with named arguments; the result row as a dict."""
    names = ", ".join(f"{qi(name)} => %({name})s" for name in args)
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(f"SELECT * FROM {routine}({names})", args).fetchone()


def call_procedure(conn: psycopg.Connection, routine: str, **args) -> dict:
    names = ", ".join(f"{qi(name)} => %({name})s" for name in args)
    cur = conn.cursor()
    row = cur.execute(f"CALL {routine}({names})", args).fetchone()
    # the INOUT result comes back as one composite column
    fields = RESULT_FIELDS
    cur2 = conn.cursor()
    values = cur2.execute("SELECT (%s::specql.batch_operation_result).*", (row[0],)).fetchone()
    return dict(zip(fields, values))


def batch_log(conn: psycopg.Connection, operation_id) -> list[tuple[int, int, int, str]]:
    return conn.execute(
        "SELECT batch_number, records_processed, records_failed, status FROM specql.batch_operation_logs "
        "WHERE operation_id = %s ORDER BY batch_number", (operation_id,)).fetchall()


def errors(conn: psycopg.Connection, operation_id) -> list[tuple]:
    return conn.execute(
        "SELECT batch_number, sqlstate, error_message, failed_records FROM specql.batch_operation_errors "
        "WHERE operation_id = %s ORDER BY id", (operation_id,)).fetchall()


class HeldLock:
    """A lock taken by `statement` (e.g. a row locked FOR UPDATE, or a key inserted and not
    committed) in a session of its own, held (in a thread) until `waits` lock waits of other
    sessions on it have begun, or until release(). A wait is a try of a batch that lock_timeout
    ends (55P03) or that gets the lock when it is let go: counted from pg_locks (each waiting
    lock request's waitstart, whoever waits), never from a clock."""

    def __init__(self, url: str, statement: str, args: tuple = (), waits: int | None = None):
        self.waits_seen: set = set()
        self._release = threading.Event()
        self._conn = connect(url, autocommit=False)
        self._watch = connect(url)
        self._conn.execute(statement, args)
        pid = self._conn.info.backend_pid

        def work():
            while not self._release.is_set():
                rows = self._watch.execute(
                    "SELECT l.pid, l.waitstart FROM pg_catalog.pg_locks AS l WHERE NOT l.granted "
                    "AND l.waitstart IS NOT NULL AND %s = ANY(pg_catalog.pg_blocking_pids(l.pid))", (pid,)).fetchall()
                self.waits_seen.update(rows)
                if waits is not None and len(self.waits_seen) >= waits:
                    break
                self._release.wait(0.01)
            self._conn.rollback()
            self._conn.close()
            self._watch.close()

        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()

    def waiters(self) -> set:
        """The sessions that waited for the lock (their pids)."""
        return {pid for pid, _ in self.waits_seen}

    def wait_for(self, waits: int, seconds: float = 30) -> None:
        """Until `waits` waits on the lock have begun."""
        deadline = time.monotonic() + seconds
        while len(self.waits_seen) < waits:
            assert time.monotonic() < deadline, f"{len(self.waits_seen)} of {waits} lock waits"
            time.sleep(0.01)

    def release(self) -> int:
        """Let the lock go (if still held); the number of waits seen."""
        self._release.set()
        self._thread.join(10)
        assert not self._thread.is_alive()
        return len(self.waits_seen)
