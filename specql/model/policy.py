"""How an operation runs its batches: transaction and error modes, limits, time-outs, and what
it records and tells (SPEC §3-§4). Everything here is the routine's policy, independent of the
statement it applies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..contract import RESULT_FIELDS
from ..diagnostics import did_you_mean
from ..sqlnames import MAX_IDENTIFIER_BYTES, qname
from .names import shown
from .values import interval_ms, parse_interval

DEFAULT_BATCH_SIZE = 1000
AUTO_FIRST_BATCH_SIZE = 100  # batch_size: auto starts here, then aims at target_batch_time
AUTO_MIN_BATCH_SIZE, AUTO_MAX_BATCH_SIZE = 10, 10000
DEFAULT_TARGET_BATCH_TIME = "200 milliseconds"
MAX_CHANNELS = 32  # notification channels travel in a NOTIFY payload, which must stay under 8000 bytes
DEFAULT_MESSAGE = ("{operation} {status}: {processed_records} of {total_records} records processed, "
                   "{failed_records} failed")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


@dataclass
class Precondition:
    text: str
    sql: str
    over_table: bool


@dataclass
class Policy:
    batch_size: int
    transaction: str
    error_handling: str
    max_errors: int | None
    max_records: int | None
    requires_confirmation: bool
    preconditions: list[Precondition]
    timeout: str | None  # normalised interval text
    progress_tracking: bool
    progress_interval: int | None
    heartbeat_interval: str | None
    logging_level: str
    log_table: str  # quoted, schema-qualified
    metrics_table: str
    collect_metrics: bool
    notify: bool
    channels: list[str]
    message_parts: list[tuple[str, str]]  # ("text", literal) / ("field", result field)
    lock_timeout: str | None = None  # normalised interval text: how long a batch waits for a lock
    retry_attempts: int = 0  # retries of a batch that failed with a transient SQLSTATE
    retry_backoff: str = "100 milliseconds"  # the wait before the first retry; doubled each time
    target_batch_time: str | None = None  # batch_size: auto; None for a fixed batch size
    throttle: Throttle | None = None
    hooks: Hooks | None = None  # hooks: {before, after} (issue 14)
    audit: bool = False  # audit: true: one specql.batch_operation_audit row per changed record

    @property
    def captures_rows(self) -> bool:
        """Whether a batch's statement returns the rows it changed (for hooks or audit)."""
        return bool(self.hooks) or self.audit

    @property
    def auto_batch_size(self) -> bool:
        return self.target_batch_time is not None

    @property
    def target_batch_ms(self) -> int:
        return interval_ms(self.target_batch_time or DEFAULT_TARGET_BATCH_TIME)

    @property
    def auto_min_batch_size(self) -> int:
        return AUTO_MIN_BATCH_SIZE

    @property
    def auto_max_batch_size(self) -> int:
        return AUTO_MAX_BATCH_SIZE

    @property
    def is_procedure(self) -> bool:
        return self.transaction == "commit_per_batch"

    @property
    def logs_batches(self) -> bool:
        return self.progress_tracking or self.logging_level == "detailed"

    # Flags the routine templates branch on (derived here, not with {% set %} in a template).
    @property
    def routine_kind(self) -> str:
        return "PROCEDURE" if self.is_procedure else "FUNCTION"

    @property
    def kind_template(self) -> str:
        """The file of templates/sql/kinds/ that writes what differs between a function and a procedure."""
        return "procedure" if self.is_procedure else "function"

    @property
    def logs_run(self) -> bool:
        """A run row: always for a procedure (a resume and `specql status` read it)."""
        return self.logging_level != "none" or self.is_procedure

    @property
    def lock_timeout_ms(self) -> int | None:
        return interval_ms(self.lock_timeout) if self.lock_timeout else None

    @property
    def retry_backoff_ms(self) -> int:
        return interval_ms(self.retry_backoff)

    @property
    def resumable(self) -> bool:
        """A procedure commits each batch with its position: `resume => id` continues it."""
        return self.is_procedure

    @property
    def heartbeats(self) -> bool:
        """heartbeat_interval refreshes a function's run row; a procedure's is updated with every batch."""
        return bool(self.heartbeat_interval) and self.logs_run and not self.is_procedure

    @property
    def batch_savepoints(self) -> bool:
        """Whether each batch runs in its own savepoint (every transaction mode but single)."""
        return self.transaction != "single"

    @property
    def isolates(self) -> bool:
        """Whether a failed batch is applied again record by record (collect_errors)."""
        return self.batch_savepoints and self.error_handling == "collect_errors"

    @property
    def stops_on_failed_batch(self) -> bool:
        return self.batch_savepoints and self.error_handling == "stop_on_error"

    @property
    def stops_at_max_errors(self) -> bool:
        return self.max_errors is not None and self.error_handling != "stop_on_error"

    @property
    def may_stop(self) -> bool:
        """Whether a batch can end the run (_stop): a failed batch (stop_on_error), max_errors,
        or a transient failure that outlasted its retries (any mode with savepoints)."""
        return self.batch_savepoints

    @property
    def tracks_status(self) -> bool:
        """Whether the routine keeps each batch's outcome in _status (for its log row or to stop)."""
        return self.logs_batches or self.stops_on_failed_batch


@dataclass
class Hooks:
    """hooks: SQL functions called once per batch as fn(operation_id uuid, batch_number integer,
    old_rows jsonb, new_rows jsonb, changed_fields text[]) (SPEC §10); quoted, schema-qualified."""

    before: str | None = None
    after: str | None = None
    # (schema, function) of each, unquoted: the placeholders the migration creates (hooks.sql.j2)
    functions: list = field(default_factory=list)


@dataclass
class Throttle:
    """throttle: what the routine waits on between batches (each None / False when not asked)."""

    max_replication_lag: str | None = None  # normalised interval text
    max_archive_backlog: int | None = None  # WAL segments waiting for archive_command
    autovacuum: bool = False  # wait while an autovacuum worker processes the target table
    sleep: str | None = None  # normalised interval text: a fixed pause after every batch

    @property
    def sleep_ms(self) -> int | None:
        return interval_ms(self.sleep) if self.sleep else None

    @property
    def polls(self) -> bool:
        """Whether it reads the server's health (and waits while it is strained)."""
        return bool(self.max_replication_lag or self.max_archive_backlog or self.autovacuum)

    @property
    def reads_stats(self) -> bool:
        """Whether it reads other backends' rows of pg_stat_* (pg_read_all_stats)."""
        return bool(self.max_replication_lag or self.autovacuum)


def read_preconditions(ctx) -> list[Precondition]:
    preconditions: list[Precondition] = []
    for i, text in enumerate(ctx.spec.get("preconditions") or []):
        ppath = ctx.at("preconditions", i)
        frag = ctx.parse(text, ppath)
        if frag is None or not ctx.check_boolean(frag, ppath, "a precondition"):
            continue
        if frag.has_aggregate:
            ctx.check_columns(frag, ppath)
        elif frag.columns:
            name, offset = frag.columns[0]
            ctx.error(ppath, f"precondition refers to column '{name}' outside an aggregate; use an "
                             f"aggregate such as count(*) or bool_and(...) to check the table", offset=offset)
            continue
        preconditions.append(Precondition(text.strip(), ctx.render_fragment(frag, ppath), frag.has_aggregate))
    return preconditions


def read_policy(ctx, preconditions: list[Precondition]) -> Policy:
    spec, at = ctx.spec, ctx.at
    transaction = spec.get("transaction", "per_batch")
    error_handling = spec.get("error_handling", "stop_on_error")
    if spec.get("data_source") == "csv_file":  # a CSV import rejects rows one by one (csvsource.py)
        error_handling = "continue_on_error" if spec.get("skip_invalid_rows") else "stop_on_error"
    if transaction == "single" and error_handling != "stop_on_error":
        ctx.error(at("error_handling"), f"error_handling '{error_handling}' cannot work with "
                                        f"transaction: single (all-or-nothing stops at the first error)")
    if "max_errors" in spec and error_handling == "stop_on_error":
        ctx.warn(at("max_errors"), "max_errors has no effect with error_handling: stop_on_error", key=True)

    timeout = _duration(ctx, "timeout", "30 minutes")
    heartbeat = _duration(ctx, "heartbeat_interval", "10 seconds")

    logging_level = spec.get("logging_level", "summary")
    # Per-batch log rows by default (SPEC §4); `progress_tracking: false` or `logging_level: none` turn them off.
    progress_tracking = spec.get("progress_tracking", logging_level != "none")
    if progress_tracking and logging_level == "none":
        ctx.error(at("logging_level"), "logging_level: none contradicts progress_tracking: true")

    notify, channels, message_parts = _notification(ctx)
    lock_timeout = _duration(ctx, "lock_timeout", "2 seconds")
    retry = spec.get("retry") or {}
    backoff = parse_interval(retry.get("backoff", "100 milliseconds"))
    if backoff is None:
        ctx.error(at("retry", "backoff"), f"retry backoff {shown(retry['backoff'])} is not a positive duration "
                                          f"of at most 100 years, such as \"100 milliseconds\"")
    if retry.get("attempts") and transaction == "single":
        ctx.error(at("retry"), "retry cannot work with transaction: single (a failed batch aborts the whole run; "
                               "there is no savepoint to retry it in)", key=True)
    batch_size, target_batch_time = _batch_size(ctx)
    return Policy(
        batch_size=batch_size, transaction=transaction,
        error_handling=error_handling, max_errors=spec.get("max_errors"), max_records=spec.get("max_records"),
        requires_confirmation=spec.get("requires_confirmation", False), preconditions=preconditions,
        timeout=timeout, progress_tracking=progress_tracking,
        progress_interval=spec.get("progress_notification_interval"), heartbeat_interval=heartbeat,
        logging_level=logging_level,
        log_table=_runtime_table(ctx, "log_table", "batch_operation_logs"),
        metrics_table=_runtime_table(ctx, "metrics_table", "batch_performance_metrics"),
        collect_metrics=spec.get("collect_metrics", False), notify=notify, channels=channels,
        message_parts=message_parts, lock_timeout=lock_timeout, retry_attempts=retry.get("attempts", 0),
        retry_backoff=backoff or "100 milliseconds", target_batch_time=target_batch_time,
        throttle=_throttle(ctx), hooks=_hooks(ctx), audit=_audit(ctx))


# No `$` in a hook's name: the migration writes it inside a dollar-quoted block (its placeholder).
_HOOK_NAME = re.compile(r"(?:([A-Za-z_][A-Za-z0-9_]*)\.)?([A-Za-z_][A-Za-z0-9_]*)")


def _hooks(ctx) -> Hooks | None:
    """hooks: {before: schema.fn, after: schema.fn}; a bare name is in the entity's schema."""
    spec = ctx.spec.get("hooks")
    if not spec:
        return None
    if ctx.spec.get("operation_type") == "upsert":
        ctx.error(ctx.at("hooks"), "hooks are not supported on upsert (its old rows are not captured); "
                                   "use an update and an insert", key=True)
        return None
    names, functions = {}, []
    for when in ("before", "after"):
        if when not in spec:
            continue
        m = _HOOK_NAME.fullmatch(spec[when])
        if m is None or any(part and len(part.encode("utf-8")) > MAX_IDENTIFIER_BYTES for part in m.groups()):
            ctx.error(ctx.at("hooks", when), f"hook {shown(spec[when])} must be a function name such as "
                                             f"audit.on_batch (schema.function)")
            continue
        names[when] = qname(m.group(1) or ctx.entity.schema, m.group(2))
        functions.append((m.group(1) or ctx.entity.schema, m.group(2)))
    return Hooks(**names, functions=functions) if names else None


def _audit(ctx) -> bool:
    if not ctx.spec.get("audit"):
        return False
    if ctx.spec.get("operation_type") == "upsert":
        ctx.error(ctx.at("audit"), "audit is not supported on upsert (its old rows are not captured)", key=True)
        return False
    return True


def _batch_size(ctx) -> tuple[int, str | None]:
    """(the first batch's size, target_batch_time or None): `batch_size: auto` starts at
    AUTO_FIRST_BATCH_SIZE and adapts; a number is fixed."""
    size = ctx.spec.get("batch_size", DEFAULT_BATCH_SIZE)
    target = _duration(ctx, "target_batch_time", DEFAULT_TARGET_BATCH_TIME)
    if size != "auto":
        if "target_batch_time" in ctx.spec:
            ctx.warn(ctx.at("target_batch_time"), "target_batch_time has no effect without batch_size: auto",
                     key=True)
        return size, None
    return AUTO_FIRST_BATCH_SIZE, target or parse_interval(DEFAULT_TARGET_BATCH_TIME)


def _throttle(ctx) -> Throttle | None:
    spec = ctx.spec.get("throttle")
    if not spec:
        return None
    durations = {}
    for key, example in (("max_replication_lag", "10 seconds"), ("sleep", "50 milliseconds")):
        if key in spec:
            durations[key] = parse_interval(spec[key])
            if durations[key] is None:
                ctx.error(ctx.at("throttle", key), f"throttle {key} {shown(spec[key])} is not a positive duration "
                                                   f"of at most 100 years, such as \"{example}\"")
    throttle = Throttle(max_replication_lag=durations.get("max_replication_lag"),
                        max_archive_backlog=spec.get("max_archive_backlog"),
                        autovacuum=spec.get("autovacuum") == "pause", sleep=durations.get("sleep"))
    return throttle if throttle.polls or throttle.sleep else None


def _duration(ctx, key: str, example: str) -> str | None:
    if key not in ctx.spec:
        return None
    normalised = parse_interval(ctx.spec[key])
    if normalised is None:
        ctx.error(ctx.at(key), f"{key} {shown(ctx.spec[key])} is not a positive duration of at most "
                               f"100 years, such as \"{example}\"")
    return normalised


def _notification(ctx) -> tuple[bool, list[str], list[tuple[str, str]]]:
    spec, at = ctx.spec, ctx.at
    notify = spec.get("notify_on_completion", False)
    channels = spec.get("notification_channels") or []
    if len(channels) > MAX_CHANNELS:
        ctx.error(at("notification_channels"), f"{len(channels)} notification channels: at most "
                                               f"{MAX_CHANNELS} fit in a notification")
    for i, channel in enumerate(channels):
        if len(channel.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
            ctx.error(at("notification_channels", i), f"notification channel {shown(channel)} is longer "
                                                      f"than {MAX_IDENTIFIER_BYTES} bytes")
    if (channels or "notification_message" in spec) and not notify:
        key = "notification_channels" if channels else "notification_message"
        ctx.warn(at(key), f"'{key}' has no effect without notify_on_completion: true", key=True)
    message = spec.get("notification_message", DEFAULT_MESSAGE)
    return notify, list(channels), _message_parts(ctx, message, at("notification_message"))


def _message_parts(ctx, message: str, path: tuple) -> list[tuple[str, str]]:
    parts: list[tuple[str, str]] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(message):
        if m.start() > pos:
            parts.append(("text", message[pos:m.start()]))
        name = m.group(1).strip()
        if name not in RESULT_FIELDS:
            ctx.error(path, f"unknown placeholder '{{{name}}}' in notification_message"
                            f"{did_you_mean(name, RESULT_FIELDS)}", offset=m.start())
        parts.append(("field", name))
        pos = m.end()
    if pos < len(message):
        parts.append(("text", message[pos:]))
    return parts


def _runtime_table(ctx, key: str, default: str) -> str:
    """A log or metrics table: specql's own, or one the entity names (created LIKE specql's)."""
    name = ctx.spec.get(key, default)
    schema, _, table = name.rpartition(".")
    schema = schema or "specql"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", table) or (schema and not re.fullmatch(
            r"[A-Za-z_][A-Za-z0-9_$]*", schema)):
        ctx.error(ctx.at(key), f"{key} must be a table name or schema.table, got '{name}'")
        return qname("specql", default)
    ident = qname(schema, table)
    if ident != qname("specql", default):
        extra = ExtraTable(schema, table, default)
        if extra not in ctx.entity.extra_tables:
            ctx.entity.extra_tables.append(extra)
    return ident


@dataclass(frozen=True)
class ExtraTable:
    """A log or metrics table an entity names instead of specql's own: created with the
    columns of specql's (`like_name` in schema specql) and kept up with them."""

    schema: str
    table: str
    like_name: str

    @property
    def ident(self) -> str:
        return qname(self.schema, self.table)

    @property
    def like(self) -> str:
        return qname("specql", self.like_name)
