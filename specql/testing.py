"""What generated tests use to exercise one operation on a real database.

A generated test module holds the facts of its operation (plain data written by `specql
generate tests`, derived from the model) and its assertions; the Harness does the mechanics,
one concept per module:

- harness_tables   seed realistic rows from the field types; create an unmanaged table
- harness_target   parameters from the seeded data, the keys the condition should reach, snapshots
- harness_records  records for inserts and upserts, partial records, rows checked against them
- harness_calls    call the routine (function or procedure), read its logs and errors
- harness_faults   plant failing rows and records, slow the table down, shorten the timeout
- harness_runs     cancel a run after its first batch, count row changes, hold a row lock
- harness_hooks    record hook calls, read audit rows and the soft-delete state
- harness_csv      write and stage the CSV files of a csv_file import
- harness_parallel start a parallel run, run its workers in sessions of their own, gate and end them

Generated modules import `Harness` and `batches` from here: that is the public API.
"""

from __future__ import annotations

import json
import math

import psycopg
from psycopg import sql

from .contract import RESULT_FIELDS
from .harness_calls import Calls, Run
from .harness_csv import CsvLoads
from .harness_faults import POISON_TABLE, Faults
from .harness_hooks import HookCalls
from .harness_parallel import ParallelRuns
from .harness_records import Records
from .harness_runs import Runs
from .harness_tables import MAX_SEED_ROWS, Seeding, sample_value
from .harness_target import Targets

__all__ = ["Harness", "MAX_SEED_ROWS", "POISON_TABLE", "RESULT_FIELDS", "Run", "as_json", "batches", "sample_value"]


class Harness(Targets, Seeding, Records, Calls, Faults, Runs, HookCalls, CsvLoads, ParallelRuns):
    """One operation on one test database."""

    def __init__(self, conn: psycopg.Connection, facts: dict):
        self.conn = conn
        self.f = facts
        self.table = sql.SQL(facts["table"])
        self.pk_column = self.column(facts["pk"])
        self.pk = sql.SQL(self.pk_column["ident"])
        self.seeded = 0


def batches(n: int, size: int) -> int:
    return math.ceil(n / size) if n else 0


def as_json(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)
