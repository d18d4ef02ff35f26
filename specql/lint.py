"""Lint generated routines with plpgsql_check, when the server has it.

Findings are mapped back to the migration file and line that holds the statement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

ERROR_LEVELS = {"error"}

# Findings that are a deliberate consequence of the contract, with the reason.
JUSTIFIED = {
    # SPEC §4: a commit_per_batch PROCEDURE returns its result through `INOUT result`
    # beside its IN parameters; plpgsql_check's style hint prefers a lone OUT argument.
    'composite OUT variable "result" is not single argument',
    # Issue 14: an audited or hooked update returns its rows' old versions with RETURNING old on
    # PostgreSQL 18 and reads them first on older servers, choosing by server_version_num at run
    # time; an older server parses the PostgreSQL 18 branch, never runs it.
    'column "old" does not exist',
}

# Findings justified only in one kind of statement: (message, plpgsql_check's statement).
JUSTIFIED_IN = {
    # A resume of a parallel run CALLs its worker with a composite INOUT result
    # (specql.batch_operation_result): plpgsql_check up to 2.8.2 at least counts the composite's fields
    # as the CALL's output columns (okbob/plpgsql_check#192, fixed there); PostgreSQL assigns it whole.
    ("too many attributes for target variables", "CALL"),
}


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    level: str
    message: str
    routine: str

    def format(self) -> str:
        return f"{self.file}:{self.line}: {self.level}: {self.message} [{self.routine}]"

    @property
    def is_error(self) -> bool:
        return self.level in ERROR_LEVELS


def available(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'plpgsql_check'").fetchone() is not None


def _body_starts(migrations: Path) -> dict[str, tuple[str, int]]:
    """signature head -> (file, line of `AS $tag$`): body line 1 is that line."""
    starts: dict[str, tuple[str, int]] = {}
    for path in sorted(migrations.glob("*.sql")):
        lines = path.read_text("utf-8").splitlines()
        current = None
        for number, line in enumerate(lines, start=1):
            m = re.match(r"CREATE OR REPLACE (?:FUNCTION|PROCEDURE) (.+)\($", line)
            if m:
                current = m.group(1)
            elif current and re.match(r"AS \$specql(_\d+)?\$$", line):
                starts[current] = (path.name, number)
                current = None
    return starts


def lint(conn: psycopg.Connection, migrations: Path) -> list[Finding]:
    """Check every specql-generated routine; returns the findings (errors and warnings)."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS plpgsql_check")
    starts = _body_starts(migrations)
    routines = conn.execute("""
        SELECT p.oid, quote_ident(n.nspname) || '.' || quote_ident(p.proname), p.prokind
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.prosrc LIKE '%specql:generated%' AND n.nspname NOT LIKE 'pg\\_%'
        ORDER BY 2""").fetchall()
    findings: list[Finding] = []
    for oid, name, _kind in routines:
        rows = conn.execute(
            "SELECT lineno, level, message, detail, statement FROM plpgsql_check_function_tb(%s, "
            "extra_warnings => true, performance_warnings => false, fatal_errors => false)", (oid,)).fetchall()
        file, first = starts.get(name, ("?", 1))
        for lineno, level, message, detail, statement in rows:
            if message in JUSTIFIED or (message, statement) in JUSTIFIED_IN:
                continue
            text = message + (f" ({detail})" if detail else "")
            findings.append(Finding(file, first + (lineno or 1) - 1, level, text, name))
    return findings
