"""Identifier quoting, literals and the entity type vocabulary."""

from __future__ import annotations

import re

from pglast.keywords import COL_NAME_KEYWORDS, RESERVED_KEYWORDS, TYPE_FUNC_NAME_KEYWORDS

# PL/pgSQL reserves a few more words for its own statements.
_PLPGSQL_RESERVED = frozenset("""
    all begin by case declare else end execute for foreach from if in into loop not null or
    strict then to using when while
""".split())
_NEEDS_QUOTES = frozenset(RESERVED_KEYWORDS) | frozenset(TYPE_FUNC_NAME_KEYWORDS) | frozenset(COL_NAME_KEYWORDS) \
    | _PLPGSQL_RESERVED
_BARE = re.compile(r"^[a-z_][a-z0-9_]*$")

MAX_IDENTIFIER_BYTES = 63

# specql field type -> PostgreSQL type
SQL_TYPES = {
    "uuid": "uuid",
    "string": "text",
    "text": "text",
    "integer": "integer",
    "bigint": "bigint",
    "decimal": "numeric",
    "numeric": "numeric",
    "boolean": "boolean",
    "timestamp": "timestamptz",
    "date": "date",
    "jsonb": "jsonb",
}


def qi(name: str) -> str:
    """Quote an identifier when PostgreSQL would not read it back unchanged."""
    if _BARE.match(name) and name not in _NEEDS_QUOTES:
        return name
    return '"' + name.replace('"', '""') + '"'


def qname(schema: str, name: str) -> str:
    return f"{qi(schema)}.{qi(name)}"


def literal(text: str) -> str:
    """A standard-conforming SQL string literal."""
    return "'" + text.replace("'", "''") + "'"
