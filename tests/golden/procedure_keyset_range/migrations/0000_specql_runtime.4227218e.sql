-- =============================================================================
-- specql runtime: the result type and the tables every batch operation writes to.
-- Shared by every entity file. Safe to re-apply: on a database holding the runtime
-- of an earlier specql it creates nothing twice and adds the fields and columns
-- that version lacked (never drops or changes one).
-- =============================================================================

-- "already exists, skipping" notices of the IF NOT EXISTS below are expected noise.
SET client_min_messages = warning;

CREATE SCHEMA IF NOT EXISTS specql;

-- What every generated routine returns (a procedure returns it through INOUT result).
DO $specql$
BEGIN
    IF to_regtype('specql.batch_operation_result') IS NULL THEN
        CREATE TYPE specql.batch_operation_result AS (
            operation_id      uuid,
            operation         text,
            status            text,
            total_records     bigint,
            processed_records bigint,
            failed_records    bigint,
            error_count       integer,
            batch_count       integer,
            started_at        timestamptz,
            completed_at      timestamptz,
            skipped_records   bigint
        );
    END IF;
END
$specql$;

-- Fields a type created by an earlier specql lacks are added at the end (a no-op on a
-- fresh database). CASCADE reaches only tables declared OF this type.
DO $specql$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'specql.batch_operation_result'::regclass
                   AND attname = 'operation_id' AND NOT attisdropped) THEN
        ALTER TYPE specql.batch_operation_result ADD ATTRIBUTE operation_id uuid CASCADE;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'specql.batch_operation_result'::regclass
                   AND attname = 'operation' AND NOT attisdropped) THEN
        ALTER TYPE specql.batch_operation_result ADD ATTRIBUTE operation text CASCADE;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'specql.batch_operation_result'::regclass
                   AND attname = 'status' AND NOT attisdropped) THEN
        ALTER TYPE specql.batch_operation_result ADD ATTRIBUTE status text CASCADE;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'specql.batch_operation_result'::regclass
                   AND attname = 'total_records' AND NOT attisdropped) THEN
        ALTER TYPE specql.batch_operation_result ADD ATTRIBUTE total_records bigint CASCADE;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'specql.batch_operation_result'::regclass
                   AND attname = 'processed_records' AND NOT attisdropped) THEN
        ALTER TYPE specql.batch_operation_result ADD ATTRIBUTE processed_records bigint CASCADE;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'specql.batch_operation_result'::regclass
                   AND attname = 'failed_records' AND NOT attisdropped) THEN
        ALTER TYPE specql.batch_operation_result ADD ATTRIBUTE failed_records bigint CASCADE;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'specql.batch_operation_result'::regclass
                   AND attname = 'error_count' AND NOT attisdropped) THEN
        ALTER TYPE specql.batch_operation_result ADD ATTRIBUTE error_count integer CASCADE;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'specql.batch_operation_result'::regclass
                   AND attname = 'batch_count' AND NOT attisdropped) THEN
        ALTER TYPE specql.batch_operation_result ADD ATTRIBUTE batch_count integer CASCADE;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'specql.batch_operation_result'::regclass
                   AND attname = 'started_at' AND NOT attisdropped) THEN
        ALTER TYPE specql.batch_operation_result ADD ATTRIBUTE started_at timestamptz CASCADE;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'specql.batch_operation_result'::regclass
                   AND attname = 'completed_at' AND NOT attisdropped) THEN
        ALTER TYPE specql.batch_operation_result ADD ATTRIBUTE completed_at timestamptz CASCADE;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'specql.batch_operation_result'::regclass
                   AND attname = 'skipped_records' AND NOT attisdropped) THEN
        ALTER TYPE specql.batch_operation_result ADD ATTRIBUTE skipped_records bigint CASCADE;
    END IF;
END
$specql$;

COMMENT ON TYPE specql.batch_operation_result IS
    'Result of a specql batch operation. status: completed, completed_with_errors, failed, timed_out, awaiting_confirmation, cancelled.';

-- One row per operation run: its state while it runs (heartbeat) and its result after.
CREATE TABLE IF NOT EXISTS specql.batch_operation_runs (
    operation_id      uuid PRIMARY KEY,
    operation         text NOT NULL,
    status            text NOT NULL DEFAULT 'running',
    total_records     bigint,
    processed_records bigint NOT NULL DEFAULT 0,
    failed_records    bigint NOT NULL DEFAULT 0,
    error_count       integer NOT NULL DEFAULT 0,
    batch_count       integer NOT NULL DEFAULT 0,
    started_at        timestamptz NOT NULL,
    heartbeat_at      timestamptz NOT NULL,
    completed_at      timestamptz,
    run_by            text NOT NULL DEFAULT current_user,
    backend_pid       integer,
    backend_start     timestamptz,
    resumed_at        timestamptz,
    routine           text,
    transaction_mode  text,
    params            jsonb,
    position          jsonb,
    batch_size        integer,
    cancel_requested_at timestamptz,
    waited_ms         numeric
);
-- Columns a table created by an earlier specql lacks (a no-op on a fresh database).
ALTER TABLE specql.batch_operation_runs
    ADD COLUMN IF NOT EXISTS operation_id      uuid PRIMARY KEY,
    ADD COLUMN IF NOT EXISTS operation         text NOT NULL,
    ADD COLUMN IF NOT EXISTS status            text NOT NULL DEFAULT 'running',
    ADD COLUMN IF NOT EXISTS total_records     bigint,
    ADD COLUMN IF NOT EXISTS processed_records bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS failed_records    bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS error_count       integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS batch_count       integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS started_at        timestamptz NOT NULL,
    ADD COLUMN IF NOT EXISTS heartbeat_at      timestamptz NOT NULL,
    ADD COLUMN IF NOT EXISTS completed_at      timestamptz,
    ADD COLUMN IF NOT EXISTS run_by            text NOT NULL DEFAULT current_user,
    ADD COLUMN IF NOT EXISTS backend_pid       integer,
    ADD COLUMN IF NOT EXISTS backend_start     timestamptz,
    ADD COLUMN IF NOT EXISTS resumed_at        timestamptz,
    ADD COLUMN IF NOT EXISTS routine           text,
    ADD COLUMN IF NOT EXISTS transaction_mode  text,
    ADD COLUMN IF NOT EXISTS params            jsonb,
    ADD COLUMN IF NOT EXISTS position          jsonb,
    ADD COLUMN IF NOT EXISTS batch_size        integer,
    ADD COLUMN IF NOT EXISTS cancel_requested_at timestamptz,
    ADD COLUMN IF NOT EXISTS waited_ms         numeric;
CREATE INDEX IF NOT EXISTS batch_operation_runs_operation_idx
    ON specql.batch_operation_runs (operation, started_at);
CREATE INDEX IF NOT EXISTS batch_operation_runs_started_idx
    ON specql.batch_operation_runs (started_at);

-- One row per batch when progress tracking (or detailed logging) is on.
CREATE TABLE IF NOT EXISTS specql.batch_operation_logs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    operation_id      uuid NOT NULL,
    operation         text NOT NULL,
    batch_number      integer NOT NULL,
    records_processed bigint NOT NULL,
    records_failed    bigint NOT NULL DEFAULT 0,
    started_at        timestamptz NOT NULL,
    completed_at      timestamptz NOT NULL,
    status            text NOT NULL,
    batch_size        integer,
    worker            integer DEFAULT 1,
    attempt           integer,
    wait_reason       text,
    wait_ms           numeric,
    step              text
);
-- Columns a table created by an earlier specql lacks (a no-op on a fresh database).
ALTER TABLE specql.batch_operation_logs
    ADD COLUMN IF NOT EXISTS id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ADD COLUMN IF NOT EXISTS operation_id      uuid NOT NULL,
    ADD COLUMN IF NOT EXISTS operation         text NOT NULL,
    ADD COLUMN IF NOT EXISTS batch_number      integer NOT NULL,
    ADD COLUMN IF NOT EXISTS records_processed bigint NOT NULL,
    ADD COLUMN IF NOT EXISTS records_failed    bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS started_at        timestamptz NOT NULL,
    ADD COLUMN IF NOT EXISTS completed_at      timestamptz NOT NULL,
    ADD COLUMN IF NOT EXISTS status            text NOT NULL,
    ADD COLUMN IF NOT EXISTS batch_size        integer,
    ADD COLUMN IF NOT EXISTS worker            integer DEFAULT 1,
    ADD COLUMN IF NOT EXISTS attempt           integer,
    ADD COLUMN IF NOT EXISTS wait_reason       text,
    ADD COLUMN IF NOT EXISTS wait_ms           numeric,
    ADD COLUMN IF NOT EXISTS step              text;
CREATE INDEX IF NOT EXISTS batch_operation_logs_operation_idx
    ON specql.batch_operation_logs (operation_id, batch_number);

-- One row per failed batch (continue_on_error, stop_on_error) or failed record (collect_errors).
CREATE TABLE IF NOT EXISTS specql.batch_operation_errors (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    operation_id      uuid NOT NULL,
    operation         text NOT NULL,
    batch_number      integer NOT NULL,
    sqlstate          text,
    error_message     text NOT NULL,
    error_detail      text,
    failed_records    jsonb NOT NULL,
    occurred_at       timestamptz NOT NULL,
    step              text
);
-- Columns a table created by an earlier specql lacks (a no-op on a fresh database).
ALTER TABLE specql.batch_operation_errors
    ADD COLUMN IF NOT EXISTS id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ADD COLUMN IF NOT EXISTS operation_id      uuid NOT NULL,
    ADD COLUMN IF NOT EXISTS operation         text NOT NULL,
    ADD COLUMN IF NOT EXISTS batch_number      integer NOT NULL,
    ADD COLUMN IF NOT EXISTS sqlstate          text,
    ADD COLUMN IF NOT EXISTS error_message     text NOT NULL,
    ADD COLUMN IF NOT EXISTS error_detail      text,
    ADD COLUMN IF NOT EXISTS failed_records    jsonb NOT NULL,
    ADD COLUMN IF NOT EXISTS occurred_at       timestamptz NOT NULL,
    ADD COLUMN IF NOT EXISTS step              text;
CREATE INDEX IF NOT EXISTS batch_operation_errors_operation_idx
    ON specql.batch_operation_errors (operation_id, batch_number);

-- Metrics written at the end of a run when collect_metrics is on.
CREATE TABLE IF NOT EXISTS specql.batch_performance_metrics (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    operation_id      uuid NOT NULL,
    operation         text NOT NULL,
    metric_name       text NOT NULL,
    metric_value      numeric,
    recorded_at       timestamptz NOT NULL
);
-- Columns a table created by an earlier specql lacks (a no-op on a fresh database).
ALTER TABLE specql.batch_performance_metrics
    ADD COLUMN IF NOT EXISTS id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ADD COLUMN IF NOT EXISTS operation_id      uuid NOT NULL,
    ADD COLUMN IF NOT EXISTS operation         text NOT NULL,
    ADD COLUMN IF NOT EXISTS metric_name       text NOT NULL,
    ADD COLUMN IF NOT EXISTS metric_value      numeric,
    ADD COLUMN IF NOT EXISTS recorded_at       timestamptz NOT NULL;
CREATE INDEX IF NOT EXISTS batch_performance_metrics_operation_idx
    ON specql.batch_performance_metrics (operation_id);

-- Completion notifications: pg_notify('specql_batch_operations', payload) is sent at
-- commit; this outbox keeps them for workers that deliver to email, webhooks, etc.
CREATE TABLE IF NOT EXISTS specql.batch_operation_notifications (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    operation_id      uuid NOT NULL,
    operation         text NOT NULL,
    channels          text[] NOT NULL DEFAULT '{}',
    message           text NOT NULL,
    payload           jsonb NOT NULL,
    created_at        timestamptz NOT NULL,
    delivered_at      timestamptz
);
-- Columns a table created by an earlier specql lacks (a no-op on a fresh database).
ALTER TABLE specql.batch_operation_notifications
    ADD COLUMN IF NOT EXISTS id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ADD COLUMN IF NOT EXISTS operation_id      uuid NOT NULL,
    ADD COLUMN IF NOT EXISTS operation         text NOT NULL,
    ADD COLUMN IF NOT EXISTS channels          text[] NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS message           text NOT NULL,
    ADD COLUMN IF NOT EXISTS payload           jsonb NOT NULL,
    ADD COLUMN IF NOT EXISTS created_at        timestamptz NOT NULL,
    ADD COLUMN IF NOT EXISTS delivered_at      timestamptz;
CREATE INDEX IF NOT EXISTS batch_operation_notifications_pending_idx
    ON specql.batch_operation_notifications (created_at) WHERE delivered_at IS NULL;

-- Cancel requests (specql.cancel_operation). A per_batch function's run row is invisible to
-- other sessions until its caller commits, so the request goes here, where the routine
-- reads it after each batch (READ COMMITTED sees rows committed since).
CREATE TABLE IF NOT EXISTS specql.batch_operation_cancellations (
    operation_id      uuid PRIMARY KEY,
    requested_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Columns a table created by an earlier specql lacks (a no-op on a fresh database).
ALTER TABLE specql.batch_operation_cancellations
    ADD COLUMN IF NOT EXISTS operation_id      uuid PRIMARY KEY,
    ADD COLUMN IF NOT EXISTS requested_at      timestamptz NOT NULL DEFAULT clock_timestamp();

-- audit: true (issue 14): one row per changed record, old and new values, written in
-- the same savepoint as the change (a rolled-back batch leaves none). Append-only and
-- written a row per changed record, so it keeps no btree: id numbers the rows (their
-- order) without a primary key index, and a BRIN index finds a run's rows, which lie
-- together (bench/README.md, issue 14: each btree cost ~1 us per audit row).
CREATE TABLE IF NOT EXISTS specql.batch_operation_audit (
    id                bigint GENERATED ALWAYS AS IDENTITY,
    operation_id      uuid NOT NULL,
    batch_number      integer NOT NULL,
    record_key        jsonb NOT NULL,
    action            text NOT NULL,
    old_row           jsonb,
    new_row           jsonb,
    changed_fields    text[] NOT NULL DEFAULT '{}',
    recorded_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Columns a table created by an earlier specql lacks (a no-op on a fresh database).
ALTER TABLE specql.batch_operation_audit
    ADD COLUMN IF NOT EXISTS id                bigint GENERATED ALWAYS AS IDENTITY,
    ADD COLUMN IF NOT EXISTS operation_id      uuid NOT NULL,
    ADD COLUMN IF NOT EXISTS batch_number      integer NOT NULL,
    ADD COLUMN IF NOT EXISTS record_key        jsonb NOT NULL,
    ADD COLUMN IF NOT EXISTS action            text NOT NULL,
    ADD COLUMN IF NOT EXISTS old_row           jsonb,
    ADD COLUMN IF NOT EXISTS new_row           jsonb,
    ADD COLUMN IF NOT EXISTS changed_fields    text[] NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS recorded_at       timestamptz NOT NULL DEFAULT clock_timestamp();
-- What an earlier specql created here and this one no longer keeps (data stays).
ALTER TABLE specql.batch_operation_audit DROP CONSTRAINT IF EXISTS batch_operation_audit_pkey;
DROP INDEX IF EXISTS specql.batch_operation_audit_operation_idx;
-- No primary key: a publication FOR ALL TABLES replicates its UPDATEs and DELETEs by the whole row.
ALTER TABLE specql.batch_operation_audit REPLICA IDENTITY FULL;
CREATE INDEX IF NOT EXISTS batch_operation_audit_run_idx
    ON specql.batch_operation_audit USING brin (operation_id uuid_bloom_ops, batch_number) WITH (autosummarize = on);

-- One row per step of a multi-step run, written when the step starts (or is not run
-- because a step it depends on failed); the run's result sums its steps.
CREATE TABLE IF NOT EXISTS specql.batch_operation_steps (
    operation_id      uuid NOT NULL,
    operation         text NOT NULL,
    step_name         text NOT NULL,
    step_number       integer NOT NULL,
    status            text NOT NULL DEFAULT 'running',
    total_records     bigint NOT NULL DEFAULT 0,
    processed_records bigint NOT NULL DEFAULT 0,
    failed_records    bigint NOT NULL DEFAULT 0,
    error_count       integer NOT NULL DEFAULT 0,
    batch_count       integer NOT NULL DEFAULT 0,
    output_records    bigint NOT NULL DEFAULT 0,
    started_at        timestamptz,
    completed_at      timestamptz,
    error_message     text
);
-- Columns a table created by an earlier specql lacks (a no-op on a fresh database).
ALTER TABLE specql.batch_operation_steps
    ADD COLUMN IF NOT EXISTS operation_id      uuid NOT NULL,
    ADD COLUMN IF NOT EXISTS operation         text NOT NULL,
    ADD COLUMN IF NOT EXISTS step_name         text NOT NULL,
    ADD COLUMN IF NOT EXISTS step_number       integer NOT NULL,
    ADD COLUMN IF NOT EXISTS status            text NOT NULL DEFAULT 'running',
    ADD COLUMN IF NOT EXISTS total_records     bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS processed_records bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS failed_records    bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS error_count       integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS batch_count       integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS output_records    bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS started_at        timestamptz,
    ADD COLUMN IF NOT EXISTS completed_at      timestamptz,
    ADD COLUMN IF NOT EXISTS error_message     text;
CREATE INDEX IF NOT EXISTS batch_operation_steps_run_idx
    ON specql.batch_operation_steps (operation_id, step_number);

-- What a step hands to later steps (its `output`), kept in chunks of at most a batch:
-- keys as text (cast back to the key type when read) or records as a jsonb array.
-- A run's rows are deleted when it completes; a stopped run keeps them for its resume.
CREATE TABLE IF NOT EXISTS specql.batch_operation_outputs (
    operation_id      uuid NOT NULL,
    output            text NOT NULL,
    chunk             integer NOT NULL,
    keys              text[],
    records           jsonb
);
-- Columns a table created by an earlier specql lacks (a no-op on a fresh database).
ALTER TABLE specql.batch_operation_outputs
    ADD COLUMN IF NOT EXISTS operation_id      uuid NOT NULL,
    ADD COLUMN IF NOT EXISTS output            text NOT NULL,
    ADD COLUMN IF NOT EXISTS chunk             integer NOT NULL,
    ADD COLUMN IF NOT EXISTS keys              text[],
    ADD COLUMN IF NOT EXISTS records           jsonb;
CREATE INDEX IF NOT EXISTS batch_operation_outputs_chunk_idx
    ON specql.batch_operation_outputs (operation_id, output, chunk);

-- One row per parallel run (op_start): the parameter values its workers read, the
-- workers started so far, and why the run stops (failed, cancelled, timed_out).
CREATE TABLE IF NOT EXISTS specql.batch_operation_parallel_runs (
    operation_id      uuid PRIMARY KEY,
    inputs            jsonb NOT NULL DEFAULT '{}',
    worker_batch_size integer NOT NULL,
    chunk_count       integer NOT NULL DEFAULT 0,
    batches_per_chunk integer NOT NULL DEFAULT 1,
    workers           integer NOT NULL DEFAULT 0,
    stop              text
);
-- Columns a table created by an earlier specql lacks (a no-op on a fresh database).
ALTER TABLE specql.batch_operation_parallel_runs
    ADD COLUMN IF NOT EXISTS operation_id      uuid PRIMARY KEY,
    ADD COLUMN IF NOT EXISTS inputs            jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS worker_batch_size integer NOT NULL,
    ADD COLUMN IF NOT EXISTS chunk_count       integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS batches_per_chunk integer NOT NULL DEFAULT 1,
    ADD COLUMN IF NOT EXISTS workers           integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS stop              text;

-- The claim queue of a parallel run: a chunk is claimed with FOR UPDATE SKIP LOCKED and
-- marked done in the transaction that applies it, so a dead worker's chunk is claimed again.
CREATE TABLE IF NOT EXISTS specql.batch_operation_chunks (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    operation_id      uuid NOT NULL,
    chunk_number      integer NOT NULL,
    status            text NOT NULL DEFAULT 'pending',
    records           bigint NOT NULL DEFAULT 0,
    lower_key         text,
    upper_key         text,
    keys              text[],
    items             jsonb,
    first_index       integer,
    next_batch        integer NOT NULL DEFAULT 1,
    worker            integer,
    claimed_at        timestamptz,
    completed_at      timestamptz,
    processed_records bigint NOT NULL DEFAULT 0,
    failed_records    bigint NOT NULL DEFAULT 0,
    error_count       integer NOT NULL DEFAULT 0
);
-- Columns a table created by an earlier specql lacks (a no-op on a fresh database).
ALTER TABLE specql.batch_operation_chunks
    ADD COLUMN IF NOT EXISTS id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ADD COLUMN IF NOT EXISTS operation_id      uuid NOT NULL,
    ADD COLUMN IF NOT EXISTS chunk_number      integer NOT NULL,
    ADD COLUMN IF NOT EXISTS status            text NOT NULL DEFAULT 'pending',
    ADD COLUMN IF NOT EXISTS records           bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS lower_key         text,
    ADD COLUMN IF NOT EXISTS upper_key         text,
    ADD COLUMN IF NOT EXISTS keys              text[],
    ADD COLUMN IF NOT EXISTS items             jsonb,
    ADD COLUMN IF NOT EXISTS first_index       integer,
    ADD COLUMN IF NOT EXISTS next_batch        integer NOT NULL DEFAULT 1,
    ADD COLUMN IF NOT EXISTS worker            integer,
    ADD COLUMN IF NOT EXISTS claimed_at        timestamptz,
    ADD COLUMN IF NOT EXISTS completed_at      timestamptz,
    ADD COLUMN IF NOT EXISTS processed_records bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS failed_records    bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS error_count       integer NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS batch_operation_chunks_claim_idx
    ON specql.batch_operation_chunks (operation_id, status, chunk_number);

-- Every field and column has the type this version expects. An object of the same name
-- that differs (made by hand, or by a newer specql) stops the migration here instead of
-- failing later inside a routine.
DO $specql$
DECLARE
    _wrong text;
BEGIN
    SELECT string_agg(format('%s.%s is %s, expected %s', e.relation, e.name,
                             coalesce(format_type(a.atttypid, a.atttypmod), 'missing'), e.type::regtype), '; ')
      INTO _wrong
      FROM (VALUES
        ('specql.batch_operation_result', 'operation_id', 'uuid'),
        ('specql.batch_operation_result', 'operation', 'text'),
        ('specql.batch_operation_result', 'status', 'text'),
        ('specql.batch_operation_result', 'total_records', 'bigint'),
        ('specql.batch_operation_result', 'processed_records', 'bigint'),
        ('specql.batch_operation_result', 'failed_records', 'bigint'),
        ('specql.batch_operation_result', 'error_count', 'integer'),
        ('specql.batch_operation_result', 'batch_count', 'integer'),
        ('specql.batch_operation_result', 'started_at', 'timestamptz'),
        ('specql.batch_operation_result', 'completed_at', 'timestamptz'),
        ('specql.batch_operation_result', 'skipped_records', 'bigint'),
        ('specql.batch_operation_runs', 'operation_id', 'uuid'),
        ('specql.batch_operation_runs', 'operation', 'text'),
        ('specql.batch_operation_runs', 'status', 'text'),
        ('specql.batch_operation_runs', 'total_records', 'bigint'),
        ('specql.batch_operation_runs', 'processed_records', 'bigint'),
        ('specql.batch_operation_runs', 'failed_records', 'bigint'),
        ('specql.batch_operation_runs', 'error_count', 'integer'),
        ('specql.batch_operation_runs', 'batch_count', 'integer'),
        ('specql.batch_operation_runs', 'started_at', 'timestamptz'),
        ('specql.batch_operation_runs', 'heartbeat_at', 'timestamptz'),
        ('specql.batch_operation_runs', 'completed_at', 'timestamptz'),
        ('specql.batch_operation_runs', 'run_by', 'text'),
        ('specql.batch_operation_runs', 'backend_pid', 'integer'),
        ('specql.batch_operation_runs', 'backend_start', 'timestamptz'),
        ('specql.batch_operation_runs', 'resumed_at', 'timestamptz'),
        ('specql.batch_operation_runs', 'routine', 'text'),
        ('specql.batch_operation_runs', 'transaction_mode', 'text'),
        ('specql.batch_operation_runs', 'params', 'jsonb'),
        ('specql.batch_operation_runs', 'position', 'jsonb'),
        ('specql.batch_operation_runs', 'batch_size', 'integer'),
        ('specql.batch_operation_runs', 'cancel_requested_at', 'timestamptz'),
        ('specql.batch_operation_runs', 'waited_ms', 'numeric'),
        ('specql.batch_operation_logs', 'id', 'bigint'),
        ('specql.batch_operation_logs', 'operation_id', 'uuid'),
        ('specql.batch_operation_logs', 'operation', 'text'),
        ('specql.batch_operation_logs', 'batch_number', 'integer'),
        ('specql.batch_operation_logs', 'records_processed', 'bigint'),
        ('specql.batch_operation_logs', 'records_failed', 'bigint'),
        ('specql.batch_operation_logs', 'started_at', 'timestamptz'),
        ('specql.batch_operation_logs', 'completed_at', 'timestamptz'),
        ('specql.batch_operation_logs', 'status', 'text'),
        ('specql.batch_operation_logs', 'batch_size', 'integer'),
        ('specql.batch_operation_logs', 'worker', 'integer'),
        ('specql.batch_operation_logs', 'attempt', 'integer'),
        ('specql.batch_operation_logs', 'wait_reason', 'text'),
        ('specql.batch_operation_logs', 'wait_ms', 'numeric'),
        ('specql.batch_operation_logs', 'step', 'text'),
        ('specql.batch_operation_errors', 'id', 'bigint'),
        ('specql.batch_operation_errors', 'operation_id', 'uuid'),
        ('specql.batch_operation_errors', 'operation', 'text'),
        ('specql.batch_operation_errors', 'batch_number', 'integer'),
        ('specql.batch_operation_errors', 'sqlstate', 'text'),
        ('specql.batch_operation_errors', 'error_message', 'text'),
        ('specql.batch_operation_errors', 'error_detail', 'text'),
        ('specql.batch_operation_errors', 'failed_records', 'jsonb'),
        ('specql.batch_operation_errors', 'occurred_at', 'timestamptz'),
        ('specql.batch_operation_errors', 'step', 'text'),
        ('specql.batch_performance_metrics', 'id', 'bigint'),
        ('specql.batch_performance_metrics', 'operation_id', 'uuid'),
        ('specql.batch_performance_metrics', 'operation', 'text'),
        ('specql.batch_performance_metrics', 'metric_name', 'text'),
        ('specql.batch_performance_metrics', 'metric_value', 'numeric'),
        ('specql.batch_performance_metrics', 'recorded_at', 'timestamptz'),
        ('specql.batch_operation_notifications', 'id', 'bigint'),
        ('specql.batch_operation_notifications', 'operation_id', 'uuid'),
        ('specql.batch_operation_notifications', 'operation', 'text'),
        ('specql.batch_operation_notifications', 'channels', 'text[]'),
        ('specql.batch_operation_notifications', 'message', 'text'),
        ('specql.batch_operation_notifications', 'payload', 'jsonb'),
        ('specql.batch_operation_notifications', 'created_at', 'timestamptz'),
        ('specql.batch_operation_notifications', 'delivered_at', 'timestamptz'),
        ('specql.batch_operation_cancellations', 'operation_id', 'uuid'),
        ('specql.batch_operation_cancellations', 'requested_at', 'timestamptz'),
        ('specql.batch_operation_audit', 'id', 'bigint'),
        ('specql.batch_operation_audit', 'operation_id', 'uuid'),
        ('specql.batch_operation_audit', 'batch_number', 'integer'),
        ('specql.batch_operation_audit', 'record_key', 'jsonb'),
        ('specql.batch_operation_audit', 'action', 'text'),
        ('specql.batch_operation_audit', 'old_row', 'jsonb'),
        ('specql.batch_operation_audit', 'new_row', 'jsonb'),
        ('specql.batch_operation_audit', 'changed_fields', 'text[]'),
        ('specql.batch_operation_audit', 'recorded_at', 'timestamptz'),
        ('specql.batch_operation_steps', 'operation_id', 'uuid'),
        ('specql.batch_operation_steps', 'operation', 'text'),
        ('specql.batch_operation_steps', 'step_name', 'text'),
        ('specql.batch_operation_steps', 'step_number', 'integer'),
        ('specql.batch_operation_steps', 'status', 'text'),
        ('specql.batch_operation_steps', 'total_records', 'bigint'),
        ('specql.batch_operation_steps', 'processed_records', 'bigint'),
        ('specql.batch_operation_steps', 'failed_records', 'bigint'),
        ('specql.batch_operation_steps', 'error_count', 'integer'),
        ('specql.batch_operation_steps', 'batch_count', 'integer'),
        ('specql.batch_operation_steps', 'output_records', 'bigint'),
        ('specql.batch_operation_steps', 'started_at', 'timestamptz'),
        ('specql.batch_operation_steps', 'completed_at', 'timestamptz'),
        ('specql.batch_operation_steps', 'error_message', 'text'),
        ('specql.batch_operation_outputs', 'operation_id', 'uuid'),
        ('specql.batch_operation_outputs', 'output', 'text'),
        ('specql.batch_operation_outputs', 'chunk', 'integer'),
        ('specql.batch_operation_outputs', 'keys', 'text[]'),
        ('specql.batch_operation_outputs', 'records', 'jsonb'),
        ('specql.batch_operation_parallel_runs', 'operation_id', 'uuid'),
        ('specql.batch_operation_parallel_runs', 'inputs', 'jsonb'),
        ('specql.batch_operation_parallel_runs', 'worker_batch_size', 'integer'),
        ('specql.batch_operation_parallel_runs', 'chunk_count', 'integer'),
        ('specql.batch_operation_parallel_runs', 'batches_per_chunk', 'integer'),
        ('specql.batch_operation_parallel_runs', 'workers', 'integer'),
        ('specql.batch_operation_parallel_runs', 'stop', 'text'),
        ('specql.batch_operation_chunks', 'id', 'bigint'),
        ('specql.batch_operation_chunks', 'operation_id', 'uuid'),
        ('specql.batch_operation_chunks', 'chunk_number', 'integer'),
        ('specql.batch_operation_chunks', 'status', 'text'),
        ('specql.batch_operation_chunks', 'records', 'bigint'),
        ('specql.batch_operation_chunks', 'lower_key', 'text'),
        ('specql.batch_operation_chunks', 'upper_key', 'text'),
        ('specql.batch_operation_chunks', 'keys', 'text[]'),
        ('specql.batch_operation_chunks', 'items', 'jsonb'),
        ('specql.batch_operation_chunks', 'first_index', 'integer'),
        ('specql.batch_operation_chunks', 'next_batch', 'integer'),
        ('specql.batch_operation_chunks', 'worker', 'integer'),
        ('specql.batch_operation_chunks', 'claimed_at', 'timestamptz'),
        ('specql.batch_operation_chunks', 'completed_at', 'timestamptz'),
        ('specql.batch_operation_chunks', 'processed_records', 'bigint'),
        ('specql.batch_operation_chunks', 'failed_records', 'bigint'),
        ('specql.batch_operation_chunks', 'error_count', 'integer')
      ) AS e(relation, name, type)
      LEFT JOIN pg_attribute a
        ON a.attrelid = e.relation::regclass AND a.attname = e.name AND NOT a.attisdropped
     WHERE a.atttypid IS DISTINCT FROM e.type::regtype;
    IF _wrong IS NOT NULL THEN
        RAISE EXCEPTION 'the specql runtime in this database does not match this version: %', _wrong;
    END IF;
END
$specql$;

-- Every run with its state: its status, except that a run still marked 'running' whose
-- backend is gone is 'abandoned'. Decided from the server's own state, never from a clock:
-- the run is live only while a backend with its pid and backend_start (a pid is reused,
-- backend_start tells them apart) is active in a statement that started before the run
-- (or its resume) did: the CALL running it. A cancelled statement leaves its session idle,
-- and a later statement on that session starts after the run did. Reads only the runs row,
-- pg_stat_activity for running rows and the cancellations primary key: no scan of the logs.
-- Columns are only ever appended (CREATE OR REPLACE VIEW keeps the existing ones).
CREATE OR REPLACE VIEW specql.batch_operation_status AS
SELECT r.operation_id,
       r.operation,
       t.state,
       r.status,
       r.total_records,
       r.processed_records,
       r.failed_records,
       r.error_count,
       r.batch_count,
       round(100.0 * (r.processed_records + r.failed_records) / nullif(r.total_records, 0), 1) AS percent_done,
       round(r.processed_records / nullif(t.active_seconds, 0), 1) AS records_per_second,
       CASE WHEN t.state = 'running' AND r.processed_records + r.failed_records > 0 AND t.active_seconds > 0 THEN
           round(greatest(r.total_records - r.processed_records - r.failed_records, 0)
                 * t.active_seconds / (r.processed_records + r.failed_records), 1)
       END AS eta_seconds,
       r.started_at,
       r.heartbeat_at,
       r.completed_at,
       r.resumed_at,
       r.cancel_requested_at IS NOT NULL
           OR EXISTS (SELECT FROM specql.batch_operation_cancellations c
                       WHERE c.operation_id = r.operation_id) AS cancel_requested,
       r.run_by,
       r.backend_pid,
       r.transaction_mode,
       r.batch_size,
       -- a multi-step run: the step it is in (or ended in); one index probe
       (SELECT s.step_name FROM specql.batch_operation_steps s
         WHERE s.operation_id = r.operation_id ORDER BY s.step_number DESC LIMIT 1) AS step,
       -- a parallel run still running: its live workers, the sessions that hold the run's advisory
       -- lock (shared, taken by each worker's CALL until it leaves) while active in a statement
       -- (another role's, hidden, counts: cannot tell). 0: nobody works on it, e.g. started with
       -- <op>_start and no worker called yet. NULL for every other run.
       CASE WHEN r.transaction_mode = 'parallel' AND r.status = 'running' THEN
           (SELECT count(*)::integer
              FROM pg_catalog.pg_locks l
              LEFT JOIN LATERAL pg_catalog.pg_stat_get_activity(l.pid) a ON true
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
               AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())
               AND l.classid = 1397837906::oid
               AND l.objid = (pg_catalog.hashtext(r.operation_id::text)::bigint & 4294967295)::oid
               AND a.pid IS NOT NULL AND (a.backend_start IS NULL OR a.state = 'active'))
       END AS workers
  FROM specql.batch_operation_runs r
 CROSS JOIN LATERAL (
       SELECT CASE
                  WHEN r.status <> 'running' OR r.backend_pid IS NULL THEN r.status
                  WHEN EXISTS (SELECT FROM pg_catalog.pg_stat_get_activity(r.backend_pid) a  -- pg_stat_activity's
                                WHERE a.pid = r.backend_pid                             -- row of that pid
                                  AND (a.backend_start IS NULL  -- another role's backend, hidden: cannot tell
                                       OR (a.backend_start = r.backend_start AND a.state = 'active'
                                           AND a.query_start <= coalesce(r.resumed_at, r.started_at))))
                      THEN 'running'
                  ELSE 'abandoned'
              END AS state,
              extract(epoch FROM coalesce(r.completed_at, r.heartbeat_at) - r.started_at)
              - coalesce(r.waited_ms, 0) / 1000 AS active_seconds) t;

COMMENT ON VIEW specql.batch_operation_status IS
    'Every specql run with its state: its status, or ''abandoned'' for a run marked running whose backend is gone (from pg_stat_activity, never a clock). progress: percent_done; records_per_second over the run''s time minus its throttle waits; eta_seconds while running; workers: a running parallel run''s live workers (0: nobody works on it). Caveat: pg_stat_activity hides another role''s sessions from a role without pg_read_all_stats; such a run whose backend pid is in use reads ''running''.';

-- Ask a run to stop after its current batch (status 'cancelled', committed batches stay).
-- The request goes to the cancellations table, which the routine reads after each batch
-- (a per_batch function's run row is invisible until its caller commits); the runs row is
-- marked too when it is visible and not locked by a batch in flight (never waits for one).
CREATE OR REPLACE FUNCTION specql.cancel_operation(operation_id uuid)
RETURNS boolean
LANGUAGE plpgsql
SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $specql$
DECLARE
    _status text;
BEGIN
    SELECT r.status INTO _status
      FROM specql.batch_operation_runs r
     WHERE r.operation_id = cancel_operation.operation_id;
    IF FOUND AND _status <> 'running' THEN
        RETURN false;  -- already ended: nothing to cancel
    END IF;
    INSERT INTO specql.batch_operation_cancellations AS c (operation_id)
    VALUES (cancel_operation.operation_id)
    ON CONFLICT DO NOTHING;
    UPDATE specql.batch_operation_runs r
       SET cancel_requested_at = clock_timestamp()
     WHERE r.operation_id IN (SELECT l.operation_id FROM specql.batch_operation_runs l
                               WHERE l.operation_id = cancel_operation.operation_id
                                 AND l.status = 'running' AND l.cancel_requested_at IS NULL
                                 FOR UPDATE SKIP LOCKED);
    RETURN true;
END
$specql$;

COMMENT ON FUNCTION specql.cancel_operation(uuid) IS
    'Ask the run operation_id to stop after its current batch (status cancelled; committed batches stay, a commit_per_batch run can be resumed). Works from any session, also for a per_batch function whose run is not visible yet. Returns false when the run has already ended, true when the request is recorded.';

RESET client_min_messages;
