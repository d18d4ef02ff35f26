"""Parallel runs for the generated tests of a `parallel: true` operation (SPEC §9).

Why its own module: a parallel run is several sessions at once. `<op>_start(...)` splits the
run into chunks; each worker is a CALL of `<op>_worker(...)` in a connection of its own (in a
thread: the work is in the server). To know which chunk a worker holds, never a timing, a
worker can be held at a gate: a statement trigger on the target makes the gated backend wait,
at its n-th statement on the table, for an advisory lock the test's session holds, inside
the chunk it has claimed. The test then lets it go, or ends its backend
(pg_terminate_backend) to see its chunk taken up by another worker.

The work load is sized from the facts: a few chunks of worker_batch_size records (rows seeded
until the condition matches that many, records of a data_source, lines of a CSV load).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from .contract import RESULT_FIELDS, RESULT_TYPE, SCHEMA
from .harness_target import adapt

CHUNKS_TABLE = f"{SCHEMA}.batch_operation_chunks"
GATE_TABLE = "public.specql_test_gate"
GATE_LOCK = 4242  # the advisory lock a gated worker waits for
MAX_PARALLEL_RECORDS = 20_000
LOCK_WAIT = 5.0  # seconds


class Worker:
    """CALL <op>_worker(operation_id => ...) in a session of its own, in a thread: its backend's
    pid (to gate or end it), then its result (a dict) or the error its CALL raised."""

    def __init__(self, url: str, routine: str, operation_id, resume: bool = False, before=None,
                 watch: psycopg.Connection | None = None):
        self.conn = psycopg.connect(url, autocommit=True)
        self.watch = watch  # a connection to see this worker's backend from (join)
        self.pid = self.conn.info.backend_pid
        if before is not None:
            before(self.pid)  # e.g. gate this backend, before its CALL starts
        self.result: dict | None = None
        self.error: psycopg.Error | None = None
        self.thread = threading.Thread(target=self._run, args=(routine, operation_id, resume), daemon=True)
        self.thread.start()

    def _run(self, routine, operation_id, resume) -> None:
        try:
            row = self.conn.execute(sql.SQL("CALL {}(operation_id => %s, resume => %s)").format(sql.SQL(routine)),
                                    (operation_id, resume)).fetchone()
            values = self.conn.execute(f"SELECT (%s::{SCHEMA}.{RESULT_TYPE.name}).*", (row[0],)).fetchone()
            self.result = dict(zip(RESULT_FIELDS, values))
        except psycopg.Error as exc:
            self.error = exc

    def join(self, timeout: float = 60) -> "Worker":
        """Wait for the CALL to return. Seen from `watch`, a worker that waits for a lock
        LOCK_WAIT seconds on end fails at once: it waits for something another worker holds,
        such as the chunk a gated worker claimed."""
        waited, deadline = 0.0, time.monotonic() + timeout
        while self.thread.is_alive() and time.monotonic() < deadline:
            self.thread.join(0.1)
            if self.watch is not None and self.thread.is_alive():
                row = self.watch.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                         (self.pid,)).fetchone()
                waited = waited + 0.1 if row and row[0] == "Lock" else 0.0
                assert waited < LOCK_WAIT, "the worker waits for a lock another worker holds"
        assert not self.thread.is_alive(), "the worker did not return"
        self.conn.close()
        return self


def wait_at_gate(conn: psycopg.Connection, pid: int, seconds: float = 30) -> None:
    """Until the backend `pid` waits for the gate's advisory lock (it is inside a chunk)."""
    for _ in range(int(seconds / 0.05)):
        row = conn.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        if row and row[0] == "advisory":
            return
        time.sleep(0.05)
    raise AssertionError("the worker never reached the gate")


class ParallelRuns:
    """Start a parallel run, run workers, gate and end them, read the chunks."""

    conn: psycopg.Connection
    f: dict

    def parallel_load(self, chunks: float = 2.5) -> tuple[dict, list[str] | None, int]:
        """Arguments of a run of about `chunks` chunks (the last one partial), within
        max_records: (arguments, the target's keys or None for records without keys yet,
        the records the run takes)."""
        n = int(self.f["parallel"]["worker_batch_size"] * chunks) + 1
        n = min(n, MAX_PARALLEL_RECORDS, self.f["max_records"] or MAX_PARALLEL_RECORDS)
        extra = {"confirm": True} if self.f["requires_confirmation"] else {}
        if self.f["driver"] == "csv":
            return {**self.params(), "staging_id": self.stage_csv(self.csv_rows(n)), **extra}, None, n
        if self.f["source_param"]:
            return {**self.params(), self.f["source_param"]: self.records(n), **extra}, None, n
        params, target = self.seed_until(self.params, n)
        if self.f["max_records"] and len(target) > self.f["max_records"]:
            self.drop_rows(target[self.f["max_records"]:])  # stay within max_records
            target = self.target_keys(params)
        return {**params, **extra}, target, len(target)

    def single_run(self, params: dict) -> tuple[dict, Counter, int] | None:
        """What the routine itself does with these arguments, rolled back: its result, the row
        changes it made (record_touches first) and the table's row count after it. None for a
        procedure, which commits its batches (it cannot be rolled back)."""
        if self.f["is_procedure"]:
            return None
        with self.conn.transaction(force_rollback=True):
            return self.call(params).result, self.touches(), self.count()

    def start_parallel(self, params: dict):
        """SELECT <op>_start(<the arguments>): the run's operation_id."""
        given = [p for p in self.all_params() if p["name"] in params and p["name"] != "resume"]
        args = sql.SQL(", ").join(
            sql.SQL("{} => {}::{}").format(sql.SQL(p["ident"]), sql.Placeholder(p["name"]), sql.SQL(p["sql_type"]))
            for p in given)
        adapted = {p["name"]: adapt(params[p["name"]], p["sql_type"]) for p in given}
        return self.conn.execute(sql.SQL("SELECT {}({})").format(sql.SQL(self.f["parallel"]["start_ident"]), args),
                                 adapted).fetchone()[0]

    def parallel_worker(self, url: str, operation_id, *, gate_after: int | None = None, resume: bool = False) -> Worker:
        """A worker of the run; gate_after=n: it waits at its (n+1)-th statement on the table."""
        def gate(pid):
            self.conn.execute(f"INSERT INTO {GATE_TABLE} (pid, after) VALUES (%s, %s)", (pid, gate_after))

        worker = Worker(url, self.f["parallel"]["worker_ident"], operation_id, resume,
                        before=gate if gate_after is not None else None, watch=self.conn)
        if gate_after is not None:
            wait_at_gate(self.conn, worker.pid)
        return worker

    def close_gate(self) -> None:
        """From now on a gated backend (a row of GATE_TABLE) waits at its statements on the table
        for GATE_LOCK, which this session holds until open_gate. A gate row rolls back with
        its worker's chunk: the count starts again if the chunk is applied again."""
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS {GATE_TABLE} "
                          "(pid integer PRIMARY KEY, after integer NOT NULL, seen integer NOT NULL DEFAULT 0)")
        self.conn.execute(f"""
            CREATE OR REPLACE FUNCTION public.specql_test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
            DECLARE
                _wait boolean;
            BEGIN
                UPDATE {GATE_TABLE} SET seen = seen + 1 WHERE pid = pg_backend_pid() RETURNING seen > after INTO _wait;
                IF _wait THEN
                    PERFORM pg_advisory_xact_lock({GATE_LOCK});
                END IF;
                RETURN NULL;
            END $$""")
        self.conn.execute(sql.SQL(
            "CREATE TRIGGER specql_test_gate BEFORE INSERT OR UPDATE OR DELETE ON {} "
            "FOR EACH STATEMENT EXECUTE FUNCTION public.specql_test_gate()").format(self.table))
        self.conn.execute("SELECT pg_advisory_lock(%s)", (GATE_LOCK,))

    def open_gate(self) -> None:
        self.conn.execute("SELECT pg_advisory_unlock(%s)", (GATE_LOCK,))

    def terminate(self, worker: Worker) -> None:
        """End the worker's backend (as a crash would) and wait for its CALL to fail."""
        self.conn.execute("SELECT pg_terminate_backend(%s)", (worker.pid,))
        worker.join()
        assert worker.error is not None, "the worker's CALL outlived its backend"

    def chunks(self, operation_id) -> list[dict]:
        cur = self.conn.cursor(row_factory=dict_row)
        return cur.execute(f"SELECT * FROM {CHUNKS_TABLE} WHERE operation_id = %s ORDER BY chunk_number",
                           (operation_id,)).fetchall()

    def chunks_partition(self, chunks: list[dict], params: dict, total: int) -> list[str]:
        """What is wrong with the chunks as a partition of the run's `total` records (nothing:
        []): worker_batch_size records each but the last; key ranges that meet end to end from
        an open start to an open end; slices of the id array that make it whole, in order (an
        id array's total may be the matching rows); positions of the data_source one after
        the other."""
        wbs, sizes = self.f["parallel"]["worker_batch_size"], [c["records"] for c in chunks]
        problems = [] if sizes[:-1] == [wbs] * (len(sizes) - 1) and sizes[-1] <= wbs else [f"chunk sizes {sizes}"]
        if self.f["driver"] != "keys" and sum(sizes) != total:
            problems.append(f"the chunks hold {sum(sizes)} records, the run {total}")
        if self.f["driver"] in ("keyset", "csv"):
            bounds = [(c["lower_key"], c["upper_key"]) for c in chunks]
            if bounds[0][0] is not None or bounds[-1][1] is not None:
                problems.append(f"the key ranges do not span the whole table: {bounds}")
            problems += [f"chunks {i + 1} and {i + 2} do not meet: {a} / {b}"
                         for i, (a, b) in enumerate(zip(bounds, bounds[1:])) if a[1] != b[0]]
        elif self.f["driver"] == "keys":
            ids = [str(k) for k in params[self.f["key_param"]]]
            if [k for c in chunks for k in c["keys"]] != ids:
                problems.append("the chunks' ids are not the id array, each id once, in order")
        else:
            starts = [sum(c["records"] for c in chunks[:i]) for i in range(len(chunks))]
            if [c["first_index"] for c in chunks] != starts:
                problems.append(f"chunks start at {[c['first_index'] for c in chunks]}, not {starts}")
        return problems
