"""Records for inserts and upserts, and what the rows must hold afterwards.

Why its own module: records are where partial data lives. A record may leave fields out
(README, "Partial records"): an insert then takes the column's declared default (NULL
without one), and an upsert of an existing row keeps the columns the record leaves out.
The generated tests build such records here and check the rows against them.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import psycopg
from psycopg import sql

from .harness_tables import sample_value

COMPARABLE = ("text", "integer", "bigint", "boolean", "uuid", "numeric")  # JSON round trip is exact


def is_constant(text: str) -> bool:
    return bool(re.fullmatch(r"'(?:[^']|'')*'(::\w+)?|-?\d+(\.\d+)?|\(-\d+\)|true|false", text.strip()))


class Records:
    """Records built from the record fields of the operation's values, and rows checked against them."""

    conn: psycopg.Connection
    f: dict
    table: sql.Composable

    def column(self, name: str) -> dict:  # pragma: no cover - provided by Targets
        raise NotImplementedError

    def record_fields(self) -> list[tuple[str, dict]]:
        """(record field, column) of every value read from a data_source record."""
        return [(a["ref"], self.column(a["column"])) for a in self.f["assignments"] if a["kind"] == "record"]

    def _identifying(self, column: dict) -> bool:
        return column["primary_key"] or column["unique"] or column["name"] in self.f["conflict_columns"]

    def records(self, n: int, start: int = 0) -> list[dict]:
        out = []
        references = {c["name"]: self.reference_values(c) for _, c in self.record_fields() if c["references"]}
        for i in range(start, start + n):
            rec = {}
            for field, column in self.record_fields():
                if column["name"] in references:
                    rec[field] = references[column["name"]][i % len(references[column["name"]])]
                elif self._identifying(column):
                    rec[field] = _unique_value(column, i)
                else:
                    rec[field] = sample_value(column["sql_type"], i)
            out.append(rec)
        return out

    def reference_values(self, column: dict) -> list[Any] | None:  # pragma: no cover - provided by Seeding
        raise NotImplementedError

    def vary(self, records: list[dict]) -> list[dict]:
        """The records with every field that identifies no row changed (where its type allows)."""
        out = []
        for i, rec in enumerate(records):
            rec = dict(rec)
            for field, column in self.record_fields():
                if field in rec and not self._identifying(column) and not column["references"]:
                    rec[field] = _changed(column, i, rec[field])
            out.append(rec)
        return out

    def partial(self, records: list[dict]) -> list[dict]:
        """The records, changed, each leaving out some of the fields an upsert updates: record i
        carries the j-th of them when i + j is even, so the records come in several shapes."""
        updated = set(self.f["partial_updates"])
        out = []
        for i, rec in enumerate(self.vary(records)):
            fields = [(field, column) for field, column in self.record_fields() if column["name"] in updated]
            out.append({field: value for field, value in rec.items()
                        if not any(field == f and (i + j) % 2 for j, (f, _) in enumerate(fields))})
        return out

    def partial_problems(self, records: list[dict], before: dict[str, str]) -> list[str]:
        """Rows that do not hold what a partial upsert of `records` over `before` should leave:
        the fields a record carries written, the columns it leaves out as they were."""
        before_rows = self._by_conflict([json.loads(v) for v in before.values()])
        after_rows = self._by_conflict(self.rows())
        problems = []
        for rec in records:
            key = self._conflict_key(rec)
            was, now = before_rows.get(key), after_rows.get(key)
            if was is None or now is None:
                problems.append(f"no row for {key}")
                continue
            for field, column in self.record_fields():
                name = column["name"]
                if name not in self.f["partial_updates"]:
                    continue
                if field not in rec and now[name] != was[name]:
                    problems.append(f"{key}: {name} left out but changed from {was[name]!r} to {now[name]!r}")
                elif field in rec and column["sql_type"] in COMPARABLE and now[name] != rec[field]:
                    problems.append(f"{key}: {name} is {now[name]!r}, the record carries {rec[field]!r}")
        return problems

    def _conflict_key(self, row_or_record: dict, from_row: bool = False) -> tuple:
        fields = {column["name"]: field for field, column in self.record_fields()}
        names = self.f["conflict_columns"]
        return tuple(str(row_or_record[n] if from_row else row_or_record[fields[n]]) for n in names)

    def _by_conflict(self, rows: list[dict]) -> dict[tuple, dict]:
        return {self._conflict_key(r, from_row=True): r for r in rows}

    def rows(self) -> list[dict]:
        return [r[0] for r in self.conn.execute(sql.SQL("SELECT to_jsonb(t) FROM {} AS t").format(self.table))]

    def sparse(self, records: list[dict]) -> list[dict]:
        """The records without every field they may leave out: the ones that identify no row
        and whose column is nullable or has a declared default."""
        optional = {field for field, column in self.record_fields() if not self._identifying(column)
                    and (column["nullable"] or column["default_sql"] is not None)}
        return [{k: v for k, v in rec.items() if k not in optional} for rec in records]

    def default_problems(self, records: list[dict]) -> list[str]:
        """Columns that, in the rows written from `records`, do not hold what a field a record
        left out must give: the declared default (not NULL when it is volatile), else NULL."""
        problems = []
        left_out = {field for rec in records for field, _ in self.record_fields() if field not in rec}
        for field, column in self.record_fields():
            if field not in left_out:
                continue
            ident, default = sql.SQL(column["ident"]), column["default_sql"]
            wrong = sql.SQL("{} IS NOT NULL").format(ident)
            if default is not None:
                first, second = (self._evaluate(default, column) for _ in range(2))
                wrong = (sql.SQL("to_jsonb({}) IS DISTINCT FROM {}::jsonb").format(ident, sql.Literal(json.dumps(first)))
                         if first == second else sql.SQL("{} IS NULL").format(ident))  # volatile: any value
            n = self.conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(self.table, wrong)).fetchone()[0]
            if n:
                what = f"its default {default}" if default is not None else "NULL"
                problems.append(f"{n} rows whose record left out {field!r}: {column['name']} is not {what}")
        return problems

    def _evaluate(self, default_sql: str, column: dict):
        return self.conn.execute(sql.SQL("SELECT to_jsonb(({})::{})").format(
            sql.SQL(default_sql.replace("%", "%%")), sql.SQL(column["sql_type"]))).fetchone()[0]

    def records_present(self, records: list[dict], sample: int = 50) -> bool:
        """Whether rows holding the (comparable) fields of these records exist."""
        fields = [(field, column["name"]) for field, column in self.record_fields()
                  if column["sql_type"] in COMPARABLE]
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

    def assigned_values(self, params: dict) -> dict[str, Any]:
        """column -> the JSON value every target row must hold after an update (for
        assignments of a parameter or a constant; now() and other SQL are not predictable)."""
        out: dict[str, Any] = {}
        for a in self.f["assignments"]:
            column = self.column(a["column"])
            if column["sql_type"] not in COMPARABLE:
                continue
            if a["kind"] == "param" and params.get(a["ref"]) is not None:
                out[a["column"]] = params[a["ref"]]
            elif a["kind"] == "sql" and is_constant(a["sql"]):
                out[a["column"]] = self._evaluate(a["sql"], column)
        return out


def _unique_value(column: dict, i: int):
    if column["type"] == "uuid":
        return str(uuid.UUID(int=i + 1_000_003))
    if column["type"] in ("integer", "bigint"):
        return i + 1_000_000
    return f"unique-{i}"


def _changed(column: dict, i: int, value):
    """Another value of the column's type, or the same when the type has no comparable change."""
    t = column["sql_type"]
    if t == "text":
        return f"changed {i}"
    if t in ("integer", "bigint"):
        return 900_000 + i
    if t == "numeric":
        return 900_000.5 + i
    if t == "boolean":
        return not value if isinstance(value, bool) else False
    return value
