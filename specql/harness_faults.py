"""Planting failures and slowness, so the generated tests can watch the error modes and the timeout.

Why its own module: these are the only harness parts that change the database's behaviour
rather than its data. A failing record is planted with a trigger that raises check_violation
(23514) for chosen keys or a marker value, so the routine meets a real error from inside its
statement; a timeout is tested on a copy of the routine with a shorter interval.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

POISON_TABLE = "public.specql_test_poison"
MARKERS = {"text": "specql-planted-failure", "integer": -424242, "bigint": -424242, "numeric": -424242}


def _literal(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


class Faults:
    """Failing rows and records, a slower table, a routine with a shorter timeout."""

    conn: psycopg.Connection
    f: dict
    table: sql.Composable
    pk_column: dict

    def poison_keys(self, *keys: str) -> None:
        """Make any change of these rows fail, with a trigger (the planted failing records)."""
        self._poison_table()
        self.conn.execute(f"INSERT INTO {POISON_TABLE} SELECT unnest(%s::text[])", (list(keys),))
        pk = self.pk_column["ident"]
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
        """(record field, column, marker value) for planting a failing insert record: a text or
        number field, preferably one that identifies no row (the marker is unique either way)."""
        candidates = []
        for a in self.f["assignments"]:
            column = next(c for c in self.f["columns"] if c["name"] == a["column"])
            if a["kind"] != "record" or column["references"] or column["sql_type"] not in MARKERS:
                continue
            identifying = column["primary_key"] or column["unique"] or column["name"] in self.f["conflict_columns"]
            candidates.append((identifying, a["ref"], column["name"], MARKERS[column["sql_type"]]))
        return min(candidates, key=lambda c: c[0])[1:] if candidates else None

    def _poison_table(self) -> None:
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS {POISON_TABLE} (key text PRIMARY KEY)")

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
