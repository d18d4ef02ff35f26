"""`specql generate tests`: one pytest module per operation, from templates/tests.

The modules go through the same writer as the migrations (writer.py): a module whose
operation was renamed or removed is an orphan, removed on write and reported by --check.
"""

from __future__ import annotations

import hashlib
import pprint
import re
from collections import Counter
from importlib import resources
from dataclasses import fields, is_dataclass
from pathlib import Path

from .generate import GenerateResult, as_project
from .model import Column, Entity, Operation, Policy, Project, Statement
from .plan import PlannedFile
from .render import environment
from .sqlnames import qi
from .writer import sync

TESTS = "tests"
TEST_PATTERNS = ("test_*.py",)  # the only names testgen writes into tests/


_SKIP = object()  # a value that is not plain data: another concept, converted by its own facts


def _plain(value):
    """value as plain data (what a generated module holds as a literal), or _SKIP. A model
    object (a dataclass) is never plain: its owner converts it with its own facts."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _SKIP if any(i is _SKIP for i in items) else items
    if isinstance(value, dict):
        items = {k: _plain(v) for k, v in value.items()}
        return _SKIP if any(not isinstance(k, str) or v is _SKIP for k, v in items.items()) else items
    return _SKIP


def plain_fields(obj, derived: tuple[str, ...] = (), skip: tuple[str, ...] = (), **converted) -> dict:
    """The facts of one model object: every dataclass field holding plain data (but those in
    `skip`), the `derived` properties, and `converted` values (other concepts, as their own
    facts). A plain field added to the model reaches the generated tests without an edit here."""
    out = {}
    for f in fields(obj):
        if f.name not in skip and f.name not in converted and (value := _plain(getattr(obj, f.name))) is not _SKIP:
            out[f.name] = value
    out.update({name: _plain(getattr(obj, name)) for name in derived})
    out.update(converted)
    return out


def column_facts(column: Column) -> dict:
    return {**plain_fields(column), "ident": column.ident}


def table_facts(entity: Entity, entities: dict[str, tuple[Entity, Column]], seen: frozenset = frozenset()) -> dict:
    """The table an operation works on, and the tables its references point at (to seed them
    first, and create them when specql does not manage them)."""
    seen = seen | {entity.ident}
    columns = []
    for column in entity.columns.values():
        parent = entities.get(column.references_sql or "")
        references = None
        if parent and parent[0].ident not in seen:
            references = {"column": parent[1].name, **table_facts(parent[0], entities, seen)}
        columns.append({**column_facts(column), "references": references})
    return {"table": entity.ident, "table_schema_ident": qi(entity.schema), "manage_table": entity.manage_table,
            "pk": entity.primary_key.name, "columns": columns, "soft_delete": entity.soft_delete,
            "deletion_stats": entity.deletion_stats_ident if entity.soft_delete else None}


def statement_facts(s: Statement) -> dict:
    facts = plain_fields(
        s, derived=("range_batches",), skip=("target",),
        assignments=[{**plain_fields(a, skip=("column",)), "column": a.column.name} for a in s.assignments],
        conflict_columns=[c.name for c in s.conflict_columns],
        key_param=s.key_param.name if s.key_param else None,
        source_param=s.source_param.name if s.source_param else None,
        conflict_updates=[a.column.name for a in s.conflict_updates],
        partial_updates=[a.column.name for a in s.partial_updates])
    if s.csv is not None:  # data_source: csv_file: the file's layout (specql/harness_csv.py)
        facts["csv"] = s.csv.to_json()
    return facts


# Plain fields that are not facts, with why: the only hand-kept lists here.
# message_parts: the notification's text, which the tests read from the notification itself.
POLICY_SKIP = ("message_parts",)
# source_path and functions name where the entity file is: they would tie the module to the
# folder it was generated from (source_name is the stable name); param_roles is in params.
OPERATION_SKIP = ("source_path", "functions", "param_roles", "description")


def policy_facts(p: Policy) -> dict:
    return plain_fields(p, derived=("is_procedure", "logs_batches", "logs_run", "resumable", "lock_timeout_ms", "retry_backoff_ms"), skip=POLICY_SKIP,
                        preconditions=[plain_fields(c) for c in p.preconditions],
                        # hooks: when -> function (harness_hooks.py); the placeholders' (schema, name)
                        # pairs are the migration's, not a hook
                        hooks=plain_fields(p.hooks, skip=("functions",)) if p.hooks else None)


def step_facts(step, op_target: Entity) -> dict:
    """One step of a multi-step operation (SPEC §8): its place, statement, output and call, and
    the table it works on (the columns a replay of its statement names; the table's own facts
    when it is not the operation's, to seed it)."""
    st, out, call, target = step.statement, step.output, step.call, step.statement.target
    other = table_facts(target, {}) if target.ident != op_target.ident else None
    return plain_fields(
        step, derived=("captures_output",), skip=("description", "index", "has_output_key"),
        statement={**statement_facts(st), "key_output": st.key_output.name if st.key_output else None,
                   "source_output": st.source_output.name if st.source_output else None},
        output=plain_fields(out, derived=("stores_keys", "stores_records", "used"),
                            used_as=sorted(out.used_as)) if out else None,
        call=plain_fields(call, derived=("ident", "signature")) if call else None,
        select_fields=[c.name for c in step.select_fields],
        target={"table": target.ident, "pk": target.primary_key.name, "pk_ident": target.primary_key.ident,
                "columns": {c.name: c.ident for c in target.columns.values()}, "other_table": other})


def operation_facts(op: Operation) -> dict:
    return plain_fields(
        op, skip=OPERATION_SKIP,
        # a parallel operation's entry points and chunking (harness_parallel.py); None otherwise
        parallel=plain_fields(op.parallel, derived=("start_ident", "worker_ident")) if op.parallel else None,
        steps=[step_facts(s, op.target) for s in op.steps],
        compared_values=op.compared_values,
        params=[{**plain_fields(p), "ident": p.ident, "role": op.param_roles[p.name][0],
                 "column": op.param_roles[p.name][1]} for p in op.params],
        name_ident=qi(op.name), routine=op.ident, schema_ident=qi(op.schema),
        # a jsonb data_source that can be staged (specql run --json): its staging table; None otherwise
        json_staging=op.json_staging_ident if op.stages_json else None)


def facts(op: Operation, entities: list[Entity] | None = None) -> dict:
    """Everything a generated test needs to know about its operation, as plain data: the facts
    of each concept of the model (operation, statement, policy, table) in one namespace, as
    the operation itself forwards to its statement and policy."""
    by_reference = {f"{e.ident} ({c.ident})": (e, c) for e in (entities or [op.target]) for c in e.columns.values()}
    parts = [operation_facts(op), statement_facts(op.statement), policy_facts(op.policy),
             table_facts(op.target, by_reference)]
    merged: dict = {}
    for part in parts:
        clash = set(merged) & set(part)
        assert not clash, f"facts named twice: {sorted(clash)}"
        merged.update(part)
    return merged


def unmanaged_tables(project: Project) -> list[dict]:
    """Table facts of every entity specql does not manage (manage_table: false) that an
    operation works on: what `harness_tables.create_table` needs to stand in for the user's
    table in a throwaway database (for a test run's lint, as the generated tests do)."""
    by_reference = {f"{e.ident} ({c.ident})": (e, c) for e in project.entities for c in e.columns.values()}
    targets = {op.target.ident: op.target for e in project.entities for op in e.operations}
    return [table_facts(t, by_reference) for t in targets.values() if not t.manage_table]


def module_name(op: Operation) -> str:
    slug = re.sub(r"[^0-9a-zA-Z_]+", "_", f"{op.schema}_{op.name}").strip("_").lower()
    return f"test_{slug}.py"


def template_name(op: Operation) -> str:
    """One test template per driver (templates/tests/<driver>.py.j2), each extending base.py.j2:
    a new driver is a new file. A driver variant with batches of its own shape (the heap walk
    of a uuid or text key, issue 15) has a file named after its SQL template that extends its
    driver's; a variant without one (key ranges) is tested by its driver's file."""
    variant = getattr(op, "driver_template", None)
    if variant and (resources.files("specql.templates") / "tests" / f"{variant}.py.j2").is_file():
        return f"tests/{variant}.py.j2"
    return f"tests/{op.statement.driver}.py.j2"


def render_tests(op: Operation, entities: list[Entity] | None = None) -> str:
    template = environment().get_template(template_name(op))
    text = pprint.pformat(facts(op, entities), indent=4, width=100, sort_dicts=True)
    confirm = ", \"confirm\": True" if op.policy.requires_confirmation else ""
    return template.render(op=op, facts=text, confirm=confirm)


def plan_tests(project: Project) -> list[PlannedFile]:
    """One module per operation, in entity then declaration order.

    Slugs can collide (schema a_b + operation c, schema a + operation b_c; names differing
    only in case): every colliding module then gets a hash of its schema.operation too, so
    no module silently overwrites another and each name depends on its operation alone.
    """
    ops = [op for e in project.entities for op in e.operations]
    names = Counter(module_name(op) for op in ops)
    files = []
    for op in ops:
        name = module_name(op)
        if names[name] > 1:
            digest = hashlib.sha256(f"{op.schema}.{op.name}".encode("utf-8")).hexdigest()[:8]
            name = f"{name[:-3]}_{digest}.py"
        files.append(PlannedFile(name, render_tests(op, project.entities)))
    return files


def generate_tests(project: Project | list[str], out_dir: str | Path, *, check: bool = False) -> GenerateResult:
    """Write out_dir/tests/test_*.py (removing orphans). With check, write nothing and report."""
    project = as_project(project)
    files = plan_tests(project)
    folder = sync(Path(out_dir) / TESTS, {f.name: f.content for f in files}, TEST_PATTERNS, check=check)
    return GenerateResult.of(files, project.warnings, folder)
