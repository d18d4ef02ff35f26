"""Parallel workers (SPEC §9): `parallel: true` adds `<op>_start` and `<op>_worker` beside the routine.

`<op>_start(<the routine's parameters>)` splits the work into chunks of `worker_batch_size`
records in the claim queue `specql.batch_operation_chunks` and returns the run's id; any number
of sessions then `CALL <op>_worker(operation_id => id)`: each claims chunks (FOR UPDATE SKIP
LOCKED), applies them in batches of `batch_size` with the operation's error, log and stop
logic, and marks a chunk done in the transaction that applies it (a dead worker's chunk is
claimed again, never applied twice). The last worker to leave closes the run.

What this module decides: whether an operation is parallel, its limits, and the refusals
(transaction: single, steps, a throttle, batch_size: auto, hooks and audit, which the workers do
not do yet).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..sqlnames import MAX_IDENTIFIER_BYTES, qname

DEFAULT_CHUNK_BATCHES = 10  # worker_batch_size defaults to this many batches
_KEYS = ("max_workers", "worker_batch_size", "max_errors_per_worker")


@dataclass
class Parallel:
    """The parallel entry points of one operation."""

    schema: str
    operation: str
    max_workers: int | None  # bounds `specql run --workers`; None: no bound
    worker_batch_size: int  # records per chunk
    max_errors_per_worker: int | None

    @property
    def start_name(self) -> str:
        return f"{self.operation}_start"

    @property
    def worker_name(self) -> str:
        return f"{self.operation}_worker"

    @property
    def start_ident(self) -> str:
        return qname(self.schema, self.start_name)

    @property
    def worker_ident(self) -> str:
        return qname(self.schema, self.worker_name)

    # For the templates (templates/sql/parallel/): what depends on the operation too.
    def start_args(self, op) -> list:
        return start_args(op)

    def start_types(self, op) -> str:
        return start_types(op)

    def worker_inputs(self, op) -> list:
        return worker_inputs(op)


def read_parallel(ctx, policy) -> Parallel | None:
    """The operation's Parallel, or None when it is not parallel (refusals go to ctx)."""
    spec, at = ctx.spec, ctx.at
    if not spec.get("parallel"):
        for key in _KEYS:
            if key in spec:
                ctx.warn(at(key), f"'{key}' has no effect without parallel: true", key=True)
        return None
    refused = False
    if spec.get("transaction") == "single":
        ctx.error(at("parallel"), "parallel: true cannot work with transaction: single (workers commit "
                                  "each chunk in their own transaction; single is all-or-nothing in one)")
        refused = True
    if "steps" in spec:
        ctx.error(at("parallel"), "parallel workers do not apply to steps yet")
        refused = True
    if spec.get("throttle"):
        ctx.error(at("throttle"), "a throttle does not apply to parallel workers yet", key=True)
        refused = True
    for key in ("hooks", "audit"):
        if spec.get(key):
            ctx.error(at(key), f"'{key}' does not apply to parallel workers yet", key=True)
            refused = True
    if policy.auto_batch_size:
        ctx.error(at("batch_size"), "batch_size: auto does not apply to parallel workers yet; "
                                    "give a number", key=True)
        refused = True
    longest = max(len(s.encode("utf-8")) for s in ("_start", "_worker")) + len(ctx.name.encode("utf-8"))
    if longest > MAX_IDENTIFIER_BYTES:
        ctx.error(at("operation"), f"operation name '{ctx.name}' is too long for parallel: true: "
                                   f"'{ctx.name}_worker' must fit in {MAX_IDENTIFIER_BYTES} bytes")
        refused = True
    if refused:
        return None
    return Parallel(schema=ctx.entity.schema, operation=ctx.name, max_workers=spec.get("max_workers"),
                    worker_batch_size=spec.get("worker_batch_size", DEFAULT_CHUNK_BATCHES * policy.batch_size),
                    max_errors_per_worker=spec.get("max_errors_per_worker"))


def start_args(op) -> list:
    """The arguments <op>_start adds after the parameters: the routine's (confirm, batch_size...)
    but resume (a parallel run is resumed by starting workers again)."""
    return [(p, default) for p, default in op.routine_args if p.name != "resume"]


def start_types(op) -> str:
    """<op>_start's argument types as to_regprocedure reads them."""
    return ", ".join([p.sql_type for p in op.params] + [p.sql_type for p, _ in start_args(op)])


def worker_inputs(op) -> list:
    """The parameters a worker reads from the run (as text): the operation's own but the id
    array and the jsonb data_source, whose values the chunks hold. Not specql's arguments:
    confirm is op_start's decision and batch_size is in the run row (a worker that declared
    them would never read them: plpgsql_check warns)."""
    held = {p.name for p in (op.statement.key_param, op.statement.source_param) if p is not None}
    return [p for p in op.params if p.name not in held]
