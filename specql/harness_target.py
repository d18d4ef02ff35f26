"""Which rows an operation should touch, worked out independently of the routine.

Why its own module: a generated test is only worth something when its expectation does not
come from the code under test. Here the entity's condition is re-run as a prepared
statement of its own (the `$n` text the model keeps for tests), parameters are chosen from
the seeded data so the condition matches a share of the rows, and the table is snapshotted
to compare before and after.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import psycopg
from psycopg import sql

from .harness_tables import sample_value


def adapt(value, sql_type: str):
    """A Python value as psycopg should send it for a parameter of sql_type."""
    if sql_type == "jsonb" and value is not None:
        return psycopg.types.json.Jsonb(value)
    return value


def placeholders(where: str, params: list[dict]) -> str:
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


class Targets:
    """Parameters chosen from the seeded rows, the keys they should reach, and table snapshots."""

    conn: psycopg.Connection
    f: dict
    table: sql.Composable
    pk_column: dict
    pk: sql.Composable

    def params(self) -> dict:
        """Values for every parameter except the data_source, chosen from the seeded data."""
        values: dict[str, Any] = {}
        for i, p in enumerate(self.f["params"]):
            role, column = p["role"], p["column"]
            if role == "source":
                continue
            if role == "in" and column == self.f["pk"]:
                values[p["name"]] = self.key_list()
            elif role == "in":
                values[p["name"]] = self.column_values(column, 3)
            elif role in ("compare", "cutoff"):  # cutoff: a purge's, the median deleted_at
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
        return chosen + missing.get(self.pk_column["type"], ["missing-1", "missing-2"])

    def column_values(self, column: str, n: int) -> list:
        ident = sql.SQL(self.column(column)["ident"])
        return [r[0] for r in self.conn.execute(
            sql.SQL("SELECT DISTINCT {} FROM {} WHERE {} IS NOT NULL ORDER BY 1 LIMIT %s").format(
                ident, self.table, ident), (n,)).fetchall()]

    def middle_value(self, column: str):
        """The median value of a column: `col < v` and `col = v` then both match some rows."""
        ident = sql.SQL(self.column(column)["ident"])
        row = self.conn.execute(
            sql.SQL("SELECT {c} FROM {t} WHERE {c} IS NOT NULL ORDER BY {c} "
                    "OFFSET (SELECT count(*) / 2 FROM {t} WHERE {c} IS NOT NULL) LIMIT 1").format(
                c=ident, t=self.table)).fetchone()
        return row[0] if row else None

    def column(self, name: str) -> dict:
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
            k=self.pk, t=self.table, w=sql.SQL(placeholders(where, self.f["params"])))
        args = {f"p{i}": adapt(params.get(p["name"]), p["sql_type"])
                for i, p in enumerate(self.f["params"], start=1)}
        return [r[0] for r in self.conn.execute(query, args).fetchall()]

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

    def drop_rows(self, keys: list[str]) -> None:
        """Delete these rows (by key text), e.g. to keep a target within max_records."""
        self.conn.execute(sql.SQL("DELETE FROM {} WHERE {}::text = ANY(%s)").format(self.table, self.pk), (keys,))

    def snapshot(self) -> dict[str, str]:
        """key text -> the row as jsonb text."""
        rows = self.conn.execute(
            sql.SQL("SELECT {}::text, to_jsonb(t)::text FROM {} AS t").format(self.pk, self.table)).fetchall()
        return dict(rows)

    def count(self) -> int:
        return self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self.table)).fetchone()[0]
