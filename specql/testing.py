"""What generated tests use to exercise one operation on a real database.

A generated test module holds the facts of its operation (a dict written by `specql
generate tests`) and its assertions; this module does the mechanics: seed realistic rows
from the field types, work out independently which rows the operation should touch
(the condition is re-run as a prepared statement), snapshot the table, plant a failing
row, call the routine.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

RESULT_FIELDS = ("operation_id", "operation", "status", "total_records", "processed_records",
                 "failed_records", "error_count", "batch_count", "started_at", "completed_at")
MAX_SEED_ROWS = 200_000
POISON_TABLE = "public.specql_test_poison"


def _seed_expression(column: dict, salt: int, values: list, few: bool = False) -> str:
    """SQL producing a realistic value for row number g (an integer column `g`). few: a
    column a parameter is compared with gets few distinct values, so `col = :p` matches
    a share of the rows rather than one."""
    t = column["type"]
    # hashtext decorrelates the columns: each condition matches about its own share of rows
    spread = f"(abs(hashtext('{salt}:' || g)) % 1000)"
    pick = f"(abs(hashtext('{salt}#' || g)) % {len(values) + 1})"
    if values:
        # Cycle through the constants the conditions compare with, plus one that matches none.
        literals = [str(v) for v in values]
        options = ", ".join(_literal(v) for v in literals) + ", " + _literal(f"other-{salt}")
        if t in ("integer", "bigint", "decimal", "numeric"):
            options = ", ".join(literals) + ", -1"
            return f"(ARRAY[{options}])[1 + {pick}]::{column['sql_type']}"
        if t == "boolean":
            return f"({spread} % 2 = 0)"
        return f"(ARRAY[{options}])[1 + {pick}]"
    if t == "uuid":
        return f"md5('{salt}:' || g)::uuid"
    if t in ("integer", "bigint"):
        return f"({spread} % 10)"  # few distinct values: `col = :p` matches a tenth of the rows
    if t in ("decimal", "numeric"):
        return f"round({spread} * 1.25 + 0.5, 2)"
    if t == "boolean":
        return f"({spread} % 2 = 0)"
    if t == "timestamp":
        return f"now() - {spread} * interval '18 hours'"
    if t == "date":
        return f"current_date - {spread}"
    if t == "jsonb":
        return "jsonb_build_object('n', g)"
    name = column["name"].lower()
    if few:
        return f"'{column['name'][:20].replace(chr(39), '')} ' || ({spread} % 10)"
    if "email" in name:
        return "'user' || g || '@example.com'"
    return f"'{column['name'][:20].replace(chr(39), '')} ' || g"


def _literal(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def sample_value(sql_type: str, i: int = 0) -> Any:
    """A realistic Python value of a PostgreSQL type, for parameters and jsonb records."""
    base = sql_type.removesuffix("[]")
    value: Any
    if base == "uuid":
        value = str(uuid.UUID(int=(i + 1) * 7919 + 11))
    elif base in ("integer", "bigint"):
        value = 40 + i
    elif base == "numeric":
        value = round(12.5 + i * 1.25, 2)
    elif base == "boolean":
        value = True
    elif base == "timestamptz":
        value = "2024-03-01T12:00:00+00:00"
    elif base == "date":
        value = "2024-03-01"
    elif base == "jsonb":
        value = {"specql": i}
    elif base == "interval":
        value = "1 day"
    else:
        value = f"specql value {i}"
    return [value] if sql_type.endswith("[]") else value


@dataclass
class Run:
    result: dict
    notices: list[str]


class Harness:
    """One operation on one test database."""

    def __init__(self, conn: psycopg.Connection, facts: dict):
        self.conn = conn
        self.f = facts
        self.table = sql.SQL(facts["table"])
        self.pk = sql.SQL(facts["pk"]["ident"])
        self.seeded = 0

    # -- data

    def seed(self, n: int) -> None:
        """Append n rows with values derived from the field types."""
        columns, exprs = [], []
        compared = {p["column"] for p in self.f["params"] if p["role"] == "compare"}
        for salt, column in enumerate(self.f["columns"]):
            if column["references"] and column["nullable"]:
                continue  # no rows to point at; NULL keeps the foreign key satisfied
            if column["primary_key"] and column["type"] in ("integer", "bigint"):
                expr = "g"
            elif column["primary_key"] and column["type"] not in ("uuid",):
                expr = "'key-' || g"
            else:
                expr = _seed_expression(column, salt, self.f["compared_values"].get(column["name"], []),
                                        few=column["name"] in compared and not column["unique"])
            columns.append(column["ident"])
            exprs.append(expr)
        start, stop = self.seeded + 1, self.seeded + n
        self.conn.execute(
            sql.SQL("INSERT INTO {} ({}) SELECT {} FROM generate_series(%s::bigint, %s::bigint) AS s(g)").format(
                self.table, sql.SQL(", ").join(sql.SQL(c) for c in columns),
                sql.SQL(", ").join(sql.SQL(e.replace("%", "%%")) for e in exprs)),
            (start, stop))
        self.seeded = stop
        self.conn.execute(sql.SQL("ANALYZE {}").format(self.table))

    def seed_until(self, params_for, at_least: int, cap: int = MAX_SEED_ROWS) -> tuple[dict, list[str]]:
        """Seed until the operation's target holds `at_least` rows; returns (params, target)."""
        chunk = max(200, self.f["batch_size"] * 3)
        while True:
            self.seed(chunk)
            params = params_for()
            target = self.target_keys(params)
            if len(target) >= at_least or self.seeded >= cap:
                return params, target
            chunk = min(chunk * 2, cap - self.seeded)

    def make_target_dense(self, params_for) -> tuple[dict, list[str]]:
        """Renumber the integer keys so the target rows come first, with consecutive keys
        from 1 (the other rows follow): a condition walk then meets a dense stretch of
        matching keys. Returns (params, target) recomputed, as both may depend on keys."""
        target = self.target_keys(params_for())
        # Through negative keys, so no two rows ever share a key (seeded keys are positive).
        self.conn.execute(sql.SQL("UPDATE {t} SET {k} = -{k}").format(t=self.table, k=self.pk))
        self.conn.execute(
            sql.SQL("UPDATE {t} SET {k} = m.new FROM (SELECT {k} AS old, row_number() OVER "
                    "(ORDER BY (-{k})::text = ANY(%s) DESC, {k} DESC) AS new FROM {t}) AS m "
                    "WHERE {t}.{k} = m.old").format(t=self.table, k=self.pk),
            (target,))
        self.conn.execute(sql.SQL("ANALYZE {}").format(self.table))
        params = params_for()
        return params, self.target_keys(params)

    def snapshot(self) -> dict[str, str]:
        rows = self.conn.execute(
            sql.SQL("SELECT {}::text, to_jsonb(t)::text FROM {} AS t").format(self.pk, self.table)).fetchall()
        return dict(rows)

    def count(self) -> int:
        return self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self.table)).fetchone()[0]

    # -- parameters and the expected target

    def params(self) -> dict:
        """Values for every parameter except the data_source, chosen from the seeded data."""
        values: dict[str, Any] = {}
        for i, p in enumerate(self.f["params"]):
            role, column = p["role"], p["column"]
            if role == "source":
                continue
            if role == "in" and column == self.f["pk"]["name"]:
                values[p["name"]] = self.key_list()
            elif role == "in":
                values[p["name"]] = self.column_values(column, 3)
            elif role == "compare":
                values[p["name"]] = self.middle_value(column)
            else:
                values[p["name"]] = sample_value(p["sql_type"], i)
        return values

    def key_list(self) -> list:
        """Every other key, in a scrambled (not key) order, plus two keys that do not exist."""
        keys = [r[0] for r in self.conn.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY md5({}::text)").format(self.pk, self.table, self.pk)).fetchall()]
        chosen = keys[::2]
        missing = {"uuid": [uuid.UUID(int=1), uuid.UUID(int=2)], "integer": [-1, -2], "bigint": [-1, -2]}
        return chosen + missing.get(self.f["pk"]["type"], ["missing-1", "missing-2"])

    def column_values(self, column: str, n: int) -> list:
        ident = sql.SQL(self._column(column)["ident"])
        return [r[0] for r in self.conn.execute(
            sql.SQL("SELECT DISTINCT {} FROM {} WHERE {} IS NOT NULL ORDER BY 1 LIMIT %s").format(
                ident, self.table, ident), (n,)).fetchall()]

    def middle_value(self, column: str):
        """The median value of a column: `col < v` and `col = v` then both match some rows."""
        ident = sql.SQL(self._column(column)["ident"])
        row = self.conn.execute(
            sql.SQL("SELECT {c} FROM {t} WHERE {c} IS NOT NULL ORDER BY {c} "
                    "OFFSET (SELECT count(*) / 2 FROM {t}) LIMIT 1").format(c=ident, t=self.table)).fetchone()
        return row[0] if row else None

    def _column(self, name: str) -> dict:
        return next(c for c in self.f["columns"] if c["name"] == name)

    def target_keys(self, params: dict) -> list[str]:
        """Keys of the rows the operation should touch, in primary key order, computed by
        running the entity's condition as its own prepared statement."""
        where = self.f["count_sql"]
        # ORDER BY table.pk: a bare name would sort by the output column, the key's text.
        if not where:
            return [r[0] for r in self.conn.execute(
                sql.SQL("SELECT {k}::text FROM {t} ORDER BY {t}.{k}").format(k=self.pk, t=self.table)).fetchall()]
        query = sql.SQL("SELECT {k}::text FROM {t} WHERE {w} ORDER BY {t}.{k}").format(
            k=self.pk, t=self.table, w=sql.SQL(_placeholders(where, self.f["params"])))
        args = {f"p{i}": self._adapt(params.get(p["name"]), p["sql_type"])
                for i, p in enumerate(self.f["params"], start=1)}
        rows = self.conn.execute(query, args).fetchall()
        return [r[0] for r in rows]

    @staticmethod
    def _adapt(value, sql_type: str):
        if sql_type == "jsonb" and value is not None:
            return psycopg.types.json.Jsonb(value)
        return value

    # -- records for insert and upsert

    def records(self, n: int, start: int = 0) -> list[dict]:
        out = []
        for i in range(start, start + n):
            rec = {}
            for a in self.f["assignments"]:
                if a["kind"] != "record":
                    continue
                column = self._column(a["column"])
                if column["primary_key"] or column["unique"]:
                    rec[a["field"]] = self._unique_value(column, i)
                else:
                    rec[a["field"]] = sample_value(column["sql_type"], i)
            out.append(rec)
        return out

    @staticmethod
    def _unique_value(column: dict, i: int):
        if column["type"] == "uuid":
            return str(uuid.UUID(int=i + 1_000_003))
        if column["type"] in ("integer", "bigint"):
            return i + 1_000_000
        return f"unique-{i}"

    # -- checking values

    _COMPARABLE = ("text", "integer", "bigint", "boolean", "uuid", "numeric")

    def assigned_values(self, params: dict) -> dict[str, Any]:
        """column -> the JSON value every target row must hold after an update (for
        assignments of a parameter or a constant; now() and other SQL are not predictable)."""
        out: dict[str, Any] = {}
        for a in self.f["assignments"]:
            column = self._column(a["column"])
            if column["sql_type"] not in self._COMPARABLE:
                continue
            if a["kind"] == "param" and params.get(a["param"]) is not None:
                out[a["column"]] = params[a["param"]]
            elif a["kind"] == "sql" and _is_constant(a["sql"]):
                out[a["column"]] = self.conn.execute(sql.SQL("SELECT to_jsonb(({})::{})").format(
                    sql.SQL(a["sql"].replace("%", "%%")), sql.SQL(column["sql_type"]))).fetchone()[0]
        return out

    def records_present(self, records: list[dict], sample: int = 50) -> bool:
        """Whether rows holding the (comparable) fields of these records exist."""
        fields = [(a["field"], a["column"]) for a in self.f["assignments"]
                  if a["kind"] == "record" and self._column(a["column"])["sql_type"] in self._COMPARABLE]
        if not fields:
            return True
        step = max(1, len(records) // sample)
        for rec in records[::step]:
            probe = {column: rec[field] for field, column in fields if rec.get(field) is not None}
            found = self.conn.execute(sql.SQL("SELECT count(*) FROM {} AS t WHERE to_jsonb(t) @> %s").format(
                self.table), (psycopg.types.json.Jsonb(probe),)).fetchone()[0]
            if found == 0:
                return False
        return True

    def vary(self, records: list[dict]) -> list[dict]:
        """The records with every non-key text or integer field changed."""
        out = []
        for i, rec in enumerate(records):
            rec = dict(rec)
            for a in self.f["assignments"]:
                column = self._column(a["column"]) if a["kind"] == "record" else None
                if column is None or column["primary_key"] or column["unique"]:
                    continue
                if column["sql_type"] == "text":
                    rec[a["field"]] = f"changed {i}"
                elif column["sql_type"] in ("integer", "bigint"):
                    rec[a["field"]] = 900_000 + i
            out.append(rec)
        return out

    # -- calling

    def call(self, params: dict, *, conn: psycopg.Connection | None = None, routine: str | None = None) -> Run:
        conn = conn or self.conn
        notices: list[str] = []
        handler = lambda d: notices.append(d.message_primary or "")  # noqa: E731
        conn.add_notice_handler(handler)
        try:
            args = sql.SQL(", ").join(
                sql.SQL("{} => {}::{}").format(sql.SQL(p["ident"]), sql.Placeholder(p["name"]), sql.SQL(p["sql_type"]))
                for p in self.all_params() if p["name"] in params)
            adapted = {p["name"]: self._adapt(params[p["name"]], p["sql_type"])
                       for p in self.all_params() if p["name"] in params}
            routine = sql.SQL(routine or self.f["routine"])
            if self.f["is_procedure"]:
                row = conn.execute(sql.SQL("CALL {}({})").format(routine, args), adapted).fetchone()
                values = conn.execute("SELECT (%s::specql.batch_operation_result).*", (row[0],)).fetchone()
                result = dict(zip(RESULT_FIELDS, values))
            else:
                cur = conn.cursor(row_factory=dict_row)
                result = cur.execute(sql.SQL("SELECT * FROM {}({})").format(routine, args), adapted).fetchone()
        finally:
            conn.remove_notice_handler(handler)
        return Run(result, notices)

    def all_params(self) -> list[dict]:
        extra = [{"name": "confirm", "ident": "confirm", "sql_type": "boolean"}] if self.f["requires_confirmation"] else []
        return self.f["params"] + extra

    # -- what the routine logged

    def batch_log(self, operation_id) -> list[tuple]:
        return self.conn.execute(
            sql.SQL("SELECT batch_number, records_processed, records_failed, status FROM {} "
                    "WHERE operation_id = %s ORDER BY batch_number").format(sql.SQL(self.f["log_table"])),
            (operation_id,)).fetchall()

    def errors(self, operation_id) -> list[tuple]:
        return self.conn.execute(
            "SELECT batch_number, sqlstate, error_message, failed_records FROM specql.batch_operation_errors "
            "WHERE operation_id = %s ORDER BY id", (operation_id,)).fetchall()

    # -- planting failures

    def poison_keys(self, *keys: str) -> None:
        """Make any change of these rows fail, with a trigger (the planted failing records)."""
        self._poison_table()
        self.conn.execute(f"INSERT INTO {POISON_TABLE} SELECT unnest(%s::text[])", (list(keys),))
        pk = self.f["pk"]["ident"]
        self.conn.execute(sql.SQL(f"""
            CREATE OR REPLACE FUNCTION public.specql_test_fail_poisoned() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF EXISTS (SELECT 1 FROM {POISON_TABLE} WHERE key = OLD.{pk}::text) THEN
                    RAISE EXCEPTION 'planted failure for %', OLD.{pk} USING ERRCODE = 'check_violation';
                END IF;
                RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
            END $$""").format())
        self.conn.execute(sql.SQL(
            "CREATE TRIGGER specql_test_fail_poisoned BEFORE UPDATE OR DELETE ON {} "
            "FOR EACH ROW EXECUTE FUNCTION public.specql_test_fail_poisoned()").format(self.table))

    def poison_records(self, field: str, column: str, marker: str) -> None:
        """Make inserting (or upserting) a record whose `column` reads `marker` fail."""
        self._poison_table()
        self.conn.execute(f"INSERT INTO {POISON_TABLE} VALUES (%s)", (marker,))
        self.conn.execute(sql.SQL(f"""
            CREATE OR REPLACE FUNCTION public.specql_test_fail_poisoned() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF EXISTS (SELECT 1 FROM {POISON_TABLE} WHERE key = to_jsonb(NEW) ->> {_literal(column)}) THEN
                    RAISE EXCEPTION 'planted failure' USING ERRCODE = 'check_violation';
                END IF;
                RETURN NEW;
            END $$""").format())
        self.conn.execute(sql.SQL(
            "CREATE TRIGGER specql_test_fail_poisoned BEFORE INSERT OR UPDATE ON {} "
            "FOR EACH ROW EXECUTE FUNCTION public.specql_test_fail_poisoned()").format(self.table))

    def poisonable_field(self) -> tuple[str, str, Any] | None:
        """(record field, column, marker value) for planting a failing insert record."""
        for a in self.f["assignments"]:
            if a["kind"] != "record":
                continue
            column = self._column(a["column"])
            if column["primary_key"] or column["unique"]:
                continue
            if column["sql_type"] == "text":
                return a["field"], column["name"], "specql-planted-failure"
            if column["sql_type"] in ("integer", "bigint"):
                return a["field"], column["name"], -424242
        return None

    def _poison_table(self) -> None:
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS {POISON_TABLE} (key text PRIMARY KEY)")

    # -- a copy of the routine with a shorter timeout

    def timeout_probe(self, interval: str) -> str:
        """Create the routine's own code with its timeout set to `interval` in schema
        specql_probe (same name: the body refers to its parameters by routine name)."""
        oid = self.conn.execute("SELECT %s::regproc::oid", (self.f["routine"],)).fetchone()[0]
        definition = self.conn.execute("SELECT pg_get_functiondef(%s)", (oid,)).fetchone()[0]
        original = f"interval '{self.f['timeout']}'"
        assert original in definition, "the routine has no timeout check"
        probe = definition.replace(original, f"interval '{interval}'")
        probe = probe.replace(self.f["routine"] + "(", "specql_probe." + self.f["name_ident"] + "(", 1)
        self.conn.execute("CREATE SCHEMA IF NOT EXISTS specql_probe")
        self.conn.execute(probe)
        return "specql_probe." + self.f["name_ident"]

    def slow_down(self, seconds: float) -> None:
        """Each statement on the table takes at least `seconds` (a statement-level trigger)."""
        self.conn.execute(f"""
            CREATE OR REPLACE FUNCTION public.specql_test_slow() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep({float(seconds)}); RETURN NULL; END $$""")
        self.conn.execute(sql.SQL(
            "CREATE TRIGGER specql_test_slow AFTER INSERT OR UPDATE OR DELETE ON {} "
            "FOR EACH STATEMENT EXECUTE FUNCTION public.specql_test_slow()").format(self.table))


def _placeholders(where: str, params: list[dict]) -> str:
    """`$n` outside quoted text -> a typed psycopg placeholder; `%` doubled elsewhere."""
    out, i = [], 0
    while i < len(where):
        ch = where[i]
        if ch in "'\"":
            j = i + 1
            while j < len(where) and not (where[j] == ch and where[j + 1:j + 2] != ch):
                j += 2 if where[j] == ch else 1
            out.append(where[i:j + 1].replace("%", "%%"))
            i = j + 1
        elif ch == "$" and (m := re.match(r"\$(\d+)", where[i:])):
            n = int(m.group(1))
            out.append(f"(%(p{n})s::{params[n - 1]['sql_type']})")
            i += len(m.group(0))
        else:
            out.append("%%" if ch == "%" else ch)
            i += 1
    return "".join(out)


def _is_constant(text: str) -> bool:
    return bool(re.fullmatch(r"'(?:[^']|'')*'(::\w+)?|-?\d+(\.\d+)?|\(-\d+\)|true|false", text.strip()))


def batches(n: int, size: int) -> int:
    return math.ceil(n / size) if n else 0


def as_json(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)
