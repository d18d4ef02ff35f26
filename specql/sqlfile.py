"""Running one migration file so that an error is pinned to its line.

Statements run one at a time (in the caller's transaction) because many errors
("relation already exists") carry no position of their own; errors raised inside a DO
block carry only a line inside the block.  Both are mapped back to a line of the file,
which is what ``specql migrate`` reports as ``file:line: error: message``.
"""

from __future__ import annotations

import re

import pglast
import psycopg
from pglast.parser import ParseError

__all__ = ["FileFailed", "execute_file"]


class FileFailed(Exception):
    """A statement of the file failed; *line* is where in the file (None when unknown).

    When the failure was a lock wait, migrate adds who held the lock (*blockers*) and,
    once it stops retrying, how long it waited (*gave_up_after*).
    """

    def __init__(self, line: int | None, error: psycopg.Error):
        super().__init__(str(error))
        self.line = line
        self.error = error
        self.blockers: list[str] = []
        self.gave_up_after: float | None = None  # seconds, when lock waits were exhausted

    @property
    def lock_timeout(self) -> bool:
        """The statement gave up waiting for a lock (lock_timeout): worth a retry."""
        return self.error.sqlstate == "55P03"


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


def execute_file(conn: psycopg.Connection, sql: str) -> None:
    """Run the statements of *sql* one by one; raise FileFailed with the failing line."""
    statements = _split(sql)
    if statements is None:
        try:
            # No parameters: psycopg sends a simple query, which may hold many statements.
            conn.execute(sql)
        except psycopg.Error as e:
            raise FileFailed(_error_line(sql, 0, None, e), e) from None
        return
    for offset, statement in statements:
        try:
            conn.execute(statement)
        except psycopg.Error as e:
            raise FileFailed(_error_line(sql, offset, statement, e), e) from None
