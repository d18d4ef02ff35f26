"""Names as entity files give them: checked before they become identifiers, and shown safely.

Every name in an entity file ends up in generated SQL, as an identifier, in a comment or
in a message. What PostgreSQL would refuse (too long, a NUL, a reserved `pg_` schema) is
refused here with a location; what only has to be shown (a file name, a quoted value in a
diagnostic) is escaped so that it cannot end the comment, string or line that carries it.
"""

from __future__ import annotations

from typing import Any

from ..diagnostics import shown as one_line
from ..loader import Document
from ..sqlnames import MAX_IDENTIFIER_BYTES

MAX_COLUMNS = 1600  # PostgreSQL's limit of columns in a table


def check_identifier(doc: Document, path: tuple, name: str, what: str, problems: list, *, key=False) -> None:
    if not name:
        problems.append(doc.diag(path, f"{what} must not be empty", key=key))
    if len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        problems.append(doc.diag(path, f"{what} {shown(name, 80)} is longer than {MAX_IDENTIFIER_BYTES} bytes",
                                 key=key))
    if "\x00" in name:
        problems.append(doc.diag(path, f"{what} contains a NUL character", key=key))
    if what == "schema name" and name.lower().startswith("pg_"):
        problems.append(doc.diag(path, "schema names starting with 'pg_' are reserved by PostgreSQL", key=key))


def shown(value: Any, limit: int = 60) -> str:
    """A value as a diagnostic quotes it: quoted when text, on one line, cut short."""
    text = one_line(value, limit)
    return f"'{text}'" if isinstance(value, str) else text


def display_name(text: str) -> str:
    """A file name as generated SQL comments and Python docstrings carry it: every character
    that could end a comment line or a string (control characters, quotes, backslashes) is
    written as a \\x / \\u escape, so a hostile file name stays text."""
    return "".join(c if c.isprintable() and c not in '\\"' else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" if ord(c) < 0x10000
                    else f"\\U{ord(c):08x}") for c in text)
