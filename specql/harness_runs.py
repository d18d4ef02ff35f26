"""Interrupting, resuming and obstructing a run, so the generated tests can check the run machinery.

Why its own module: cancel, resume and retry are properties of a run over time, not of a
single call's result. To test them the harness must stop a run at a known point, count how
often each row was really changed (a data snapshot cannot tell a batch applied twice with an
idempotent change from one applied once), and hold a row lock from another session:

- a cancel is requested from a statement trigger on the target, inside the run's first batch
  (specql.cancel_operation), so the run stops before its second batch at the same point every
  time, with no timing involved;
- a row trigger records every change of a target row (TOUCHES_TABLE); rolled back batches
  roll their records back with them, so the counts are the changes that stayed;
- a row lock is held by a second connection and released by a timer thread.
"""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from .contract import SCHEMA
from .harness_calls import NOT_BATCHES

TOUCHES_TABLE = "public.specql_test_touches"
RUNS_TABLE = f"{SCHEMA}.batch_operation_runs"


def _literal(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


class Runs:
    """Cancel a run after its first batch, count row changes, read the run row, hold a lock."""

    conn: psycopg.Connection
    f: dict
    table: sql.Composable
    pk_column: dict

    def cancel_after_first_batch(self) -> None:
        """Every run of the operation that changes the target gets a cancel request from its own
        first statement on the table: it stops before its second batch, status cancelled."""
        self.conn.execute(f"""
            CREATE OR REPLACE FUNCTION public.specql_test_cancel() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM {SCHEMA}.cancel_operation(r.operation_id) FROM {RUNS_TABLE} AS r
                WHERE r.operation = {_literal(self.f["name"])} AND r.status = 'running';
                RETURN NULL;
            END $$""")
        self.conn.execute(sql.SQL(
            "CREATE TRIGGER specql_test_cancel AFTER INSERT OR UPDATE OR DELETE ON {} "
            "FOR EACH STATEMENT EXECUTE FUNCTION public.specql_test_cancel()").format(self.table))

    def stop_cancelling(self) -> None:
        self.conn.execute(sql.SQL("DROP TRIGGER specql_test_cancel ON {}").format(self.table))

    def record_touches(self) -> None:
        """From now on, each row change that commits leaves the row's key in TOUCHES_TABLE."""
        pk = self.pk_column["ident"]
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS {TOUCHES_TABLE} (key text NOT NULL)")
        self.conn.execute(f"""
            CREATE OR REPLACE FUNCTION public.specql_test_touch() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'DELETE' THEN
                    INSERT INTO {TOUCHES_TABLE} VALUES (OLD.{pk}::text);
                ELSE
                    INSERT INTO {TOUCHES_TABLE} VALUES (NEW.{pk}::text);
                END IF;
                RETURN NULL;
            END $$""")
        self.conn.execute(sql.SQL(
            "CREATE TRIGGER specql_test_touch AFTER INSERT OR UPDATE OR DELETE ON {} "
            "FOR EACH ROW EXECUTE FUNCTION public.specql_test_touch()").format(self.table))

    def touches(self) -> Counter:
        """key text -> how many committed changes the row had since record_touches."""
        return Counter(r[0] for r in self.conn.execute(f"SELECT key FROM {TOUCHES_TABLE}").fetchall())

    def run_row(self, operation_id) -> dict:
        cur = self.conn.cursor(row_factory=dict_row)
        return cur.execute(f"SELECT * FROM {RUNS_TABLE} WHERE operation_id = %s", (operation_id,)).fetchone()

    def logged_batch_sizes(self, operation_id) -> list[int]:
        """The batch_size column of each logged batch (not its retries nor waits), in order."""
        return [r[0] for r in self.conn.execute(
            sql.SQL(f"SELECT batch_size FROM {{}} WHERE operation_id = %s AND status NOT IN {NOT_BATCHES} "
                    "ORDER BY id").format(
                sql.SQL(self.f["log_table"])), (operation_id,)).fetchall()]

    def retry_rows(self, operation_id) -> int:
        return self.conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE operation_id = %s AND status = 'retry'").format(
                sql.SQL(self.f["log_table"])), (operation_id,)).fetchone()[0]

    @contextmanager
    def hold_lock(self, url: str, key: str, seconds: float):
        """A second session locks the row `key` (FOR UPDATE) and releases it after `seconds`."""
        other = psycopg.connect(url)
        other.execute(sql.SQL("SELECT 1 FROM {} WHERE {}::text = %s FOR UPDATE").format(
            self.table, sql.SQL(self.pk_column["ident"])), (key,))
        timer = threading.Timer(seconds, other.commit)
        timer.start()
        try:
            yield
        finally:
            timer.join()
            other.close()
