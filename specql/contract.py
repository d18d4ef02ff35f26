"""The runtime contract in one place: the result every routine returns and the tables it writes.

Why a module of its own: the result type's fields were spelled in four places (the
runtime template, the model's check of result references, the test harness and the test
helpers) and the runtime migration could only *create* what was missing, so a field added
by a later version never reached a database that already had the type.  Now
``templates/sql/runtime.sql.j2`` renders everything from the definitions below, both the
``CREATE`` for a fresh database and the ``ADD ATTRIBUTE`` / ``ADD COLUMN IF NOT EXISTS``
that bring an existing one up to date; the model and the harness read the names from here.

Rules for changing it (``tests/test_runtime_upgrade.py`` checks them):

- append only: never rename, retype, reorder or drop a field or column.  An existing
  database keeps what it has; the runtime migration only adds what is missing.
- a column added after the first release is nullable or has a ``DEFAULT``: ``ADD COLUMN``
  on a table that has rows needs a value for them.
- types are written as PostgreSQL accepts them after ``::`` (``timestamptz``, ``text[]``):
  the runtime migration checks each existing field and column against them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Column", "CompositeType", "Index", "RESULT_FIELDS", "RESULT_STATUSES", "RESULT_TYPE", "RUN_STATES",
           "RUNTIME_TABLES", "SCHEMA", "STATUS_COLUMNS", "STATUS_VIEW", "Table", "render_runtime", "runtime_columns", "table"]

SCHEMA = "specql"


@dataclass(frozen=True)
class Column:
    """A field of the result type or a column of a runtime table."""

    name: str
    type: str
    constraints: str = ""  # what follows the type in CREATE TABLE: NOT NULL, DEFAULT, PRIMARY KEY

    @property
    def definition(self) -> str:
        """``name type constraints``, padded so a column list reads as a table."""
        return f"{self.name:<17} {self.type} {self.constraints}".rstrip()


@dataclass(frozen=True)
class Index:
    name: str
    columns: str  # "(operation_id, batch_number)"
    where: str = ""  # a partial index's predicate
    using: str = ""  # an access method other than btree ("brin")
    storage: str = ""  # its WITH (...) parameters ("autosummarize = on")


@dataclass(frozen=True)
class CompositeType:
    name: str
    comment: str  # the SQL comment above its definition
    description: str  # COMMENT ON TYPE
    fields: tuple[Column, ...]

    @property
    def qualified(self) -> str:
        return f"{SCHEMA}.{self.name}"


@dataclass(frozen=True)
class Table:
    name: str
    comment: str  # the SQL comment above its definition
    columns: tuple[Column, ...]
    indexes: tuple[Index, ...] = ()
    # Indexes and constraints an earlier specql created on the table and this one drops
    # ("INDEX specql.x_idx", "CONSTRAINT x_pkey"): never a column, never a row.
    retired: tuple[str, ...] = ()
    # REPLICA IDENTITY for a table without a primary key ("FULL"): a publication FOR ALL TABLES
    # then still takes its UPDATEs and DELETEs (a user's purge of old rows) instead of refusing them.
    replica_identity: str = ""

    @property
    def qualified(self) -> str:
        return f"{SCHEMA}.{self.name}"


# Statuses a routine's result can carry; the runs table also has 'running' while it runs.
RESULT_STATUSES = ("completed", "completed_with_errors", "failed", "timed_out", "awaiting_confirmation",
                   "cancelled")

RESULT_TYPE = CompositeType(
    name="batch_operation_result",
    comment="What every generated routine returns (a procedure returns it through INOUT result).",
    description=f"Result of a specql batch operation. status: {', '.join(RESULT_STATUSES)}.",
    fields=(
        Column("operation_id", "uuid"),
        Column("operation", "text"),
        Column("status", "text"),
        Column("total_records", "bigint"),
        Column("processed_records", "bigint"),
        Column("failed_records", "bigint"),
        Column("error_count", "integer"),
        Column("batch_count", "integer"),
        Column("started_at", "timestamptz"),
        Column("completed_at", "timestamptz"),
        # Added for issue 14: insert rows skipped by a unique conflict (ignore_conflicts).
        Column("skipped_records", "bigint"),
    ),
)

# The names in order: what `SELECT * FROM routine(...)` returns, and what `:result.field`
# references in an entity file may name.
RESULT_FIELDS = tuple(f.name for f in RESULT_TYPE.fields)

_KEY = Column("id", "bigint", "GENERATED ALWAYS AS IDENTITY PRIMARY KEY")

RUNTIME_TABLES = (
    Table(
        name="batch_operation_runs",
        comment="One row per operation run: its state while it runs (heartbeat) and its result after.",
        columns=(
            Column("operation_id", "uuid", "PRIMARY KEY"),
            Column("operation", "text", "NOT NULL"),
            Column("status", "text", "NOT NULL DEFAULT 'running'"),
            Column("total_records", "bigint"),
            Column("processed_records", "bigint", "NOT NULL DEFAULT 0"),
            Column("failed_records", "bigint", "NOT NULL DEFAULT 0"),
            Column("error_count", "integer", "NOT NULL DEFAULT 0"),
            Column("batch_count", "integer", "NOT NULL DEFAULT 0"),
            Column("started_at", "timestamptz", "NOT NULL"),
            Column("heartbeat_at", "timestamptz", "NOT NULL"),
            Column("completed_at", "timestamptz"),
            Column("run_by", "text", "NOT NULL DEFAULT current_user"),
            # Added for issue 10 (resume, cancel, liveness); NULL in rows of earlier routines.
            Column("backend_pid", "integer"),  # the backend running it: pg_backend_pid()
            Column("backend_start", "timestamptz"),  # that backend's start: tells a reused pid apart
            Column("resumed_at", "timestamptz"),  # the latest resume's start
            Column("routine", "text"),  # the routine's regprocedure text
            Column("transaction_mode", "text"),
            Column("params", "jsonb"),  # what a resume must match: scalars as JSON, arrays/jsonb as {"md5": ...}
            Column("position", "jsonb"),  # where the run got to: {"last": key} or {"next": index}
            Column("batch_size", "integer"),
            Column("cancel_requested_at", "timestamptz"),
            Column("waited_ms", "numeric"),  # time spent throttled, left out of the rate
        ),
        indexes=(Index("batch_operation_runs_operation_idx", "(operation, started_at)"),
                 Index("batch_operation_runs_started_idx", "(started_at)")),  # specql status: newest first
    ),
    Table(
        name="batch_operation_logs",
        comment="One row per batch when progress tracking (or detailed logging) is on.",
        columns=(
            _KEY,
            Column("operation_id", "uuid", "NOT NULL"),
            Column("operation", "text", "NOT NULL"),
            Column("batch_number", "integer", "NOT NULL"),
            Column("records_processed", "bigint", "NOT NULL"),
            Column("records_failed", "bigint", "NOT NULL DEFAULT 0"),
            Column("started_at", "timestamptz", "NOT NULL"),
            Column("completed_at", "timestamptz", "NOT NULL"),
            Column("status", "text", "NOT NULL"),
            # Added for issue 10: a throttle wait or a retry's backoff is a row with its reason.
            Column("batch_size", "integer"),
            Column("worker", "integer", "DEFAULT 1"),  # SPEC §9
            Column("attempt", "integer"),
            Column("wait_reason", "text"),
            Column("wait_ms", "numeric"),
            Column("step", "text"),  # SPEC §8: the step of a multi-step operation this batch belongs to
        ),
        indexes=(Index("batch_operation_logs_operation_idx", "(operation_id, batch_number)"),),
    ),
    Table(
        name="batch_operation_errors",
        comment="One row per failed batch (continue_on_error, stop_on_error) or failed record (collect_errors).",
        columns=(
            _KEY,
            Column("operation_id", "uuid", "NOT NULL"),
            Column("operation", "text", "NOT NULL"),
            Column("batch_number", "integer", "NOT NULL"),
            Column("sqlstate", "text"),
            Column("error_message", "text", "NOT NULL"),
            Column("error_detail", "text"),
            Column("failed_records", "jsonb", "NOT NULL"),
            Column("occurred_at", "timestamptz", "NOT NULL"),
            Column("step", "text"),  # SPEC §8: the step whose batch failed
        ),
        indexes=(Index("batch_operation_errors_operation_idx", "(operation_id, batch_number)"),),
    ),
    Table(
        name="batch_performance_metrics",
        comment="Metrics written at the end of a run when collect_metrics is on.",
        columns=(
            _KEY,
            Column("operation_id", "uuid", "NOT NULL"),
            Column("operation", "text", "NOT NULL"),
            Column("metric_name", "text", "NOT NULL"),
            Column("metric_value", "numeric"),
            Column("recorded_at", "timestamptz", "NOT NULL"),
        ),
        indexes=(Index("batch_performance_metrics_operation_idx", "(operation_id)"),),
    ),
    Table(
        name="batch_operation_notifications",
        comment="Completion notifications: pg_notify('specql_batch_operations', payload) is sent at\n"
                "commit; this outbox keeps them for workers that deliver to email, webhooks, etc.",
        columns=(
            _KEY,
            Column("operation_id", "uuid", "NOT NULL"),
            Column("operation", "text", "NOT NULL"),
            Column("channels", "text[]", "NOT NULL DEFAULT '{}'"),
            Column("message", "text", "NOT NULL"),
            Column("payload", "jsonb", "NOT NULL"),
            Column("created_at", "timestamptz", "NOT NULL"),
            Column("delivered_at", "timestamptz"),
        ),
        indexes=(Index("batch_operation_notifications_pending_idx", "(created_at)", where="delivered_at IS NULL"),),
    ),
    Table(
        name="batch_operation_cancellations",
        comment="Cancel requests (specql.cancel_operation). A per_batch function's run row is invisible to\n"
                "other sessions until its caller commits, so the request goes here, where the routine\n"
                "reads it after each batch (READ COMMITTED sees rows committed since).",
        columns=(
            Column("operation_id", "uuid", "PRIMARY KEY"),
            Column("requested_at", "timestamptz", "NOT NULL DEFAULT clock_timestamp()"),
        ),
    ),
    Table(
        name="batch_operation_audit",
        comment="audit: true (issue 14): one row per changed record, old and new values, written in\n"
                "the same savepoint as the change (a rolled-back batch leaves none). Append-only and\n"
                "written a row per changed record, so it keeps no btree: id numbers the rows (their\n"
                "order) without a primary key index, and a BRIN index finds a run's rows, which lie\n"
                "together (bench/README.md, issue 14: each btree cost ~1 us per audit row).",
        columns=(
            # Was a GENERATED ALWAYS AS IDENTITY PRIMARY KEY until issue 14's third pass: an
            # upgraded database keeps the column and its values and drops the key's index.
            Column("id", "bigint", "GENERATED ALWAYS AS IDENTITY"),
            Column("operation_id", "uuid", "NOT NULL"),
            Column("batch_number", "integer", "NOT NULL"),
            Column("record_key", "jsonb", "NOT NULL"),
            Column("action", "text", "NOT NULL"),
            Column("old_row", "jsonb"),
            Column("new_row", "jsonb"),
            Column("changed_fields", "text[]", "NOT NULL DEFAULT '{}'"),
            Column("recorded_at", "timestamptz", "NOT NULL DEFAULT clock_timestamp()"),
        ),
        # A run's rows by operation_id: a bloom summary per 128 pages (runs written at the same
        # time share pages), batch_number's range beside it.
        indexes=(Index("batch_operation_audit_run_idx", "(operation_id uuid_bloom_ops, batch_number)",
                       using="brin", storage="autosummarize = on"),),
        retired=("CONSTRAINT batch_operation_audit_pkey", "INDEX specql.batch_operation_audit_operation_idx"),
        replica_identity="FULL",
    ),
)

# Multi-step operations (SPEC §8): one row per step and run, and the steps' outputs.
RUNTIME_TABLES += (
    Table(
        name="batch_operation_steps",
        comment="One row per step of a multi-step run, written when the step starts (or is not run\n"
                "because a step it depends on failed); the run's result sums its steps.",
        columns=(
            Column("operation_id", "uuid", "NOT NULL"),
            Column("operation", "text", "NOT NULL"),
            Column("step_name", "text", "NOT NULL"),
            Column("step_number", "integer", "NOT NULL"),
            Column("status", "text", "NOT NULL DEFAULT 'running'"),
            Column("total_records", "bigint", "NOT NULL DEFAULT 0"),
            Column("processed_records", "bigint", "NOT NULL DEFAULT 0"),
            Column("failed_records", "bigint", "NOT NULL DEFAULT 0"),
            Column("error_count", "integer", "NOT NULL DEFAULT 0"),
            Column("batch_count", "integer", "NOT NULL DEFAULT 0"),
            Column("output_records", "bigint", "NOT NULL DEFAULT 0"),  # keys or records put in its output
            Column("started_at", "timestamptz"),
            Column("completed_at", "timestamptz"),
            Column("error_message", "text"),  # why a step did not run
        ),
        indexes=(Index("batch_operation_steps_run_idx", "(operation_id, step_number)"),),
    ),
    Table(
        name="batch_operation_outputs",
        comment="What a step hands to later steps (its `output`), kept in chunks of at most a batch:\n"
                "keys as text (cast back to the key type when read) or records as a jsonb array.\n"
                "A run's rows are deleted when it completes; a stopped run keeps them for its resume.",
        columns=(
            Column("operation_id", "uuid", "NOT NULL"),
            Column("output", "text", "NOT NULL"),
            Column("chunk", "integer", "NOT NULL"),
            Column("keys", "text[]"),
            Column("records", "jsonb"),
        ),
        indexes=(Index("batch_operation_outputs_chunk_idx", "(operation_id, output, chunk)"),),
    ),
)

# Parallel workers (SPEC §9, issue 13): what the workers of a run share, and the claim queue.
RUNTIME_TABLES += (
    Table(
        name="batch_operation_parallel_runs",
        comment="One row per parallel run (op_start): the parameter values its workers read, the\n"
                "workers started so far, and why the run stops (failed, cancelled, timed_out).",
        columns=(
            Column("operation_id", "uuid", "PRIMARY KEY"),
            Column("inputs", "jsonb", "NOT NULL DEFAULT '{}'"),  # scalar/array parameters as text
            Column("worker_batch_size", "integer", "NOT NULL"),
            Column("chunk_count", "integer", "NOT NULL DEFAULT 0"),
            Column("batches_per_chunk", "integer", "NOT NULL DEFAULT 1"),  # batch numbers: chunk x this
            Column("workers", "integer", "NOT NULL DEFAULT 0"),  # workers started (the next one's number - 1)
            Column("stop", "text"),  # set when the run stops early; a resume clears it
        ),
    ),
    Table(
        name="batch_operation_chunks",
        comment="The claim queue of a parallel run: a chunk is claimed with FOR UPDATE SKIP LOCKED and\n"
                "marked done in the transaction that applies it, so a dead worker's chunk is claimed again.",
        columns=(
            _KEY,
            Column("operation_id", "uuid", "NOT NULL"),
            Column("chunk_number", "integer", "NOT NULL"),
            Column("status", "text", "NOT NULL DEFAULT 'pending'"),  # pending, done
            Column("records", "bigint", "NOT NULL DEFAULT 0"),  # records found when the run was split
            Column("lower_key", "text"),  # condition walk: keys in (lower_key, upper_key], NULL = open
            Column("upper_key", "text"),
            Column("keys", "text[]"),  # id array: the chunk's ids
            Column("items", "jsonb"),  # jsonb data_source: the chunk's elements
            Column("first_index", "integer"),  # their position in the source (0-based)
            Column("next_batch", "integer", "NOT NULL DEFAULT 1"),  # a stopped chunk goes on from here
            Column("worker", "integer"),
            Column("claimed_at", "timestamptz"),
            Column("completed_at", "timestamptz"),
            Column("processed_records", "bigint", "NOT NULL DEFAULT 0"),
            Column("failed_records", "bigint", "NOT NULL DEFAULT 0"),
            Column("error_count", "integer", "NOT NULL DEFAULT 0"),
        ),
        indexes=(Index("batch_operation_chunks_claim_idx", "(operation_id, status, chunk_number)"),),
    ),
)

# View specql.batch_operation_status (templates/sql/runtime.sql.j2): every run with its
# state, 'abandoned' for a run marked running whose backend is gone.  Its columns, in
# order; like the tables it only ever grows at the end (CREATE OR REPLACE VIEW demands it).
STATUS_VIEW = "batch_operation_status"
STATUS_COLUMNS = ("operation_id", "operation", "state", "status", "total_records", "processed_records",
                  "failed_records", "error_count", "batch_count", "percent_done", "records_per_second",
                  "eta_seconds", "started_at", "heartbeat_at", "completed_at", "resumed_at", "cancel_requested",
                  "run_by", "backend_pid", "transaction_mode", "batch_size", "step", "workers")
# The states the view adds to the statuses a run can have.
RUN_STATES = ("running", "abandoned") + RESULT_STATUSES


def runtime_columns() -> list[tuple[str, Column]]:
    """(qualified relation, column) for every result field and every table column, in order."""
    pairs = [(RESULT_TYPE.qualified, f) for f in RESULT_TYPE.fields]
    return pairs + [(t.qualified, c) for t in RUNTIME_TABLES for c in t.columns]


def table(name: str) -> Table:
    """The runtime table called *name* (``batch_operation_logs``...)."""
    for t in RUNTIME_TABLES:
        if t.name == name:
            return t
    raise KeyError(name)


def render_runtime() -> str:
    """The runtime migration's SQL, rendered from this module."""
    import sys

    from .render import environment

    return environment().get_template("sql/runtime.sql.j2").render(contract=sys.modules[__name__])
