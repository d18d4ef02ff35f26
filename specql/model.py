"""The checked model of a project: entities, their columns and batch operations.

`build_project` turns loaded documents into `Entity` and `Operation` objects, checking
what the JSON Schema cannot: columns exist, parameter types resolve, SQL fragments parse
as one expression, options agree with each other. Every problem of every file is
collected; the model is only returned when there are none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from . import sqlfragment as sf
from .diagnostics import Diagnostic, SpecError, did_you_mean
from .loader import Document
from .reserved import routine_locals
from .sqlnames import MAX_IDENTIFIER_BYTES, SQL_TYPES, literal, qi, qname
from .validate import schema_check

DEFAULT_BATCH_SIZE = 1000

RESULT_FIELDS = ("operation_id", "operation", "status", "total_records", "processed_records",
                 "failed_records", "error_count", "batch_count", "started_at", "completed_at")

MAX_COLUMNS = 1600  # PostgreSQL's limit of columns in a table
MAX_CHANNELS = 32  # notification channels travel in a NOTIFY payload, which must stay under 8000 bytes

SQL_KEYWORD_VALUES = frozenset("""
    current_timestamp current_date current_time localtimestamp localtime current_user
    session_user current_role null true false
""".split())

_INTERVAL_UNITS = ("microsecond", "millisecond", "second", "minute", "hour", "day", "week", "month", "year")
_INTERVAL = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*([a-z]+)\s*)+$", re.IGNORECASE)
_INTERVAL_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)", re.IGNORECASE)
_UNIT_ALIASES = {"ms": "millisecond", "msec": "millisecond", "s": "second", "sec": "second",
                 "secs": "second", "m": "minute", "min": "minute", "mins": "minute", "h": "hour",
                 "hr": "hour", "hrs": "hour", "d": "day", "w": "week", "us": "microsecond"}
_PARAM_REF = re.compile(r"^:([A-Za-z_][A-Za-z0-9_]*)$")
_RECORD_REF = re.compile(r"^:([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)$")
_CALL = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_.]*\(", re.DOTALL)
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2}|infinity|-infinity)", re.IGNORECASE)
_PARAM_TYPE = re.compile(r"^([a-z]+)(\[\])?$")


@dataclass
class Column:
    name: str
    type: str  # specql type name
    sql_type: str
    nullable: bool = True
    default_sql: str | None = None
    unique: bool = False
    references_sql: str | None = None
    primary_key: bool = False

    @property
    def ident(self) -> str:
        return qi(self.name)


@dataclass
class Param:
    name: str
    sql_type: str

    @property
    def ident(self) -> str:
        return qi(self.name)


@dataclass
class Assignment:
    column: Column
    sql: str
    kind: str = "sql"  # "param" (a routine argument), "record" (a data_source field) or "sql"
    ref: str | None = None  # the parameter or the record field it reads


@dataclass
class Precondition:
    text: str
    sql: str
    over_table: bool


INTEGER_KEY_MAX = {"integer": 2**31 - 1, "bigint": 2**63 - 1}


@dataclass
class Operation:
    name: str
    schema: str
    description: str | None
    entity: "Entity"  # the entity whose file declares it
    target: "Entity"
    operation_type: str
    params: list[Param]
    assignments: list[Assignment]
    driver: str  # "keys" (id array), "keyset" (condition walk) or "source" (jsonb array)
    where_sql: str | None  # full condition, for counting; None means every row
    batch_where_sql: str | None  # condition applied to one batch (keys already restricted)
    key_param: Param | None
    source_param: Param | None
    conflict_columns: list[Column]
    batch_size: int
    transaction: str
    error_handling: str
    max_errors: int | None
    max_records: int | None
    requires_confirmation: bool
    preconditions: list[Precondition]
    timeout: str | None  # normalised interval text
    progress_tracking: bool
    progress_interval: int | None
    heartbeat_interval: str | None
    logging_level: str
    log_table: str  # quoted, schema-qualified
    metrics_table: str
    collect_metrics: bool
    notify: bool
    channels: list[str]
    message_parts: list[tuple[str, str]]  # ("text", literal) / ("field", result field)
    source_path: str  # where diagnostics point
    source_name: str  # what generated files name as their source (independent of the working folder)
    # For generated tests: the condition with $1..$n for params (in `params` order), each
    # parameter's role, and constants the conditions compare columns with.
    count_sql: str | None = None
    param_roles: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # name -> (role, column)
    compared_values: dict[str, list] = field(default_factory=dict)
    # Functions its SQL calls, with where they are written ("file:line:col"): `specql test run`
    # reports one the database lacks before any test fails on it.
    functions: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ident(self) -> str:
        return qname(self.schema, self.name)

    @property
    def is_procedure(self) -> bool:
        return self.transaction == "commit_per_batch"

    def param_ref(self, name: str) -> str:
        return f"{qi(self.name)}.{qi(name)}"

    @property
    def all_params(self) -> list[Param]:
        extra = [Param("confirm", "boolean")] if self.requires_confirmation else []
        return self.params + extra

    @property
    def signature_types(self) -> str:
        """Input argument types as `to_regprocedure` reads them."""
        types = [p.sql_type for p in self.all_params]
        if self.is_procedure:
            types.append("specql.batch_operation_result")
        return ", ".join(types)

    @property
    def argument_names(self) -> list[str]:
        names = [p.name for p in self.all_params]
        return (names + ["result"]) if self.is_procedure else names

    @property
    def counts_up_front(self) -> bool:
        """Whether the routine counts its target rows before changing anything."""
        return bool(self.max_records or self.requires_confirmation
                    or (self.progress_interval and self.driver == "keyset"))

    @property
    def range_batches(self) -> bool:
        """Whether a condition walk may take a dense stretch of keys as one key range: an
        integer key is unique, so batch_size consecutive values hold at most batch_size rows."""
        return self.driver == "keyset" and self.target.primary_key.sql_type in INTEGER_KEY_MAX

    @property
    def counts_batch_records(self) -> bool:
        """Whether a condition walk counts each batch's records: to add up total_records when
        it was not counted up front, and to see a key range past the last matching key."""
        return self.driver == "keyset" and (self.range_batches or not self.counts_up_front)

    @property
    def key_max(self) -> int:
        return INTEGER_KEY_MAX[self.target.primary_key.sql_type]

    @property
    def logs_batches(self) -> bool:
        return self.progress_tracking or self.logging_level == "detailed"

    @property
    def conflict_updates(self) -> list[Assignment]:
        """An upsert's assignments to columns outside the conflict target: what DO UPDATE sets."""
        return [a for a in self.assignments if a.column not in self.conflict_columns]

    @property
    def partial_updates(self) -> list[Assignment]:
        """An upsert's updated columns read from a record field: a record may leave the field out,
        and the existing row then keeps its value (the routine groups each batch's records by
        the fields they carry)."""
        if self.operation_type != "upsert":
            return []
        return [a for a in self.conflict_updates if a.kind == "record"]


@dataclass
class Entity:
    name: str
    schema: str
    table: str
    primary_key: Column
    columns: dict[str, Column]
    manage_table: bool
    description: str | None
    source_path: str
    source_name: str = ""
    depends_on: set[str] = field(default_factory=set)
    operations: list[Operation] = field(default_factory=list)
    extra_tables: list[tuple[str, str]] = field(default_factory=list)  # (qualified name, like)

    @property
    def ident(self) -> str:
        return qname(self.schema, self.table)

    @property
    def key(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass
class Project:
    entities: list[Entity]
    warnings: list[Diagnostic]


# --------------------------------------------------------------------------- helpers


# Microseconds in each unit up to a day; days and months are PostgreSQL's separate interval fields.
_MICROS = {"microsecond": 1, "millisecond": 10**3, "second": 10**6, "minute": 60 * 10**6, "hour": 3600 * 10**6}
_DAYS = {"day": 1, "week": 7}
_MONTHS = {"month": 1, "year": 12}
# Beyond these an interval fails to apply, or overflows when added to a timestamp; a century
# is longer than any batch operation needs to wait.
MAX_INTERVAL_DAYS = 36525


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


def _shown(value: Any, limit: int = 60) -> str:
    """A value as a diagnostic quotes it: on one line, control characters escaped, cut short."""
    text = value if isinstance(value, str) else str(value)
    escaped = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    cut = escaped if len(escaped) <= limit else escaped[:limit] + "…"
    return repr(cut) if isinstance(value, str) else cut


def display_name(text: str) -> str:
    """A file name as generated SQL comments and Python docstrings carry it: every character
    that could end a comment line or a string (control characters, quotes, backslashes) is
    written as a \\x / \\u escape, so a hostile file name stays text."""
    return "".join(c if c.isprintable() and c not in '\\"' else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" if ord(c) < 0x10000
                    else f"\\U{ord(c):08x}") for c in text)


def _check_identifier(doc: Document, path: tuple, name: str, what: str, problems: list, *, key=False) -> None:
    if not name:
        problems.append(doc.diag(path, f"{what} must not be empty", key=key))
    if len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        problems.append(doc.diag(path, f"{what} {_shown(name, 80)} is longer than {MAX_IDENTIFIER_BYTES} bytes", key=key))
    if "\x00" in name:
        problems.append(doc.diag(path, f"{what} contains a NUL character", key=key))
    if what == "schema name" and name.lower().startswith("pg_"):
        problems.append(doc.diag(path, f"schema names starting with 'pg_' are reserved by PostgreSQL", key=key))


def _literal_sql(value: Any, column: Column) -> str | None:
    """SQL for a literal assigned to `column`, or None when it cannot be of that type."""
    t = column.type
    if value is None:
        return "NULL"
    if t == "jsonb":
        import json
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


def _looks_like_sql(text: str) -> bool:
    stripped = text.strip()
    first = re.split(r"[\s(]", stripped, maxsplit=1)[0].lower()
    return bool(_CALL.match(stripped)) or first in SQL_KEYWORD_VALUES


# --------------------------------------------------------------------------- building


class _OperationBuilder:
    """Checks one batch_operations pattern and builds its Operation."""

    def __init__(self, doc: Document, path: tuple, spec: dict, entity: Entity, target: Entity,
                 problems: list[Diagnostic], warnings: list[Diagnostic]):
        self.doc, self.path, self.spec = doc, path, spec
        self.entity, self.target = entity, target
        self.problems, self.warnings = problems, warnings
        self.name = spec["operation"]
        # parameter name -> (sql type, where it was inferred)
        self.param_types: dict[str, tuple[str, tuple, int | None]] = {}
        self.param_order: list[str] = []
        self.record_alias: str | None = None
        self.record_alias_at: tuple | None = None
        self.roles: dict[str, tuple[str, str | None]] = {}
        self.first_site: dict[str, tuple[tuple, int | None]] = {}
        self.bad_declarations: set[str] = set()
        self.compared: dict[str, set] = {}
        self.relations: dict[str, tuple[tuple, int | None]] = {}  # tables and aliases named in SQL
        self.functions: list[tuple[str, tuple, int | None]] = []  # (function name, path, offset)

    def error(self, path: tuple, message: str, *, key=False, offset=None) -> None:
        self.problems.append(self.doc.diag(path, message, key=key, offset=offset))

    def warn(self, path: tuple, message: str, *, key=False) -> None:
        self.warnings.append(self.doc.diag(path, message, key=key, severity="warning"))

    def at(self, *keys) -> tuple:
        return self.path + keys

    # -- parameters

    def note_param(self, name: str, sql_type: str | None, path: tuple, offset: int | None) -> None:
        if name not in self.param_order:
            self.param_order.append(name)
            self.first_site[name] = (path, offset)
        if sql_type is None:
            return
        known = self.param_types.get(name)
        if known and known[0] != sql_type:
            self.error(path, f"parameter :{name} is used as {sql_type} here but as {known[0]} elsewhere; "
                             f"declare its type under params", offset=offset)
            return
        self.param_types.setdefault(name, (sql_type, path, offset))

    def note_record(self, alias: str, path: tuple, offset: int | None) -> None:
        if self.record_alias is None:
            self.record_alias, self.record_alias_at = alias, path
        elif alias != self.record_alias:
            self.error(path, f":{alias}.… names a different data_source element than :{self.record_alias}.…; "
                             f"use one name for the current element", offset=offset)

    # -- values

    def record_sql(self, field_name: str, column: Column) -> str:
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
        if default is None and column.primary_key and column.type == "uuid" and self.target.manage_table:
            default = "gen_random_uuid()"  # what the table specql creates defaults its key to
        if default is None:
            return value
        return f"CASE WHEN _rec ? {key} THEN {value} ELSE {default} END"

    def assignment(self, raw: Any, column: Column, path: tuple) -> Assignment | None:
        """The value written to `column`, remembering whether it reads an argument or a record field."""
        if isinstance(raw, str) and (m := _PARAM_REF.match(raw.strip())):
            sql, kind, ref = self.value_sql(raw, column, path), "param", m.group(1)
        elif isinstance(raw, str) and (m := _RECORD_REF.match(raw.strip())):
            sql, kind, ref = self.value_sql(raw, column, path), "record", m.group(2)
        else:
            sql, kind, ref = self.value_sql(raw, column, path), "sql", None
        return None if sql is None else Assignment(column, sql, kind, ref)

    def value_sql(self, raw: Any, column: Column, path: tuple) -> str | None:
        if isinstance(raw, dict) and "value" in raw:
            return self.literal_or_error(raw["value"], column, path + ("value",))
        if isinstance(raw, dict) and "sql" in raw:
            return self.fragment_value(raw["sql"], column, path + ("sql",))
        if isinstance(raw, str):
            if m := _PARAM_REF.match(raw.strip()):
                self.note_param(m.group(1), column.sql_type, path, None)
                self.roles.setdefault(m.group(1), ("assign", column.name))
                return self.param_ref(m.group(1))
            if m := _RECORD_REF.match(raw.strip()):
                self.note_record(m.group(1), path, None)
                return self.record_sql(m.group(2), column)
            if _looks_like_sql(raw):
                return self.fragment_value(raw, column, path)
        return self.literal_or_error(raw, column, path)

    def literal_or_error(self, raw: Any, column: Column, path: tuple) -> str | None:
        sql = _literal_sql(raw, column)
        if sql is None:
            shown = raw if not isinstance(raw, str) else repr(raw)
            hint = " (an SQL expression is written as {sql: \"...\"})" if isinstance(raw, str) else ""
            self.error(path, f"{shown} is not a valid {column.type} value for column '{column.name}'{hint}")
        return sql

    def fragment_value(self, text: str, column: Column | None, path: tuple) -> str | None:
        frag = self.parse(text, path)
        if frag is None:
            return None
        self.check_columns(frag, path)
        return self.render_fragment(frag, path)

    def param_ref(self, name: str) -> str:
        return f"{qi(self.name)}.{qi(name)}"

    # -- fragments

    def parse(self, text: str, path: tuple) -> sf.Fragment | None:
        try:
            frag = sf.parse_fragment(text)
        except sf.FragmentError as exc:
            self.error(path, exc.message, offset=exc.offset)
            return None
        for op, offset in frag.bad_operators:
            self.error(path, f"unknown operator '{op}' (did you mean '='?)", offset=offset)
        self.note_names(frag, path)
        names = {ph.number: ph.name for ph in frag.placeholders}
        for name, offset, number in frag.bad_casts:
            self.error(path, f"unknown type '{name}' in the cast of :{names.get(number, '?')}"
                             f"{did_you_mean(name, sf.KNOWN_TYPES)}", offset=offset)
        return None if frag.bad_operators or frag.bad_casts else frag

    def note_names(self, frag: sf.Fragment, path: tuple) -> None:
        """Remember the relations (which could capture parameter references) and the functions
        (which `specql test run` checks exist) that a fragment names, subqueries included."""
        for node in _walk_all(frag.expr):
            if isinstance(node, sf.ast.RangeVar):
                self.relations.setdefault(node.relname, (path, None))
                if node.alias is not None:
                    self.relations.setdefault(node.alias.aliasname, (path, None))
            elif isinstance(node, sf.ast.RangeSubselect) and node.alias is not None:
                self.relations.setdefault(node.alias.aliasname, (path, None))
            elif isinstance(node, sf.ast.CommonTableExpr):
                self.relations.setdefault(node.ctename, (path, None))
            elif isinstance(node, sf.ast.FuncCall):
                name = ".".join(n.sval for n in node.funcname)
                found = frag.text.lower().find(node.funcname[-1].sval.lower())
                self.functions.append((name, path, found if found >= 0 else None))

    def check_columns(self, frag: sf.Fragment, path: tuple) -> None:
        cols = self.target.columns
        for name, offset in frag.columns:
            if name not in cols:
                self.error(path, f"unknown column '{name}' of {self.target.name}{did_you_mean(name, cols)}",
                           offset=offset)
        for name, offset in frag.qualified:
            qualifier, _, column = name.rpartition(".")
            if qualifier != self.target.table or column not in cols:
                self.error(path, f"unknown column reference '{name}' (columns of {self.target.name} are "
                                 f"written by name, or as {qi(self.target.table)}.column)", offset=offset)

    def infer_fragment_params(self, frag: sf.Fragment, path: tuple) -> None:
        arrays = sf.array_param_columns(frag)
        scalars = sf.scalar_param_columns(frag)
        casts = sf.cast_params(frag)
        cols = self.target.columns
        for ph in frag.placeholders:
            if ph.field is not None:
                self.error(path, f":{ph.name}.{ph.field} (a data_source field) can only be used in "
                                 f"insert_data/upsert_data values", offset=ph.offset)
                continue
            sql_type = None
            if ph.number in arrays and arrays[ph.number] in cols:
                self.roles.setdefault(ph.name, ("in", arrays[ph.number]))
            elif ph.number in scalars and scalars[ph.number] in cols:
                self.roles.setdefault(ph.name, ("compare", scalars[ph.number]))
            if ph.number in casts:
                sql_type = casts[ph.number]
            elif ph.number in arrays and arrays[ph.number] in cols:
                sql_type = cols[arrays[ph.number]].sql_type + "[]"
            elif ph.number in scalars and scalars[ph.number] in cols:
                sql_type = cols[scalars[ph.number]].sql_type
            self.note_param(ph.name, sql_type, path, ph.offset)

    def render_fragment(self, frag: sf.Fragment, path: tuple, swap: dict[int, str] | None = None) -> str:
        self.infer_fragment_params(frag, path)
        for column, values in sf.compared_literals(frag).items():
            self.compared.setdefault(column, set()).update(values)
        replacement = {ph.number: self.param_ref(ph.name) for ph in frag.placeholders}
        replacement.update(swap or {})
        arrays = set(sf.array_param_columns(frag))
        return sf.render(frag, replacement, arrays)

    # -- the pattern

    def build(self) -> Operation | None:
        spec, at = self.spec, self.at
        n_problems = len(self.problems)
        _check_identifier(self.doc, at("operation"), self.name, "operation name", self.problems)

        if "steps" in spec:
            self.error(at("steps"), "multi-step operations (steps) are not supported yet", key=True)
            return None
        if spec.get("data_source") == "csv_file":
            self.error(at("data_source"), "CSV import (data_source: csv_file) is not supported yet")
            return None
        for key in ("csv_delimiter", "csv_has_header", "field_mapping", "validation_rules", "skip_invalid_rows"):
            if key in spec:
                self.error(at(key), f"'{key}' belongs to CSV import (data_source: csv_file), "
                                    f"which is not supported yet", key=True)
        op_type = spec.get("operation_type")
        if op_type is None:
            self.error(self.path, f"operation '{self.name}' needs an operation_type "
                                  f"(update, insert, delete or upsert)")
            return None
        if op_type in ("select", "custom_function"):
            self.error(at("operation_type"), f"operation_type '{op_type}' is only meaningful inside steps, "
                                             f"which are not supported yet")
            return None

        data_key = {"update": "update_data", "insert": "insert_data", "upsert": "upsert_data"}.get(op_type)
        for key in ("update_data", "insert_data", "upsert_data"):
            if key in spec and key != data_key:
                self.error(at(key), f"'{key}' does not apply to operation_type '{op_type}'", key=True)
        if data_key and data_key not in spec:
            self.error(at("operation_type"), f"operation_type '{op_type}' needs '{data_key}'")

        # declared parameter types first: they win over inference
        declared: dict[str, str] = {}
        for pname, ptype in (spec.get("params") or {}).items():
            ppath = at("params", pname)
            m = _PARAM_TYPE.match(ptype.strip().lower())
            base = m and (SQL_TYPES.get(m.group(1)) or (m.group(1) if m.group(1) == "interval" else None))
            if not m or not base:
                self.error(ppath, f"unknown parameter type '{ptype}'{did_you_mean(ptype, list(SQL_TYPES) + ['interval'])}"
                                  f" (use a field type, optionally with [])")
                self.bad_declarations.add(pname)
                continue
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", pname):
                self.error(ppath, f"parameter name '{pname}' must be a plain identifier", key=True)
                continue
            declared[pname] = base + (m.group(2) or "")
            self.param_types[pname] = (declared[pname], ppath, None)

        # data source
        source_name = None
        if "data_source" in spec:
            m = _PARAM_REF.match(spec["data_source"].strip())
            if not m:
                self.error(at("data_source"), "data_source must be a parameter such as :rows (a jsonb array "
                                              "of objects) or csv_file")
            elif op_type not in ("insert", "upsert"):
                self.error(at("data_source"), f"data_source applies to insert and upsert, not {op_type}")
            else:
                source_name = m.group(1)
                self.note_param(source_name, "jsonb", at("data_source"), None)
        elif op_type in ("insert", "upsert"):
            self.error(at("operation_type"), f"operation_type '{op_type}' needs data_source: a jsonb array "
                                             f"parameter such as :rows")

        # where condition and the batch driver
        where_sql = batch_where_sql = where_frag = None
        driver = "source" if op_type in ("insert", "upsert") else "keyset"
        key_param_name = None
        if "where_condition" in spec:
            wpath = at("where_condition")
            if op_type in ("insert", "upsert"):
                self.error(wpath, f"where_condition does not apply to {op_type}", key=True)
            elif (frag := self.parse(spec["where_condition"], wpath)) is not None and frag.has_aggregate:
                self.error(wpath, f"aggregate function {frag.aggregate_name}() is not allowed in where_condition; "
                                  f"use preconditions to check the whole table", offset=frag.aggregate_offset)
            elif frag is not None:
                where_frag = frag
                self.check_columns(frag, wpath)
                driver_ph = self.key_driver(frag)
                where_sql = self.render_fragment(frag, wpath)
                if driver_ph is not None:
                    driver, key_param_name = "keys", driver_ph.name
                    batch_where_sql = self.render_fragment(frag, wpath, {driver_ph.number: "_keys"})
                else:
                    batch_where_sql = where_sql

        # assignments
        assignments: list[Assignment] = []
        cols = self.target.columns
        for column_name, raw in (spec.get(data_key) or {}).items() if data_key else ():
            vpath = at(data_key, column_name)
            column = cols.get(column_name)
            if column is None:
                self.error(vpath, f"unknown column '{column_name}' of {self.target.name}"
                                  f"{did_you_mean(column_name, cols)}", key=True)
                continue
            if op_type == "update" and column.primary_key:
                self.error(vpath, f"update_data cannot change the primary key '{column_name}'", key=True)
                continue
            assignment = self.assignment(raw, column, vpath)
            if assignment is not None:
                assignments.append(assignment)
        if self.record_alias and not source_name and "data_source" not in spec:
            self.error(self.record_alias_at, f":{self.record_alias}.… refers to a data_source element, "
                                             f"but this operation has no data_source")

        # conflict target
        conflict_columns: list[Column] = []
        if "conflict_target" in spec:
            if op_type != "upsert":
                self.error(at("conflict_target"), "conflict_target applies to upsert only", key=True)
            targets = spec["conflict_target"]
            for name in [targets] if isinstance(targets, str) else targets:
                column = cols.get(name)
                if column is None:
                    self.error(at("conflict_target"), f"unknown column '{name}' of {self.target.name}"
                                                      f"{did_you_mean(name, cols)}")
                    continue
                conflict_columns.append(column)
            if len(conflict_columns) == 1 and not (conflict_columns[0].primary_key or conflict_columns[0].unique):
                self.error(at("conflict_target"), f"conflict_target '{conflict_columns[0].name}' must be the "
                                                  f"primary key or a unique field")
            assigned = {a.column.name for a in assignments}
            for column in conflict_columns:
                if column.name not in assigned and data_key in spec:
                    self.error(at("conflict_target"), f"conflict_target '{column.name}' must be set in upsert_data")
        elif op_type == "upsert":
            self.error(at("operation_type"), "operation_type 'upsert' needs conflict_target")

        preconditions: list[Precondition] = []
        for i, text in enumerate(spec.get("preconditions") or []):
            ppath = at("preconditions", i)
            frag = self.parse(text, ppath)
            if frag is None:
                continue
            if frag.has_aggregate:
                self.check_columns(frag, ppath)
            elif frag.columns:
                name, offset = frag.columns[0]
                self.error(ppath, f"precondition refers to column '{name}' outside an aggregate; use an "
                                  f"aggregate such as count(*) or bool_and(...) to check the table", offset=offset)
                continue
            preconditions.append(Precondition(text.strip(), self.render_fragment(frag, ppath), frag.has_aggregate))

        # parameters: every one must have a type
        params: list[Param] = []
        for pname in self.param_order:
            if pname in declared:
                params.append(Param(pname, declared[pname]))
            elif pname in self.param_types:
                params.append(Param(pname, self.param_types[pname][0]))
            elif pname not in self.bad_declarations:
                site, offset = self.first_site[pname]
                self.error(site, f"cannot infer the type of parameter :{pname}; "
                                 f"declare it under params (e.g. params: {{{pname}: text}})", offset=offset)
        for pname in declared:
            if pname not in self.param_order:
                self.warn(at("params", pname), f"parameter '{pname}' is declared but never used", key=True)
        for p in params:
            if p.name.startswith("_"):
                self.error(self.param_site(p.name), f"parameter names starting with '_' are reserved (:{p.name})")
            if p.name in ("confirm", "result") and (p.name == "result" or spec.get("requires_confirmation")):
                self.error(self.param_site(p.name), f"parameter name '{p.name}' is reserved for the routine's "
                                                    f"own argument")
            _check_identifier(self.doc, self.param_site(p.name), p.name, "parameter name", self.problems)
        by_name = {p.name: p for p in params}
        key_param = by_name.get(key_param_name) if key_param_name else None
        source_param = by_name.get(source_name) if source_name else None
        if key_param and key_param.sql_type != self.target.primary_key.sql_type + "[]":
            key_param = None  # declared with another type: walk by condition instead
            driver = "keyset"

        self.check_names_not_captured()

        transaction = spec.get("transaction", "per_batch")
        error_handling = spec.get("error_handling", "stop_on_error")
        if transaction == "single" and error_handling != "stop_on_error":
            self.error(at("error_handling"), f"error_handling '{error_handling}' cannot work with "
                                             f"transaction: single (all-or-nothing stops at the first error)")
        if "max_errors" in spec and error_handling == "stop_on_error":
            self.warn(at("max_errors"), "max_errors has no effect with error_handling: stop_on_error", key=True)

        timeout = self.duration("timeout", "30 minutes")
        heartbeat = self.duration("heartbeat_interval", "10 seconds")

        logging_level = spec.get("logging_level", "summary")
        progress_tracking = spec.get("progress_tracking", False)
        if progress_tracking and logging_level == "none":
            self.error(at("logging_level"), "logging_level: none contradicts progress_tracking: true")

        for key in ("parallel", "max_workers", "worker_batch_size", "max_errors_per_worker"):
            if key in spec and spec[key] is not False:
                self.warn(at(key), f"'{key}' is accepted, but this version runs the batches sequentially "
                                   f"in one session", key=True)
                break

        notify = spec.get("notify_on_completion", False)
        channels = spec.get("notification_channels") or []
        if len(channels) > MAX_CHANNELS:
            self.error(at("notification_channels"), f"{len(channels)} notification channels: at most "
                                                    f"{MAX_CHANNELS} fit in a notification")
        for i, channel in enumerate(channels):
            if len(channel.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
                self.error(at("notification_channels", i), f"notification channel {_shown(channel)} is longer "
                                                           f"than {MAX_IDENTIFIER_BYTES} bytes")
        if (channels or "notification_message" in spec) and not notify:
            key = "notification_channels" if channels else "notification_message"
            self.warn(at(key), f"'{key}' has no effect without notify_on_completion: true", key=True)
        message = spec.get("notification_message",
                           "{operation} {status}: {processed_records} of {total_records} records processed, "
                           "{failed_records} failed")
        message_parts = self.message_parts(message, at("notification_message"))

        log_table = self.runtime_table(spec, "log_table", "batch_operation_logs")
        metrics_table = self.runtime_table(spec, "metrics_table", "batch_performance_metrics")

        if len(self.problems) > n_problems:
            return None
        count_sql = None
        if where_frag is not None:
            position = {p.name: i for i, p in enumerate(params, start=1)}
            count_sql = sf.render(where_frag, {ph.number: f"${position[ph.name]}" for ph in where_frag.params()},
                                  set(sf.array_param_columns(where_frag)))
        if source_name:
            self.roles[source_name] = ("source", None)
        return Operation(
            name=self.name, schema=self.entity.schema, description=spec.get("description"),
            entity=self.entity, target=self.target, operation_type=op_type, params=params,
            assignments=assignments, driver=driver, where_sql=where_sql, batch_where_sql=batch_where_sql,
            key_param=key_param, source_param=source_param, conflict_columns=conflict_columns,
            batch_size=spec.get("batch_size", DEFAULT_BATCH_SIZE), transaction=transaction,
            error_handling=error_handling, max_errors=spec.get("max_errors"),
            max_records=spec.get("max_records"), requires_confirmation=spec.get("requires_confirmation", False),
            preconditions=preconditions, timeout=timeout, progress_tracking=progress_tracking,
            progress_interval=spec.get("progress_notification_interval"), heartbeat_interval=heartbeat,
            logging_level=logging_level, log_table=log_table, metrics_table=metrics_table,
            collect_metrics=spec.get("collect_metrics", False), notify=notify, channels=list(channels),
            message_parts=message_parts, source_path=self.doc.path, source_name=display_name(self.doc.source or self.doc.path),
            count_sql=count_sql,
            param_roles={p.name: self.roles.get(p.name, ("other", None)) for p in params},
            compared_values={k: sorted(v, key=str) for k, v in sorted(self.compared.items())},
            functions=[(name, self.location(path, offset)) for name, path, offset in self.functions],
        )

    def location(self, path: tuple, offset: int | None) -> str:
        d = self.doc.diag(path, "", offset=offset)
        return f"{d.path}:{d.line}:{d.col}"

    def check_names_not_captured(self) -> None:
        """Refuse names that PostgreSQL would resolve to something other than what specql means.

        Under `#variable_conflict use_column` a column named like a routine variable is read
        instead of the variable; and a parameter is referenced as `operation.param`, which a
        table (or alias) of the same name as the operation would capture: `item.status` in an
        operation `item` on table `item` reads the column and makes the condition always true.
        """
        reserved = routine_locals()
        for column in self.target.columns.values():
            if column.name in reserved:
                self.error(self.at("operation"), f"column '{column.name}' of {self.target.name} has the name of "
                                                 f"a variable of the generated routine; rename the column")
        if self.name in reserved or self.name.lower() == "excluded":
            self.error(self.at("operation"), f"operation name '{self.name}' is a name the generated routine "
                                             f"uses itself; choose another")
        relations = {self.target.table: (self.at("operation"), None)}
        relations.update(self.relations)
        if self.name in relations:
            site, offset = relations[self.name]
            where = ("the table it operates on" if site == self.at("operation") and offset is None
                     else "a table or alias this operation's SQL names")
            self.error(self.at("operation"), f"operation name '{self.name}' is also {where}; its parameters "
                                             f"(written {qi(self.name)}.param in the routine) would read that "
                                             f"table's columns instead: rename the operation")

    def duration(self, key: str, example: str) -> str | None:
        if key not in self.spec:
            return None
        normalised = parse_interval(self.spec[key])
        if normalised is None:
            self.error(self.at(key), f"{key} {_shown(self.spec[key])} is not a positive duration of at most "
                                     f"100 years, such as \"{example}\"")
        return normalised

    def key_driver(self, frag: sf.Fragment) -> sf.Placeholder | None:
        """The `pk = ANY(:ids)` conjunct that lets the routine slice an id array."""
        arrays = sf.array_param_columns(frag)
        pk = self.target.primary_key.name
        conjunct_params = set()
        for node in sf.top_level_conjuncts(frag):
            for number, column in arrays.items():
                if column == pk and _mentions_param(node, number) and _is_array_match(node):
                    conjunct_params.add(number)
        for ph in frag.placeholders:
            if ph.number in conjunct_params and ph.field is None:
                return ph
        return None

    def param_site(self, name: str) -> tuple:
        if name in self.param_types:
            return self.param_types[name][1]
        return self.path + ("operation",)

    def message_parts(self, message: str, path: tuple) -> list[tuple[str, str]]:
        parts: list[tuple[str, str]] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(message):
            if m.start() > pos:
                parts.append(("text", message[pos:m.start()]))
            name = m.group(1).strip()
            if name not in RESULT_FIELDS:
                self.error(path, f"unknown placeholder '{{{name}}}' in notification_message"
                                 f"{did_you_mean(name, RESULT_FIELDS)}", offset=m.start())
            parts.append(("field", name))
            pos = m.end()
        if pos < len(message):
            parts.append(("text", message[pos:]))
        return parts

    def runtime_table(self, spec: dict, key: str, default: str) -> str:
        name = spec.get(key, default)
        schema, _, table = name.rpartition(".")
        schema = schema or "specql"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", table) or (schema and not re.fullmatch(
                r"[A-Za-z_][A-Za-z0-9_$]*", schema)):
            self.error(self.at(key), f"{key} must be a table name or schema.table, got '{name}'")
            return qname("specql", default)
        ident = qname(schema, table)
        if ident != qname("specql", default):
            like = qname("specql", default)
            if (ident, like) not in self.entity.extra_tables:
                self.entity.extra_tables.append((ident, like))
        return ident


def _walk_all(node):
    """Every node under `node`, inside subqueries too."""
    todo = [node]
    while todo:
        cur = todo.pop()
        if isinstance(cur, tuple):
            todo.extend(cur)
        elif isinstance(cur, sf.ast.Node):
            yield cur
            todo.extend(getattr(cur, name) for name in cur)


def _mentions_param(node, number: int) -> bool:
    return any(isinstance(n, sf.ast.ParamRef) and n.number == number for n in sf._walk(node))


def _is_array_match(node) -> bool:
    from pglast.enums import A_Expr_Kind
    return isinstance(node, sf.ast.A_Expr) and (
        (node.kind == A_Expr_Kind.AEXPR_OP_ANY and node.name[0].sval == "=")
        or (node.kind == A_Expr_Kind.AEXPR_IN and node.name[0].sval == "="))


def _build_entity(doc: Document, problems: list[Diagnostic]) -> Entity | None:
    data = doc.data
    n = len(problems)
    name = data["name"]
    _check_identifier(doc, ("name",), name, "entity name", problems)
    schema = data.get("schema", "public")
    table = data.get("table", name)
    _check_identifier(doc, ("schema",), schema, "schema name", problems)
    _check_identifier(doc, ("table",), table, "table name", problems)
    if schema == "specql":
        problems.append(doc.diag(("schema",), "schema 'specql' is reserved for specql's runtime tables"))
    columns: dict[str, Column] = {}
    if len(data["fields"]) > MAX_COLUMNS:
        problems.append(doc.diag(("fields",), f"{len(data['fields'])} fields: PostgreSQL allows at most "
                                              f"{MAX_COLUMNS} columns in a table", key=True))
    for fname, fspec in data["fields"].items():
        fpath = ("fields", fname)
        _check_identifier(doc, fpath, fname, "field name", problems, key=True)
        spec = {"type": fspec} if isinstance(fspec, str) else fspec
        columns[fname] = Column(
            name=fname, type=spec["type"], sql_type=SQL_TYPES[spec["type"]],
            nullable=spec.get("nullable", True), unique=spec.get("unique", False),
        )
    pk_name = data.get("primary_key", "id")
    pk = columns.get(pk_name)
    if pk is None:
        where = ("primary_key",) if "primary_key" in data else ("fields",)
        problems.append(doc.diag(where, f"primary key '{pk_name}' is not one of the fields"
                                        f"{did_you_mean(pk_name, columns)}"))
    elif pk.type in ("jsonb", "boolean"):
        problems.append(doc.diag(("fields", pk_name), f"a {pk.type} field cannot be the primary key"))
    else:
        pk.primary_key = True
        pk.nullable = False
    if len(problems) > n:
        return None
    return Entity(name=name, schema=schema, table=table, primary_key=pk, columns=columns,
                  manage_table=data.get("manage_table", True), description=data.get("description"),
                  source_path=doc.path, source_name=display_name(doc.source or doc.path))


def _resolve_field_details(doc: Document, entity: Entity, registry: dict[str, Entity],
                           problems: list[Diagnostic]) -> None:
    """Defaults and references need the column types and the other entities."""
    for fname, fspec in doc.data["fields"].items():
        if not isinstance(fspec, dict):
            continue
        column = entity.columns[fname]
        if "default" in fspec:
            raw = fspec["default"]
            builder = _OperationBuilder(doc, ("fields", fname), {"operation": entity.name}, entity, entity,
                                        problems, [])
            if isinstance(raw, str) and raw.startswith(":"):
                problems.append(doc.diag(("fields", fname, "default"), "a default cannot use a parameter"))
            else:
                sql = builder.value_sql(raw, column, ("fields", fname, "default"))
                if builder.param_order or builder.record_alias:
                    problems.append(doc.diag(("fields", fname, "default"), "a default cannot use a parameter"))
                else:
                    column.default_sql = sql
        if "references" in fspec:
            ref = fspec["references"]
            target_name, _, target_col = ref.partition(".")
            target = registry.get(target_name)
            if target is None:
                problems.append(doc.diag(("fields", fname, "references"),
                                         f"unknown entity '{target_name}'{did_you_mean(target_name, registry)}"))
                continue
            ref_col = target.columns.get(target_col) if target_col else target.primary_key
            if ref_col is None:
                problems.append(doc.diag(("fields", fname, "references"), f"unknown column '{target_col}' of "
                                         f"{target.name}{did_you_mean(target_col, target.columns)}"))
                continue
            if ref_col.sql_type != column.sql_type:
                problems.append(doc.diag(("fields", fname, "references"), f"'{fname}' is {column.type} but "
                                         f"{target.name}.{ref_col.name} is {ref_col.type}"))
                continue
            column.references_sql = f"{target.ident} ({ref_col.ident})"
            if target is not entity:
                entity.depends_on.add(target.key)


def build_project(docs: list[Document]) -> Project:
    """Check every document and build the model; raises SpecError listing all problems."""
    problems: list[Diagnostic] = []
    warnings: list[Diagnostic] = []
    valid: list[tuple[Document, Entity]] = []
    skipped_patterns: dict[int, set[int]] = {}
    for doc in docs:
        structural, bad_paths = schema_check(doc)
        problems.extend(structural)
        # Problems inside one pattern only keep that pattern from the semantic checks;
        # anywhere else they keep the whole file out (its shape cannot be trusted).
        in_patterns = {p[1] for p in bad_paths if len(p) >= 2 and p[0] == "patterns" and isinstance(p[1], int)}
        if any(not (len(p) >= 2 and p[0] == "patterns" and isinstance(p[1], int)) for p in bad_paths):
            continue
        skipped_patterns[id(doc)] = in_patterns
        entity = _build_entity(doc, problems)
        if entity is not None:
            valid.append((doc, entity))

    registry: dict[str, Entity] = {}
    for doc, entity in valid:
        other = registry.get(entity.name)
        if other is not None:
            problems.append(doc.diag(("name",), f"entity '{entity.name}' is also defined in {other.source_path}"))
            continue
        registry[entity.name] = entity
    tables: dict[str, Entity] = {}
    for doc, entity in valid:
        if entity.key in tables and tables[entity.key] is not entity:
            problems.append(doc.diag(("name",), f"table {entity.key} is also defined in "
                                                f"{tables[entity.key].source_path}"))
        tables.setdefault(entity.key, entity)

    routines: dict[str, tuple[str, Document, tuple]] = {}
    for doc, entity in valid:
        _resolve_field_details(doc, entity, registry, problems)
        for i, spec in enumerate(doc.data.get("patterns") or []):
            if i in skipped_patterns.get(id(doc), ()):
                continue
            path = ("patterns", i)
            target_name = spec.get("target_entity", entity.name)
            target = registry.get(target_name)
            if target is None:
                problems.append(doc.diag(path + ("target_entity",), f"unknown target_entity '{target_name}'"
                                                                    f"{did_you_mean(target_name, registry)}"))
                continue
            op = _OperationBuilder(doc, path, spec, entity, target, problems, warnings).build()
            if op is None:
                continue
            key = f"{op.schema}.{op.name}"
            if key in routines:
                _, first_doc, first_path = routines[key]
                mark = first_doc.mark(first_path + ("operation",))
                problems.append(doc.diag(path + ("operation",), f"operation '{op.name}' is also defined at "
                                                                f"{first_doc.path}:{mark.line}:{mark.col}"))
                continue
            routines[key] = (doc.path, doc, path)
            entity.operations.append(op)
            if target is not entity:
                entity.depends_on.add(target.key)

    if problems:
        raise SpecError(problems + warnings)
    return Project(entities=[e for _, e in valid], warnings=sorted(warnings))
