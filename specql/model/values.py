"""Values written in entity files: literals cast to a column's type, what reads as SQL, durations.

`update_data: {status: active}` is a literal; `{updated_at: NOW()}` is SQL; `:name` is a
parameter and `:rec.field` a field of the current data_source element (SPEC §3). The rules
for telling them apart, and for writing a literal of each field type, live here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..sqlnames import literal

SQL_KEYWORD_VALUES = frozenset("""
    current_timestamp current_date current_time localtimestamp localtime current_user
    session_user current_role null true false
""".split())

PARAM_REF = re.compile(r"^:([A-Za-z_][A-Za-z0-9_]*)$")
RECORD_REF = re.compile(r"^:([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)$")
_CALL = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_.]*\(", re.DOTALL)
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2}|infinity|-infinity)", re.IGNORECASE)

_INTERVAL_UNITS = ("microsecond", "millisecond", "second", "minute", "hour", "day", "week", "month", "year")
_INTERVAL = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*([a-z]+)\s*)+$", re.IGNORECASE)
_INTERVAL_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)", re.IGNORECASE)
_UNIT_ALIASES = {"ms": "millisecond", "msec": "millisecond", "s": "second", "sec": "second",
                 "secs": "second", "m": "minute", "min": "minute", "mins": "minute", "h": "hour",
                 "hr": "hour", "hrs": "hour", "d": "day", "w": "week", "us": "microsecond"}
# Microseconds in each unit up to a day; days and months are PostgreSQL's separate interval fields.
_MICROS = {"microsecond": 1, "millisecond": 10**3, "second": 10**6, "minute": 60 * 10**6, "hour": 3600 * 10**6}
_DAYS = {"day": 1, "week": 7}
_MONTHS = {"month": 1, "year": 12}
# Beyond these an interval fails to apply, or overflows when added to a timestamp; a century
# is longer than any batch operation needs to wait.
MAX_INTERVAL_DAYS = 36525


@dataclass
class Assignment:
    """The value written to one column, and whether it reads an argument or a record field."""

    column: Any  # entity.Column
    sql: str
    kind: str = "sql"  # "param" (a routine argument), "record" (a data_source field) or "sql"
    ref: str | None = None  # the parameter or the record field it reads


def parse_interval(text: str) -> str | None:
    """Normalise '30 minutes' / '1h 30m' to PostgreSQL interval text; None if invalid.

    A duration beyond a century (MAX_INTERVAL_DAYS) is invalid too: PostgreSQL would refuse
    some of them outright ("9999999999999 hours" overflows its microseconds field) and the
    rest would make `started_at + timeout` overflow at call time.
    """
    if len(text) > 200 or not _INTERVAL.match(text):
        return None
    parts = []
    total = 0.0
    days = 0.0
    for amount, unit in _INTERVAL_PART.findall(text):
        unit = unit.lower()
        unit = _UNIT_ALIASES.get(unit, unit.rstrip("s") if unit.endswith("s") and unit != "s" else unit)
        if unit not in _INTERVAL_UNITS:
            return None
        total += float(amount)
        days += float(amount) * (_MICROS.get(unit, 0) / (86400 * 10**6) + _DAYS.get(unit, 0)
                                 + _MONTHS.get(unit, 0) * 31)
        parts.append(f"{amount} {unit}{'' if amount == '1' else 's'}")
    if total <= 0 or days > MAX_INTERVAL_DAYS:
        return None
    return " ".join(parts)


def interval_ms(text: str) -> int:
    """Milliseconds of a normalised interval (months as 30 days, a year as 365), at least 1:
    for settings such as lock_timeout, which take a number with a unit PostgreSQL knows."""
    total = 0.0
    for amount, unit in _INTERVAL_PART.findall(text):
        unit = unit.lower().rstrip("s") if unit.lower() not in _INTERVAL_UNITS else unit.lower()
        micros = _MICROS.get(unit) or _DAYS.get(unit, 0) * 86400 * 10**6 or \
            {"month": 30, "year": 365}.get(unit, 0) * 86400 * 10**6
        total += float(amount) * micros
    return max(1, round(total / 1000))


def literal_sql(value: Any, column) -> str | None:
    """SQL for a literal assigned to `column`, or None when it cannot be of that type."""
    t = column.type
    if value is None:
        return "NULL"
    if t == "jsonb":
        return literal(json.dumps(value, sort_keys=True)) + "::jsonb"
    if isinstance(value, (dict, list)):
        return None
    if t == "boolean":
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "t", "f"):
            return literal(value.lower()) + "::boolean"
        return None
    if isinstance(value, bool):
        return None
    if t in ("integer", "bigint"):
        if isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip())):
            n = int(value)
            limit = 2**31 if t == "integer" else 2**63
            if -limit <= n < limit:
                return str(n) if n >= 0 else f"({n})"
        return None
    if t in ("decimal", "numeric"):
        if isinstance(value, (int, float)) or (isinstance(value, str)
                                               and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value.strip())):
            return literal(str(value).strip()) + "::numeric"
        return None
    if t == "uuid":
        return literal(value) + "::uuid" if isinstance(value, str) and _UUID.match(value) else None
    if t in ("timestamp", "date"):
        return literal(value) + "::" + column.sql_type if isinstance(value, str) and _DATE.match(value) else None
    return literal(str(value))  # text


def looks_like_sql(text: str) -> bool:
    """`NOW()`, `CURRENT_TIMESTAMP`, `NULL`: a string that is a call or an SQL keyword value."""
    stripped = text.strip()
    first = re.split(r"[\s(]", stripped, maxsplit=1)[0].lower()
    return bool(_CALL.match(stripped)) or first in SQL_KEYWORD_VALUES


def record_sql(field_name: str, column, target) -> str:
    """A data_source field as the column's type. A record that leaves the field out gets
    the column's default when the entity declares one (an explicit JSON null stays NULL):
    an INSERT ... SELECT cannot say DEFAULT per row, so the default is written here."""
    key = literal(field_name)
    if column.type == "jsonb":
        value = f"(_rec -> {key})"
    elif column.sql_type == "text":
        value = f"(_rec ->> {key})"
    else:
        value = f"(_rec ->> {key})::{column.sql_type}"
    default = column.default_sql
    if default is None and column.primary_key and column.type == "uuid" and target.manage_table:
        default = "gen_random_uuid()"  # what the table specql creates defaults its key to
    if default is None:
        return value
    return f"CASE WHEN _rec ? {key} THEN {value} ELSE {default} END"
