"""`specql generate tests`: one pytest module per operation, from templates/tests.

The modules go through the same writer as the migrations (writer.py): a module whose
operation was renamed or removed is an orphan, removed on write and reported by --check.
"""

from __future__ import annotations

import hashlib
import pprint
import re
from collections import Counter
from pathlib import Path

from .generate import GenerateResult, as_project
from .model import Operation, Project
from .plan import PlannedFile
from .render import environment
from .sqlnames import qi
from .writer import sync

TESTS = "tests"
TEST_PATTERNS = ("test_*.py",)  # the only names testgen writes into tests/


def facts(op: Operation) -> dict:
    """Everything a generated test needs to know about its operation, as plain data."""
    t = op.target
    assignments = []
    for a in op.assignments:
        entry = {"column": a.column.name, "kind": a.kind}
        entry.update({"param": a.ref} if a.kind == "param" else {"field": a.ref} if a.kind == "record" else {"sql": a.sql})
        assignments.append(entry)
    return {
        "name": op.name,
        "name_ident": qi(op.name),
        "routine": op.ident,
        "schema_ident": qi(op.schema),
        "is_procedure": op.is_procedure,
        "operation_type": op.operation_type,
        "driver": op.driver,
        "table": t.ident,
        "pk": {"name": t.primary_key.name, "ident": t.primary_key.ident, "type": t.primary_key.type},
        "columns": [
            {"name": c.name, "ident": c.ident, "type": c.type, "sql_type": c.sql_type, "nullable": c.nullable,
             "primary_key": c.primary_key, "unique": c.unique, "references": bool(c.references_sql)}
            for c in t.columns.values()
        ],
        "params": [
            {"name": p.name, "ident": p.ident, "sql_type": p.sql_type,
             "role": op.param_roles[p.name][0], "column": op.param_roles[p.name][1]}
            for p in op.params
        ],
        "key_param": op.key_param.name if op.key_param else None,
        "source_param": op.source_param.name if op.source_param else None,
        "count_sql": op.count_sql,
        "assignments": assignments,
        "conflict_columns": [c.name for c in op.conflict_columns],
        "compared_values": op.compared_values,
        "batch_size": op.batch_size,
        "transaction": op.transaction,
        "error_handling": op.error_handling,
        "max_errors": op.max_errors,
        "max_records": op.max_records,
        "requires_confirmation": op.requires_confirmation,
        "has_preconditions": bool(op.preconditions),
        "timeout": op.timeout,
        "logs_batches": op.logs_batches,
        "log_table": op.log_table,
        "progress_interval": op.progress_interval,
        "notify": op.notify,
        "collect_metrics": op.collect_metrics,
        "metrics_table": op.metrics_table,
    }


def module_name(op: Operation) -> str:
    slug = re.sub(r"[^0-9a-zA-Z_]+", "_", f"{op.schema}_{op.name}").strip("_").lower()
    return f"test_{slug}.py"


def render_tests(op: Operation) -> str:
    template = environment().get_template("tests/test_operation.py.j2")
    text = pprint.pformat(facts(op), indent=4, width=100, sort_dicts=True)
    return template.render(op=op, facts=text)


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
        files.append(PlannedFile(name, render_tests(op)))
    return files


def generate_tests(project: Project | list[str], out_dir: str | Path, *, check: bool = False) -> GenerateResult:
    """Write out_dir/tests/test_*.py (removing orphans). With check, write nothing and report."""
    project = as_project(project)
    files = plan_tests(project)
    folder = sync(Path(out_dir) / TESTS, {f.name: f.content for f in files}, TEST_PATTERNS, check=check)
    return GenerateResult.of(files, project.warnings, folder)
