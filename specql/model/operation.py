"""One batch operation: the routine specql writes for a `batch_operations` pattern.

An operation is its name and parameters, the `statement` it applies to each batch, and the
`policy` it runs the batches by. Templates read `op.driver` or `op.transaction` directly: an
attribute the operation lacks is looked up on its statement, then on its policy. The flags
that depend on both are defined here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..sqlnames import literal, qi, qname
from .policy import Policy
from .scope import Param
from .statement import Statement


@dataclass
class Operation:
    name: str
    schema: str
    description: str | None
    entity: object  # the entity whose file declares it
    target: object  # the entity it operates on
    params: list[Param]
    statement: Statement
    policy: Policy
    source_path: str  # where diagnostics point
    source_name: str  # what generated files name as their source (independent of the working folder)
    # For generated tests: each parameter's role, and constants the conditions compare columns with.
    param_roles: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # name -> (role, column)
    compared_values: dict[str, list] = field(default_factory=dict)
    # Functions its SQL calls, with where they are written ("file:line:col"): `specql test run`
    # reports one the database lacks before any test fails on it.
    functions: list[tuple[str, str]] = field(default_factory=list)
    # A multi-step operation (SPEC §8): its steps in run order (model/steps.Step); the routine
    # renders each step's batches with `as_step(step)`, the operation seen from that step.
    steps: list = field(default_factory=list)
    step: object = None  # set on the operation as_step returns
    step_count: int = 0
    # parallel: true (specql/model/parallel.py): the <op>_start and <op>_worker entry points; None otherwise.
    parallel: object = None

    def __getattr__(self, name: str):
        # Only called for names the operation itself lacks (and never for its own fields).
        if name.startswith("__") or name in ("statement", "policy"):
            raise AttributeError(name)
        for part in (self.statement, self.policy):
            if hasattr(part, name):
                return getattr(part, name)
        raise AttributeError(f"'Operation' object has no attribute {name!r}")

    @property
    def created_objects(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(tables, routines) as (schema, name) that the operation's migration creates: the
        routine, a parallel run's entry points, its hooks' placeholders, a CSV import's or a
        staged jsonb source's staging table. The fuzz oracle (tests/fuzz/apply.py) holds a
        migration to exactly these, so a new kind of object an operation creates is declared here."""
        tables, routines = [], [(self.schema, self.name)]
        if self.parallel is not None:
            routines += [(self.schema, self.parallel.start_name), (self.schema, self.parallel.worker_name)]
        if self.policy.hooks is not None:
            routines += self.policy.hooks.functions
        csv = getattr(self.statement, "csv", None)
        if csv is not None:
            tables.append((csv.schema, csv.staging_name))
        if self.stages_json:
            tables.append((self.schema, self.json_staging_name))
        return tables, routines

    # -- multi-step operations (SPEC §8)

    @property
    def body_template(self) -> str:
        """The file of templates/sql/ that writes the routine's body: its batches, or its steps."""
        return "steps/run" if self.steps else "routine/loop"

    def as_step(self, step) -> "Operation":
        """The operation as one of its steps sees it: the step's statement, table (its
        target_entity) and batch size, the run's policy and parameters (what
        routine/loop.sql.j2 renders a step's batches from)."""
        from dataclasses import replace

        return replace(self, statement=step.statement, target=step.statement.target,
                       policy=replace(self.policy, batch_size=step.batch_size),
                       steps=[], step=step, step_count=len(self.steps))

    @property
    def step_sets_total(self) -> bool:
        """Whether a step's driver sets total_records when it starts (an id array's or a data
        source's size, or a count up front): the step's count is then added to the run's."""
        return self.statement.driver in ("keys", "source") or self.counts_up_front

    @property
    def driver_template(self) -> str:
        """The file of templates/sql/drivers/ for this operation's batches: a condition delete
        over a key that is not an integer walks the heap in physical order (heap_walk, issue 15)
        in a plain function run; a procedure (its position resumes), a step, a parallel run,
        hooks or audit keep the statement's own driver. An update keeps the keyset walk: its
        new row versions are indexed in key order then, which measured faster than physical
        order on a uuid key (bench/README.md, issue 15)."""
        s = self.statement
        if (s.driver == "keyset" and s.operation_type == "delete" and not s.range_batches
                and not self.policy.is_procedure and not self.steps and self.step is None
                and self.parallel is None and not getattr(self.policy, "captures_rows", False)):
            return "heap_walk"
        return s.driver_template

    @property
    def chunk_driver(self) -> str:
        """The file of templates/sql/parallel/chunks/ for a parallel run's chunks: a condition
        walk over an integer key takes dense stretches of keys as key ranges inside each chunk
        (key_ranges), as the routine does; other keys list each batch's keys (keyset)."""
        return "key_ranges" if self.statement.range_batches else self.statement.driver

    @property
    def generic_plans(self) -> bool:
        if self.steps:
            return any(s.statement.generic_plans for s in self.steps)
        return self.statement.generic_plans

    @property
    def ident(self) -> str:
        return qname(self.schema, self.name)

    def param_ref(self, name: str) -> str:
        return f"{qi(self.name)}.{qi(name)}"

    @property
    def routine_args(self) -> list[tuple[Param, str]]:
        """The arguments specql adds after the parameters, with their defaults: staging_id (a
        jsonb data_source that can be staged), confirm (with
        requires_confirmation), bypass_hooks (with hooks), batch_size (every routine: overrides the file for this call and
        the specql routines it calls), resume (a procedure: the run to continue)."""
        args = [(Param("staging_id", "uuid"), "NULL")] if self.stages_json else []
        if self.policy.requires_confirmation:
            args.append((Param("confirm", "boolean"), "false"))
        if self.policy.hooks:
            args.append((Param("bypass_hooks", "boolean"), "false"))  # hooks: call the batch without them
        args.append((Param("batch_size", "integer"), "NULL"))
        if self.policy.resumable:
            args.append((Param("resume", "uuid"), "NULL"))
        return args

    @property
    def all_params(self) -> list[Param]:
        return self.params + [p for p, _ in self.routine_args]

    @property
    def signature_types(self) -> str:
        """Input argument types as `to_regprocedure` reads them."""
        types = [p.sql_type for p in self.all_params]
        if self.policy.is_procedure:
            types.append("specql.batch_operation_result")
        return ", ".join(types)

    @property
    def argument_names(self) -> list[str]:
        names = [p.name for p in self.all_params]
        return (names + ["result"]) if self.policy.is_procedure else names

    @property
    def counts_up_front(self) -> bool:
        """Whether the routine counts its target rows before changing anything."""
        p = self.policy
        return bool(p.max_records or p.requires_confirmation
                    or (p.progress_interval and self.statement.driver == "keyset"))

    @property
    def counts_batch_records(self) -> bool:
        """Whether a condition walk counts each batch's records: to add up total_records when
        it was not counted up front, and to see a key range past the last matching key."""
        return self.statement.driver == "keyset" and (self.statement.range_batches or not self.counts_up_front)

    @property
    def adds_up_total(self) -> bool:
        """Whether total_records is the sum of the batches' records (a walk not counted up front)."""
        return self.counts_batch_records and not self.counts_up_front

    @property
    def optional_args(self) -> bool:
        """Whether every argument has a default (a procedure, or a routine that asks for confirm)."""
        return self.policy.is_procedure or self.policy.requires_confirmation

    @property
    def params_json(self) -> str:
        """SQL for what a resume must be called with again, as the routine records it in the
        run row and compares it (SQ005): recorded_params over its own parameters."""
        return self.recorded_params(lambda name, sql_type: self.param_ref(name))

    def recorded_params(self, value_of) -> str:
        """SQL for what a resume must be called with again: scalar parameters as they are,
        arrays and jsonb by a 64-bit hash (a million ids are not copied into the run row; the
        hash costs a seventh of an md5 of the array's text, bench/README.md). `value_of(name,
        sql_type)`: the SQL of a parameter's value (the routine's reference to it, or a
        placeholder for `specql run --resume` to compare with), None to leave it out."""
        parts = []
        staging = [("staging_id", "uuid")] if self.stages_json else []  # a resume reads the same staged load
        for name, sql_type in [(p.name, p.sql_type) for p in self.params] + staging:
            ref = value_of(name, sql_type)
            if ref is None:
                continue
            if sql_type.endswith("[]"):
                value = f"jsonb_build_object('hash', hash_array_extended({ref}, 0))"
            elif sql_type == "jsonb":
                value = f"jsonb_build_object('hash', jsonb_hash_extended({ref}, 0))"
            else:
                value = ref
            parts.append(f"{literal(name)}, {value}")
        return f"jsonb_build_object({', '.join(parts)})"

    # -- a jsonb data_source staged by `specql run --json` (SPEC §11, specql/jsonimport.py)

    @property
    def stages_json(self) -> bool:
        """Whether the routine can read its jsonb data_source from a staging table instead of
        the argument (staging_id => ...): a single-statement insert or upsert with a jsonb
        data_source. Not a step (its source is the step's own) and not a parallel operation
        (its chunks copy the argument's elements; op_start takes no staged load)."""
        return (self.statement.driver == "source" and self.statement.source_param is not None
                and not self.steps and self.step is None and self.parallel is None)

    @property
    def json_staging_name(self) -> str:
        return f"{self.name}_staging"

    @property
    def json_staging_ident(self) -> str:
        return qname(self.schema, self.json_staging_name)
