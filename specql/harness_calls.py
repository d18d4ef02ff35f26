"""Calling the routine under test and reading what it recorded.

Why its own module: a function returns its result as a row, a procedure through an INOUT
composite, and both may raise notices; the generated tests want one shape for all (Run:
the result as a dict, the notices' texts). What a run logged (batch rows, error rows) is
read back here too, from the tables named by the facts and by specql.contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from .contract import RESULT_FIELDS, RESULT_TYPE, SCHEMA
from .harness_target import adapt

ERRORS_TABLE = f"{SCHEMA}.batch_operation_errors"
NOTIFICATIONS_TABLE = f"{SCHEMA}.batch_operation_notifications"
NOT_BATCHES = "('retry', 'throttled')"  # log rows of a batch's retry or of a wait before a batch


@dataclass
class Run:
    result: dict
    notices: list[str]


class Calls:
    """Calls the operation's routine (or a copy of it) with named, typed arguments."""

    conn: psycopg.Connection
    f: dict

    def call(self, params: dict, *, conn: psycopg.Connection | None = None, routine: str | None = None) -> Run:
        conn = conn or self.conn
        notices: list[str] = []
        handler = lambda d: notices.append(d.message_primary or "")  # noqa: E731
        conn.add_notice_handler(handler)
        try:
            if self.f.get("target_batch_time") and "batch_size" not in params:
                # batch_size: auto adapts each batch's size to its time: the tests fix it at the
                # first size, so they can tell which batch a record falls in (tests/test_throttle.py
                # covers the adapting itself).
                params = {**params, "batch_size": self.f["batch_size"]}
            given = [p for p in self.all_params() if p["name"] in params]
            args = sql.SQL(", ").join(
                sql.SQL("{} => {}::{}").format(sql.SQL(p["ident"]), sql.Placeholder(p["name"]), sql.SQL(p["sql_type"]))
                for p in given)
            adapted = {p["name"]: adapt(params[p["name"]], p["sql_type"]) for p in given}
            name = sql.SQL(routine or self.f["routine"])
            if self.f["is_procedure"]:
                row = conn.execute(sql.SQL("CALL {}({})").format(name, args), adapted).fetchone()
                values = conn.execute(f"SELECT (%s::{SCHEMA}.{RESULT_TYPE.name}).*", (row[0],)).fetchone()
                result = dict(zip(RESULT_FIELDS, values))
            else:
                cur = conn.cursor(row_factory=dict_row)
                result = cur.execute(sql.SQL("SELECT * FROM {}({})").format(name, args), adapted).fetchone()
        finally:
            conn.remove_notice_handler(handler)
        return Run(result, notices)

    def all_params(self) -> list[dict]:
        """The operation's parameters, then the arguments every routine adds: staging_id for a
        jsonb data_source that can be staged, confirm where required, batch_size, and resume
        for a procedure."""
        extra = [{"name": "staging_id", "ident": "staging_id", "sql_type": "uuid"}] if self.f.get("json_staging") else []
        if self.f["requires_confirmation"]:
            extra.append({"name": "confirm", "ident": "confirm", "sql_type": "boolean"})
        if self.f.get("hooks"):
            extra.append({"name": "bypass_hooks", "ident": "bypass_hooks", "sql_type": "boolean"})
        extra.append({"name": "batch_size", "ident": "batch_size", "sql_type": "integer"})
        if self.f["is_procedure"]:
            extra.append({"name": "resume", "ident": "resume", "sql_type": "uuid"})
        return self.f["params"] + extra

    def stage(self, records: list) -> str:
        """Stage records in the operation's staging table as `specql run --json` does (one
        committed load, _record 1..n); its staging_id."""
        staging_id = str(__import__("uuid").uuid4())
        with self.conn.transaction():
            self.conn.execute(
                sql.SQL("INSERT INTO {} (_staging_id, _record, _line, record) "
                        "SELECT %s, _e.n, _e.n, _e.v FROM jsonb_array_elements(%s) WITH ORDINALITY AS _e(v, n)"
                        ).format(sql.SQL(self.f["json_staging"])), (staging_id, adapt(records, "jsonb")))
        return staging_id

    def batch_log(self, operation_id) -> list[tuple]:
        """(batch_number, records_processed, records_failed, status) of each logged batch (not
        the rows of a retry or a throttle wait, which the log table holds too)."""
        return self.conn.execute(
            sql.SQL("SELECT batch_number, records_processed, records_failed, status FROM {} "
                    f"WHERE operation_id = %s AND status NOT IN {NOT_BATCHES} "
                    "ORDER BY batch_number").format(sql.SQL(self.f["log_table"])),
            (operation_id,)).fetchall()

    def errors(self, operation_id) -> list[tuple]:
        """(batch_number, sqlstate, error_message, failed_records) of each logged error."""
        return self.conn.execute(
            f"SELECT batch_number, sqlstate, error_message, failed_records FROM {ERRORS_TABLE} "
            "WHERE operation_id = %s ORDER BY id", (operation_id,)).fetchall()

    def metrics(self, operation_id) -> dict:
        return dict(self.conn.execute(
            sql.SQL("SELECT metric_name, metric_value FROM {} WHERE operation_id = %s").format(
                sql.SQL(self.f["metrics_table"])), (operation_id,)).fetchall())

    def outbox_count(self, operation_id) -> int:
        return self.conn.execute(f"SELECT count(*) FROM {NOTIFICATIONS_TABLE} WHERE operation_id = %s",
                                 (operation_id,)).fetchone()[0]
