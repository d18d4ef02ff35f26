"""A project's own SQL (entity key `sql_files`): functions its operations call, such as a
custom_function step's (SPEC §8), shipped with the entity files.

Why in the entity's migration: the generated tests, `specql test run`, `specql migrate` and
`psql -f` then all have the functions, in the same order, with nothing extra to run. The
files are checked like every SQL the user writes: PostgreSQL's parser reads them (a syntax
error is reported at its line and column in the .sql file), and transaction control is
refused, because a migration file runs in one transaction (SPEC §6).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pglast

from ..diagnostics import Diagnostic
from .names import shown

MAX_SQL_CHARS = 1_000_000


@dataclass
class ProjectSql:
    name: str  # as the entity file writes it, relative to the entity file
    text: str


def _line_col(text: str, index: int) -> tuple[int, int]:
    index = max(0, min(index, len(text)))
    return text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1


def read_sql_files(doc, problems: list[Diagnostic]) -> list[ProjectSql]:
    """The files named by `sql_files`, each read, parsed and checked; problems located."""
    found: list[ProjectSql] = []
    for i, name in enumerate(doc.data.get("sql_files") or []):
        path = Path(doc.path).parent / name
        at = ("sql_files", i)
        if Path(name).is_absolute() or ".." in Path(name).parts:
            problems.append(doc.diag(at, f"sql_files names a file beside the entity file or below it, "
                                         f"not {shown(name)}"))
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(doc.diag(at, f"sql file {shown(name)} does not exist (looked for {shown(str(path))})"))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(doc.diag(at, f"cannot read sql file {shown(name)}: {exc}"))
            continue
        if len(text) > MAX_SQL_CHARS or "\0" in text:
            problems.append(doc.diag(at, f"sql file {shown(name)} has more than {MAX_SQL_CHARS:,} characters "
                                         f"or a NUL character"))
            continue
        shown_path = str(path)
        try:
            statements = pglast.parse_sql(text)
        except pglast.parser.ParseError as exc:
            line, col = _line_col(text, getattr(exc, "location", None) or _index_of(str(exc)))
            message = str(exc).split(", at index")[0]
            problems.append(Diagnostic(shown_path, line, col, f"invalid SQL: {message}"))
            continue
        bad = [s for s in statements if type(s.stmt).__name__ == "TransactionStmt"]
        if bad:
            line, col = _line_col(text, bad[0].stmt_location or 0)
            problems.append(Diagnostic(shown_path, line, col, "transaction control (BEGIN, COMMIT, ...) is not "
                                                              "allowed: a migration file runs in one transaction"))
            continue
        found.append(ProjectSql(name=name, text=text.strip()))
    return found


def _index_of(message: str) -> int:
    tail = message.rsplit("at index ", 1)
    return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else 0
