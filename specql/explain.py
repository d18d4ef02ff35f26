"""`specql plan`: what a run of an operation would do, before it runs, changing nothing.

For the operation as generated (the routine already in the database), with its parameters
bound the way `specql run` binds them:

- counts the records the run would touch (the condition, or the data_source's elements),
- runs the routine for a few batches in a transaction that is rolled back, with the
  statements' plans logged (auto_explain, nested statements) and shows each batch statement's
  plan, flagging a walk or key lookup that is not index-backed,
- times those sample batches against a run stopped before its first batch, and estimates the
  whole run: setup + batches x (time per sample batch), the time per batch taken on the
  server's clock from the batches' own log rows.

How a sample run stops: inside the rolled-back transaction a statement trigger on the target
(created there, so it goes with the rollback) asks the run to stop (specql.cancel_operation's
row) after N batch statements, counted by its WHEN clause (a temporary sequence), so the
sample's batches carry no call of ours; the routine's cancel probe ends it before the next
batch. A `commit_per_batch` procedure cannot COMMIT inside a transaction block: the sample
calls a copy of it without its COMMITs, made in the same transaction. Everything the sample
did is rolled back; only sequences consumed by an insert's defaults keep their new values
(PostgreSQL never rolls nextval back).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field

import psycopg
from psycopg import sql

from .harness_target import placeholders
from .model import Operation
from .run import Bound, RunError, call_sql, check_values, open_connection

STOP_FUNCTION = "specql._plan_sample_stop"  # created and dropped inside the rolled-back transaction
STOP_COUNTER = "specql_plan_sample_statements"  # a temporary sequence, the same way
SAMPLE_SCHEMA = "specql_plan_sample"  # a commit_per_batch procedure's copy without COMMIT, the same way
EXPECTED_ENDS = ("57014",)  # cancelled (transaction single raises it)
# Batches a sample times. 12 left 5 gaps after PL/pgSQL's custom plans: batches of 100 rows
# then came out 0.76-1.27 ms on the one server, 0.74-0.78 ms with 50 (the real run: 0.83 ms).
SAMPLE_BATCHES = 50  # `specql plan --sample-batches` shows the same default


@dataclass
class StatementPlan:
    query: str
    plan: dict
    warnings: list[str] = field(default_factory=list)


@dataclass
class Sample:
    batches: int  # batches the sample run completed
    records: int | None  # records they processed (None when the run ended in an error)
    seconds: float  # the sample call, setup included
    setup_seconds: float  # the same call stopped before its first batch
    batch_seconds: float | None = None  # the time per batch the estimate takes
    timed_by: str | None = None  # where that comes from: "log rows", "routine's clock", "client's clock"


@dataclass
class PlanReport:
    operation: str
    routine: str
    transaction: str
    driver: str
    batch_size: int
    records: int  # what the run would touch
    batches: int
    statements: list[StatementPlan]
    warnings: list[str]
    sample: Sample | None
    estimate_seconds: float | None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- counting


def count_records(conn: psycopg.Connection, op: Operation, bound: list[Bound]) -> int:
    """The records a run would touch: rows matching the condition, or the data_source's elements."""
    values = {f"p{i}": b.text for i, b in enumerate(bound, start=1)}
    typed = [{"sql_type": b.sql_type} for b in bound]
    if op.statement.driver == "source" and op.statement.source_param is not None:
        i = next(i for i, b in enumerate(bound, start=1) if b.name == op.statement.source_param.name)
        return conn.execute(f"SELECT coalesce(jsonb_array_length(%(p{i})s::jsonb), 0)", values).fetchone()[0]
    where = op.statement.count_sql
    query = f"SELECT count(*) FROM {op.target.ident}"
    if where:
        query += " WHERE " + placeholders(where, typed)
    return conn.execute(query, values if where else None).fetchone()[0]


# --------------------------------------------------------------------------- sample runs


def _install_stop(conn: psycopg.Connection, op: Operation, after_statements: int) -> None:
    """Inside the current transaction: stop the run after `after_statements` batch statements
    on the target (0: as soon as the run row exists, i.e. before the first batch).

    The statement trigger's WHEN clause counts the statements with a temporary sequence and is
    evaluated in C: the trigger's function runs once, at the last sample batch. A PL/pgSQL call
    (and a notice) per statement cost ~0.3 ms a batch (measured on a full run of 10,000 batches
    of 100, rolled back, with and without it), a third of such a batch, all of it in the
    estimate (1.55 x the real run)."""
    conn.execute(f"""
        CREATE FUNCTION {STOP_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN
            INSERT INTO specql.batch_operation_cancellations (operation_id)
            SELECT operation_id FROM specql.batch_operation_runs
            WHERE backend_pid = pg_backend_pid() AND completed_at IS NULL
            ON CONFLICT DO NOTHING;
            RETURN NULL;
        END $f$""")
    if after_statements <= 0:
        conn.execute(f"CREATE TRIGGER specql_plan_sample_stop AFTER INSERT ON specql.batch_operation_runs "
                     f"FOR EACH ROW EXECUTE FUNCTION {STOP_FUNCTION}()")
        return
    conn.execute(f"CREATE TEMPORARY SEQUENCE {STOP_COUNTER}")
    conn.execute(sql.SQL("CREATE TRIGGER specql_plan_sample_stop AFTER INSERT OR UPDATE OR DELETE ON {} "
                         "FOR EACH STATEMENT WHEN (pg_catalog.nextval({}::regclass) >= {}) "
                         "EXECUTE FUNCTION {}()").format(
        sql.SQL(op.target.ident), sql.Literal(f"pg_temp.{STOP_COUNTER}"), sql.Literal(after_statements),
        sql.SQL(STOP_FUNCTION)))


def _procedure_copy(conn: psycopg.Connection, op: Operation, query: sql.Composed) -> str:
    """Inside the rolled-back transaction: a copy of a commit_per_batch procedure without its
    COMMITs (a procedure CALLed in a transaction block cannot commit), in a schema of its own
    under the same name (the body qualifies its parameters with the routine's name); the CALL
    of that copy."""
    source = conn.execute("SELECT pg_get_functiondef(to_regprocedure(%s))",
                          (f"{op.ident}({op.signature_types})",)).fetchone()[0]
    source, n = re.subn(r"(?m)^(\s*)COMMIT;[ \t]*$", r"\1NULL;  -- COMMIT left out: specql plan's rolled-back sample",
                        source)
    copy = sql.Identifier(SAMPLE_SCHEMA, op.name).as_string(conn)
    source = re.sub(r"^CREATE OR REPLACE PROCEDURE\s+\S+?\(", lambda m: f"CREATE PROCEDURE {copy}(", source, count=1)
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SAMPLE_SCHEMA)))
    conn.execute(source)
    text = query.as_string(conn)
    return text.replace(sql.Identifier(op.schema, op.name).as_string(conn), copy, 1)


@dataclass
class _Run:
    """One rolled-back call of the routine."""
    seconds: float  # on the client's clock, sending the arguments included
    batches: int  # batches done
    records: int | None  # records they processed (None when the run ended in an error)
    plans: list[dict]  # auto_explain's plans
    server_seconds: float | None  # the routine's own started_at .. completed_at (its result)
    started: float | None  # its started_at (epoch seconds)
    stamps: list[float]  # the server's clock at the end of each batch: the run's log rows


def _batch_stamps(conn: psycopg.Connection, op: Operation, operation_id) -> list[float]:
    """When each batch of the sample ended, from the log rows the routine writes (read before the
    rollback): the server's clock, with nothing of the sample's own in between."""
    if not op.policy.logs_batches or operation_id is None:
        return []
    rows = conn.execute(f"SELECT extract(epoch FROM completed_at)::float8 FROM {op.policy.log_table} "
                        "WHERE operation_id = %s ORDER BY completed_at", (operation_id,)).fetchall()
    return [r[0] for r in rows]


def _sample_run(conn: psycopg.Connection, op: Operation, bound: list[Bound], batch_size: int | None,
                after_statements: int, explain: bool) -> _Run:
    """One call stopped after `after_statements` batch statements, rolled back."""
    plans: list[dict] = []

    def notice(diag: psycopg.errors.Diagnostic) -> None:
        text = diag.message_primary or ""
        if explain and text.startswith("duration:") and "plan:" in text:
            try:
                plans.append(json.loads(text.split("plan:", 1)[1]))
            except ValueError:
                pass

    query, values = call_sql(op, bound, confirm=op.policy.requires_confirmation, batch_size=batch_size, resume=None)
    conn.add_notice_handler(notice)
    try:
        with conn.transaction(force_rollback=True):
            if op.is_procedure:
                query = _procedure_copy(conn, op, query)
            _install_stop(conn, op, after_statements)
            if explain:
                conn.execute("LOAD 'auto_explain'")
                for name, value in (("log_min_duration", "0"), ("log_nested_statements", "on"),
                                    ("log_format", "json"), ("log_level", "notice")):
                    conn.execute(sql.SQL("SET LOCAL {} = {}").format(
                        sql.Identifier("auto_explain", name), sql.Literal(value)))
            t0 = time.perf_counter()
            batches, records, server, started, stamps = 0, None, None, None, []
            try:
                with conn.transaction():
                    cur = conn.execute(query, values)
                    row = cur.fetchone()
                seconds = time.perf_counter() - t0
                if op.is_procedure:
                    row = conn.execute("SELECT (%s::specql.batch_operation_result).*", (row[0],)).fetchone()
                result = dict(zip([c.name for c in conn.execute(
                    "SELECT (NULL::specql.batch_operation_result).*").description], row))
                batches, records = result.get("batch_count") or 0, result.get("processed_records")
                if result.get("status") not in ("cancelled", "completed", "completed_with_errors"):
                    raise RunError(f"the sample run ended {result.get('status')}; nothing was changed")
                if result.get("started_at") and result.get("completed_at"):
                    server = (result["completed_at"] - result["started_at"]).total_seconds()
                    started = result["started_at"].timestamp()
                stamps = _batch_stamps(conn, op, result.get("operation_id"))
            except psycopg.Error as exc:
                seconds = time.perf_counter() - t0
                if exc.sqlstate not in EXPECTED_ENDS:
                    message = (exc.diag.message_primary or str(exc)).splitlines()[0]
                    raise RunError(f"the sample run failed: {message} (SQLSTATE {exc.sqlstate}); "
                                   "nothing was changed") from None
                batches = max(after_statements, 0)
    finally:
        conn.remove_notice_handler(notice)
    return _Run(seconds, batches, records, plans, server, started, stamps)


def estimate_seconds(setup: _Run, run: _Run, batches: int) -> tuple[float, float, str] | None:
    """(estimate, time per batch, its source) for the whole run: the call's setup (client's
    clock: sending the arguments is part of a run), then `batches` batches at the sample's time
    per batch on the server's clock.

    With the batches' log rows: the mean gap between the ends of consecutive batches (the run
    is their sum: a real run's gaps averaged 1.08 x their median, its slow batches included).
    PL/pgSQL plans a statement's first 5 executions for their values (custom plans), then may
    keep a generic plan: the gaps after the sixth batch are the run's steady state when there
    are that many; the first batch's own extra time is added once. Without log rows: the
    routine's own duration (its result's started_at .. completed_at) less the setup call's, per
    batch. Only without either, the client's clock (which adds sending the arguments: a 1M-id
    array drowned 5 batches)."""
    stamps = run.stamps
    if len(stamps) >= 3:
        steady = stamps[6:] if len(stamps) >= 9 else stamps[1:]
        gaps = [b - a for a, b in zip(steady, steady[1:])]
        per_batch = sum(gaps) / len(gaps)
        if run.started is not None and setup.server_seconds is not None:  # the first batch's time, its setup out
            first = max(stamps[0] - run.started - setup.server_seconds, 0.0)
        else:
            first = max(run.seconds - setup.seconds - (stamps[-1] - stamps[0]), 0.0)
        return setup.seconds + max(batches - 1, 0) * per_batch + first, per_batch, "log rows"
    if not run.batches:
        return None
    if run.server_seconds is not None and setup.server_seconds is not None:
        per_batch, source = max(run.server_seconds - setup.server_seconds, 0.0) / run.batches, "routine's clock"
    else:
        per_batch, source = max(run.seconds - setup.seconds, 0.0) / run.batches, "client's clock"
    return setup.seconds + batches * per_batch, per_batch, source


def commit_seconds(conn: psycopg.Connection, n: int = 20) -> float:
    """What one commit of a transaction that has an id costs on this server (its WAL flush,
    with synchronous_commit on): the median of n, each writing nothing but its commit record."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        with conn.transaction():
            conn.execute("SELECT pg_catalog.pg_current_xact_id()")
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


# --------------------------------------------------------------------------- plans


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _is_batch_statement(query: str, table: str) -> bool:
    """A statement of the batches on the target: it names the target, and counts nothing (the
    up-front count, max_records and preconditions do)."""
    return table in query and "count(" not in query.lower()


def plan_warnings(query: str, plan: dict, relname: str) -> list[str]:
    """A Seq Scan of the target in a batch statement: the key lookup or walk is not
    index-backed. A walk (ORDER BY ... LIMIT) that filters rows on the condition: the
    condition is not index-backed (it reads rows the condition rejects to fill a batch)."""
    warnings = []
    walk = re.search(r"(?i)\border\s+by\b.*\blimit\b", query, re.S) is not None
    for node in _nodes(plan):
        if node.get("Relation Name") != relname:
            continue
        if node["Node Type"] == "Seq Scan":
            warnings.append(f"not index-backed: Seq Scan on {relname} in a batch statement "
                            f"(every batch reads the whole table){_filter(node)}")
        elif walk and node.get("Filter") and node["Node Type"] != "Tid Range Scan":
            # (a heap walk's window: each block is read once, in order, whatever the filter rejects)
            warnings.append(f"condition not index-backed: the walk ({node['Node Type']}"
                            f"{' using ' + node['Index Name'] if node.get('Index Name') else ''}) checks "
                            f"{node['Filter']} row by row, reading past rows it rejects to fill each batch")
    return warnings


def _filter(node: dict) -> str:
    return f" (Filter: {node['Filter']})" if node.get("Filter") else ""


def render_plan(plan: dict, depth: int = 0) -> list[str]:
    """A compact text tree of an auto_explain JSON plan."""
    n = plan
    head = n["Node Type"]
    if n.get("Index Name"):
        head += f" using {n['Index Name']}"
    if n.get("Relation Name"):
        head += f" on {n['Relation Name']}"
    head += f"  (cost={n.get('Startup Cost', 0):.2f}..{n.get('Total Cost', 0):.2f} rows={n.get('Plan Rows', 0)})"
    lines = [("  " * depth) + ("-> " if depth else "") + head]
    for key in ("Index Cond", "TID Cond", "Recheck Cond", "Filter", "Sort Key"):
        if n.get(key):
            value = ", ".join(n[key]) if isinstance(n[key], list) else n[key]
            if len(value) > 160:  # an id array folded into the plan as a constant
                value = value[:150] + f"... ({len(value):,} characters)"
            lines.append(("  " * depth) + f"     {key}: {value}")
    for child in n.get("Plans", []):
        lines.extend(render_plan(child, depth + 1))
    return lines


# --------------------------------------------------------------------------- the report


def plan_operation(url: str, op: Operation, bound: list[Bound], *, batch_size: int | None = None,
                   sample_batches: int = SAMPLE_BATCHES) -> PlanReport:
    conn = open_connection(url, f"specql plan {op.name}")
    size = batch_size or (op.policy.batch_size if not op.policy.auto_batch_size else None)
    notes = []
    if size is None:
        from .model.policy import AUTO_FIRST_BATCH_SIZE
        size = AUTO_FIRST_BATCH_SIZE
        notes.append(f"batch_size auto: estimated at its first size, {size} (it then adapts to target_batch_time)")
    with conn:
        check_values(conn, bound)
        exists = conn.execute("SELECT to_regprocedure(%s) IS NOT NULL",
                              (f"{op.ident}({op.signature_types})",)).fetchone()[0]
        if not exists:
            raise RunError(f"{op.schema}.{op.name} is not in the database: apply the migrations first "
                           "(specql migrate)")
        records = count_records(conn, op, bound)
        batches = math.ceil(records / size) if records else 0
        relname = conn.execute("SELECT c.relname FROM pg_class c WHERE c.oid = %s::regclass",
                               (op.target.ident,)).fetchone()[0]
        # Plans: one batch, rolled back, with auto_explain logging every nested statement.
        statements: list[StatementPlan] = []
        try:
            raw = _sample_run(conn, op, bound, batch_size, 1, explain=True).plans
        except psycopg.Error as exc:  # LOAD refused (not a superuser, auto_explain missing)
            raw = []
            notes.append(f"plans unavailable: {(exc.diag.message_primary or str(exc)).splitlines()[0]}")
        seen = set()
        for entry in raw:
            query = entry.get("Query Text", "")
            key = " ".join(query.split())
            if key in seen or not _is_batch_statement(query, op.target.ident):
                continue
            seen.add(key)
            plan = entry.get("Plan", {})
            statements.append(StatementPlan(query.strip(), plan, plan_warnings(query, plan, relname)))
        warnings = [w for s in statements for w in s.warnings]
        # Timing: the call stopped before its first batch, then after sample_batches batches.
        sample = None
        estimate = None
        if records:
            setup = _sample_run(conn, op, bound, batch_size, 0, explain=False)
            # Twice: the first sample's batches are the first to touch their pages since the
            # last checkpoint (a full-page image in the WAL each) and read them cold, which a
            # long run pays once per page, not once per row; the second meets them as a run's
            # later batches do (the plans' sample above touched the first batch already).
            _sample_run(conn, op, bound, batch_size, sample_batches, explain=False)
            run = _sample_run(conn, op, bound, batch_size, sample_batches, explain=False)
            sample = Sample(run.batches, run.records, run.seconds, setup.seconds)
            timed = estimate_seconds(setup, run, batches)
            if timed is not None:
                estimate, sample.batch_seconds, sample.timed_by = timed
        if op.is_procedure:
            commit = commit_seconds(conn)
            notes.append(f"commit_per_batch: sampled as a copy of the procedure without its COMMITs (a "
                         f"procedure cannot commit inside the rolled-back transaction); the estimate adds "
                         f"{commit * 1000:.2f} ms a batch, what a commit costs here (measured)")
            if estimate is not None:
                estimate += batches * commit
    routine = f"{op.schema}.{op.name}"
    return PlanReport(op.name, routine, op.policy.transaction, op.statement.driver, size, records, batches,
                      statements, warnings, sample, estimate, notes)


def render_text(report: PlanReport) -> str:
    out = [f"{report.routine}: {report.operation}, transaction {report.transaction}, "
           f"batch_size {report.batch_size}, driver {report.driver}",
           f"records to touch: {report.records:,}  batches: {report.batches:,}", ""]
    for i, s in enumerate(report.statements, start=1):
        out.append(f"batch statement {i}:")
        out.extend("    " + line for line in s.query.splitlines())
        out.append("  plan:")
        out.extend("    " + line for line in render_plan(s.plan))
        out.append("")
    if not report.statements:
        out.append("no batch statement plans (nothing to touch, or plans unavailable)")
        out.append("")
    for w in report.warnings:
        out.append(f"warning: {w}")
    if report.sample:
        s = report.sample
        per_batch = f"; {s.batch_seconds * 1000:.2f} ms a batch ({s.timed_by})" if s.batch_seconds is not None else ""
        out.append(f"sample: {s.batches} batch(es) in {s.seconds:.3f}s (setup alone {s.setup_seconds:.3f}s), "
                   f"rolled back{per_batch}")
    if report.estimate_seconds is not None:
        out.append(f"estimate: {report.batches:,} batches, about {report.estimate_seconds:.1f}s")
    for n in report.notes:
        out.append(f"note: {n}")
    out.append("nothing was changed")
    return "\n".join(out)


def render_json(report: PlanReport) -> str:
    return json.dumps(report.as_dict(), indent=2, default=str)
