"""Tables for generated tests: realistic rows seeded from the field types, and the table itself
when specql does not manage it.

Why its own module: seeding is the part of the harness that knows SQL types and value shapes;
the rest of the harness only knows which rows an operation should touch. A column that
references another entity takes its values from that entity's table, seeded first (and
created first when it is not managed), so foreign keys hold and a condition on the column
matches a share of the rows.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg import sql

MAX_SEED_ROWS = 200_000
PARENT_ROWS = 10  # rows seeded into a referenced table: a condition on the reference matches about a tenth


def _literal(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def seed_expression(column: dict, salt: int, values: list, few: bool = False) -> str:
    """SQL producing a realistic value for row number g (an integer column `g`). few: a
    column a parameter is compared with gets few distinct values, so `col = :p` matches
    a share of the rows rather than one. A unique column gets a distinct value per row."""
    t = column["type"]
    # hashtext decorrelates the columns: each condition matches about its own share of rows
    spread = f"(abs(hashtext('{salt}:' || g)) % 1000)"
    pick = f"(abs(hashtext('{salt}#' || g)) % {len(values) + 1})"
    label = column["name"][:20].replace(chr(39), "")
    if values and not column["unique"]:
        # Cycle through the constants the conditions compare with, plus one that matches none.
        literals = [str(v) for v in values]
        options = ", ".join(_literal(v) for v in literals) + ", " + _literal(f"other-{salt}")
        if t in ("integer", "bigint", "decimal", "numeric"):
            options = ", ".join(literals) + ", -1"
            return f"(ARRAY[{options}])[1 + {pick}]::{column['sql_type']}"
        if t == "boolean":
            return f"({spread} % 2 = 0)"
        return f"(ARRAY[{options}])[1 + {pick}]"
    if column["unique"]:
        return _unique_expression(column, salt, label)
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
    if few:
        return f"'{label} ' || ({spread} % 10)"
    if "email" in column["name"].lower():
        return "'user' || g || '@example.com'"
    return f"'{label} ' || g"


def _unique_expression(column: dict, salt: int, label: str) -> str:
    t = column["type"]
    if t == "uuid":
        return f"md5('{salt}:' || g)::uuid"
    if t in ("integer", "bigint", "decimal", "numeric"):
        return f"g::{column['sql_type']}"
    if t == "timestamp":
        return "timestamptz '2024-01-01' + g * interval '1 second'"
    if t == "date":
        return "date '2000-01-01' + g::integer"
    if t == "jsonb":
        return "jsonb_build_object('n', g)"
    if "email" in column["name"].lower():
        return "'user' || g || '@example.com'"
    return f"'{label} ' || g"


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


def create_table(conn: psycopg.Connection, table: dict) -> None:
    """CREATE TABLE IF NOT EXISTS from the entity's fields (for manage_table: false, which no
    migration creates), after the tables its references point at."""
    for column in table["columns"]:
        if column["references"] and not column["references"]["manage_table"]:
            create_table(conn, column["references"])
    parts = []
    for c in table["columns"]:
        part = f"{c['ident']} {c['sql_type']}"
        part += " PRIMARY KEY" if c["primary_key"] else (" NOT NULL" if not c["nullable"] else "")
        part += f" DEFAULT {c['default_sql']}" if c["default_sql"] is not None else ""
        part += " UNIQUE" if c["unique"] and not c["primary_key"] else ""
        part += f" REFERENCES {c['references_sql']}" if c["references_sql"] else ""
        parts.append(part)
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {table['table_schema_ident']}")
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
        sql.SQL(table["table"]), sql.SQL(", ".join(parts).replace("%", "%%"))))


def parent_values(conn: psycopg.Connection, column: dict) -> list[Any]:
    """Values of the column a reference points at, seeding the referenced table when empty."""
    parent = column["references"]
    target = next(c for c in parent["columns"] if c["name"] == parent["column"])
    query = sql.SQL("SELECT to_jsonb({c}) FROM {t} WHERE {c} IS NOT NULL ORDER BY {c} LIMIT %s").format(
        c=sql.SQL(target["ident"]), t=sql.SQL(parent["table"]))
    values = [r[0] for r in conn.execute(query, (PARENT_ROWS,)).fetchall()]
    if not values:
        insert_rows(conn, parent, 1, PARENT_ROWS)
        values = [r[0] for r in conn.execute(query, (PARENT_ROWS,)).fetchall()]
    return values


def insert_rows(conn: psycopg.Connection, table: dict, start: int, stop: int, few: frozenset = frozenset(),
                compared_values: dict | None = None) -> None:
    """Append rows number start..stop to a table, with values derived from the field types."""
    columns, exprs = [], []
    for salt, column in enumerate(table["columns"]):
        if column["references"] and not column["primary_key"]:
            values = parent_values(conn, column)
            options = ", ".join(_literal(v if isinstance(v, str) else str(v)) for v in values)
            expr = f"(ARRAY[{options}]::text[])[1 + abs(hashtext('{salt}#' || g)) % {len(values)}]::{column['sql_type']}"
        elif column["references_sql"] and column["nullable"]:
            continue  # a reference to its own table, or to one the facts do not know: NULL holds
        elif column["primary_key"] and column["type"] in ("integer", "bigint"):
            expr = "g"
        elif column["primary_key"] and column["type"] != "uuid":
            expr = "'key-' || g"
        elif table.get("soft_delete") and column["name"] in ("deleted_at", "deleted_by", "deletion_reason"):
            # soft_delete: about half the rows soft-deleted (at spread times), the others active.
            value = (seed_expression(column, salt, []) if column["name"] == "deleted_at"
                     else _literal(f"seeded {column['name']}"))
            expr = f"CASE WHEN abs(hashtext('deleted#' || g)) % 2 = 0 THEN NULL ELSE {value} END"
        else:
            expr = seed_expression(column, salt, (compared_values or {}).get(column["name"], []),
                                   few=column["name"] in few)
        columns.append(column["ident"])
        exprs.append(expr)
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM generate_series(%s::bigint, %s::bigint) AS s(g)").format(
            sql.SQL(table["table"]), sql.SQL(", ").join(sql.SQL(c) for c in columns),
            sql.SQL(", ").join(sql.SQL(e.replace("%", "%%")) for e in exprs)),
        (start, stop))
    conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(table["table"])))


class Seeding:
    """The harness's rows: seeded into the operation's table until its target is big enough."""

    conn: psycopg.Connection
    f: dict
    seeded: int

    def create_table(self) -> None:
        create_table(self.conn, self.f)

    def seed(self, n: int) -> None:
        """Append n rows with values derived from the field types."""
        compared = {p["column"] for p in self.f["params"] if p["role"] == "compare"}
        few = frozenset(c["name"] for c in self.f["columns"] if c["name"] in compared and not c["unique"])
        insert_rows(self.conn, self.f, self.seeded + 1, self.seeded + n, few, self.f["compared_values"])
        self.seeded += n

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

    def target_keys(self, params: dict) -> list[str]:  # pragma: no cover - provided by Targets
        raise NotImplementedError

    def reference_values(self, column: dict) -> list[Any] | None:
        """Values a record may carry in a column that references another table (seeded first)."""
        return parent_values(self.conn, column) if column["references"] else None
