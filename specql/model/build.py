"""Building the model: every document checked, every problem collected, the model returned
only when there are none.

This module only orchestrates: entities first (each on its own, then their defaults and
references), then each pattern as an operation — its statement, its policy, its parameters,
and the names PostgreSQL could resolve to something else.
"""

from __future__ import annotations

from ..diagnostics import Diagnostic, SpecError, did_you_mean
from ..loader import Document
from ..reserved import routine_locals
from ..sqlnames import MAX_IDENTIFIER_BYTES, qi
from ..validate import schema_check
from .context import Context
from .entity import Entity, Project, build_entity, resolve_field_details
from .names import check_identifier, display_name
from .operation import Operation
from .parallel import read_parallel
from .policy import read_policy, read_preconditions
from .statement import Statement, StatementReader
from .steps import finish_steps, read_steps

_CSV_KEYS = ("csv_delimiter", "csv_has_header", "field_mapping", "validation_rules", "skip_invalid_rows")


def build_operation(ctx: Context) -> Operation | None:
    """Check one batch_operations pattern and build its Operation (None after any problem)."""
    spec, at = ctx.spec, ctx.at
    n_problems = len(ctx.problems)
    check_identifier(ctx.doc, at("operation"), ctx.name, "operation name", ctx.problems)
    if "steps" in spec:
        return build_steps_operation(ctx, n_problems)
    op_type = _operation_type(ctx)
    if op_type is None:
        return None

    reader = StatementReader(ctx, op_type)
    reader.check_data_keys()
    ctx.scope.declare(spec.get("params") or {})
    # The order of these reads is the order of the routine's arguments (first use).
    reader.read_data_source()
    reader.read_where()
    reader.read_soft_delete()
    reader.read_assignments()
    reader.read_conflict_target()
    preconditions = read_preconditions(ctx)
    params = ctx.scope.params(bool(spec.get("requires_confirmation")))
    check_names_not_captured(ctx)
    policy = read_policy(ctx, preconditions)
    parallel = read_parallel(ctx, policy)
    if reader.driver == "source" and reader.source_name and parallel is None:
        check_json_staging(ctx, params)
    if len(ctx.problems) > n_problems:
        return None
    statement = reader.finish(params)
    if reader.source_name:
        ctx.scope.roles[reader.source_name] = ("source", None)
    return Operation(
        name=ctx.name, schema=ctx.entity.schema, description=spec.get("description"), entity=ctx.entity,
        target=ctx.target, params=params, statement=statement, policy=policy, source_path=ctx.doc.path,
        source_name=display_name(ctx.doc.source or ctx.doc.path),
        param_roles=ctx.scope.roles_of(params), compared_values=ctx.scope.compared_values(),
        functions=[(name, ctx.location(path, offset)) for name, path, offset in ctx.functions],
        parallel=parallel,
    )


def check_json_staging(ctx: Context, params) -> None:
    """A jsonb data_source can be staged (SPEC §11): the routine gains `staging_id` and a
    table `<operation>_staging`; neither name may be taken."""
    if any(p.name == "staging_id" for p in params):
        ctx.error(ctx.at("data_source"), "parameter 'staging_id' is the argument specql adds to read a staged "
                                         "data_source (specql run --json); rename the parameter")
    if len(f"{ctx.name}_staging".encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        ctx.error(ctx.at("operation"), f"operation name '{ctx.name}' is too long for its staging table "
                                       f"'{ctx.name}_staging' (at most {MAX_IDENTIFIER_BYTES} bytes)")


def _operation_type(ctx: Context) -> str | None:
    """The operation type, or None (with a problem) for what this version cannot build."""
    spec, at = ctx.spec, ctx.at
    if spec.get("data_source") == "csv_file":
        # CSV import (SPEC §11, specql/model/csvsource.py): an insert unless it says upsert.
        op_type = spec.get("operation_type", "insert")
        if op_type not in ("insert", "upsert"):
            ctx.error(at("operation_type"), f"data_source: csv_file imports rows: operation_type insert or "
                                            f"upsert, not '{op_type}'")
            return None
        return op_type
    for key in _CSV_KEYS:
        if key in spec:
            ctx.error(at(key), f"'{key}' belongs to CSV import; it needs data_source: csv_file", key=True)
    op_type = spec.get("operation_type")
    if op_type is None:
        ctx.error(ctx.path, f"operation '{ctx.name}' needs an operation_type "
                            f"(update, insert, delete or upsert)")
        return None
    if op_type in ("select", "custom_function"):
        ctx.error(at("operation_type"), f"operation_type '{op_type}' is a step's: write it under steps "
                                        f"(a select hands its keys to the steps after it)")
        return None
    return op_type


def build_steps_operation(ctx: Context, n_problems: int) -> Operation | None:
    """A multi-step operation (SPEC §8): its steps in run order, one routine running them."""
    spec = ctx.spec
    ctx.scope.declare(spec.get("params") or {})
    preconditions = read_preconditions(ctx)
    policy = read_policy(ctx, preconditions)
    read = read_steps(ctx, policy.batch_size, ctx.registry)
    if read is None:
        return None
    steps, _ = read
    params = ctx.scope.params(False)
    check_names_not_captured(ctx)
    if len(ctx.problems) > n_problems:
        return None
    finish_steps(ctx, steps, params)
    if len(ctx.problems) > n_problems:
        return None
    run = Statement(operation_type="steps", target=ctx.target, assignments=[], driver="steps", where_sql=None,
                    batch_where_sql=None, key_param=None, source_param=None)
    return Operation(
        name=ctx.name, schema=ctx.entity.schema, description=spec.get("description"), entity=ctx.entity,
        target=ctx.target, params=params, statement=run, policy=policy, source_path=ctx.doc.path,
        source_name=display_name(ctx.doc.source or ctx.doc.path),
        param_roles=ctx.scope.roles_of(params), compared_values=ctx.scope.compared_values(),
        functions=[(name, ctx.location(path, offset)) for name, path, offset in ctx.functions],
        steps=steps,
    )


def check_names_not_captured(ctx: Context) -> None:
    """Refuse names that PostgreSQL would resolve to something other than what specql means.

    Under `#variable_conflict use_column` a column named like a routine variable is read
    instead of the variable; and a parameter is referenced as `operation.param`, which a
    table (or alias) of the same name as the operation would capture: `item.status` in an
    operation `item` on table `item` reads the column and makes the condition always true.
    """
    reserved = routine_locals()
    for column in ctx.target.columns.values():
        if column.name in reserved:
            ctx.error(ctx.at("operation"), f"column '{column.name}' of {ctx.target.name} has the name of "
                                           f"a variable of the generated routine; rename the column")
    if ctx.name in reserved or ctx.name.lower() == "excluded":
        ctx.error(ctx.at("operation"), f"operation name '{ctx.name}' is a name the generated routine "
                                       f"uses itself; choose another")
    relations = {ctx.target.table: (ctx.at("operation"), None)}
    relations.update(ctx.relations)
    if ctx.name in relations:
        site, offset = relations[ctx.name]
        where = ("the table it operates on" if site == ctx.at("operation") and offset is None
                 else "a table or alias this operation's SQL names")
        ctx.error(ctx.at("operation"), f"operation name '{ctx.name}' is also {where}; its parameters "
                                       f"(written {qi(ctx.name)}.param in the routine) would read that "
                                       f"table's columns instead: rename the operation")


def build_project(docs: list[Document]) -> Project:
    """Check every document and build the model; raises SpecError listing all problems."""
    problems: list[Diagnostic] = []
    warnings: list[Diagnostic] = []
    valid: list[tuple[Document, Entity]] = []
    skipped_patterns: dict[int, set[int]] = {}
    for doc in docs:
        structural, bad_paths = schema_check(doc)
        problems.extend(structural)
        # Problems inside one pattern only keep that pattern from the semantic checks;
        # anywhere else they keep the whole file out (its shape cannot be trusted).
        in_patterns = {p[1] for p in bad_paths if len(p) >= 2 and p[0] == "patterns" and isinstance(p[1], int)}
        if any(not (len(p) >= 2 and p[0] == "patterns" and isinstance(p[1], int)) for p in bad_paths):
            continue
        skipped_patterns[id(doc)] = in_patterns
        entity = build_entity(doc, problems)
        if entity is not None:
            valid.append((doc, entity))

    registry: dict[str, Entity] = {}
    for doc, entity in valid:
        other = registry.get(entity.name)
        if other is not None:
            problems.append(doc.diag(("name",), f"entity '{entity.name}' is also defined in {other.source_path}"))
            continue
        registry[entity.name] = entity
    tables: dict[str, Entity] = {}
    for doc, entity in valid:
        if entity.key in tables and tables[entity.key] is not entity:
            problems.append(doc.diag(("name",), f"table {entity.key} is also defined in "
                                                f"{tables[entity.key].source_path}"))
        tables.setdefault(entity.key, entity)

    routines: dict[str, tuple[str, Document, tuple]] = {}
    for doc, entity in valid:
        resolve_field_details(doc, entity, registry, problems)
        for i, spec in enumerate(doc.data.get("patterns") or []):
            if i in skipped_patterns.get(id(doc), ()):
                continue
            path = ("patterns", i)
            target_name = spec.get("target_entity", entity.name)
            target = registry.get(target_name)
            if target is None:
                problems.append(doc.diag(path + ("target_entity",), f"unknown target_entity '{target_name}'"
                                                                    f"{did_you_mean(target_name, registry)}"))
                continue
            ctx = Context(doc, path, spec, entity, target, problems, warnings)
            ctx.registry = registry
            op = build_operation(ctx)
            if op is None:
                continue
            key = f"{op.schema}.{op.name}"
            if key in routines:
                _, first_doc, first_path = routines[key]
                mark = first_doc.mark(first_path + ("operation",))
                problems.append(doc.diag(path + ("operation",), f"operation '{op.name}' is also defined at "
                                                                f"{first_doc.path}:{mark.line}:{mark.col}"))
                continue
            routines[key] = (doc.path, doc, path)
            entity.operations.append(op)
            if target is not entity:
                entity.depends_on.add(target.key)

    if problems:
        raise SpecError(problems + warnings)
    return Project(entities=[e for _, e in valid], warnings=sorted(warnings))
